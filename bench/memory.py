"""Peak memory of one update with the SD1.5 architecture (the ``sd15`` preset: random weights, SD1.5's exact shapes),
measured on the CPU at a small resolution, at two batch sizes, with and without gradient checkpointing, and
extrapolated to 512 px.

Two updates:

- ``dpo``: a Diffusion-DPO update (TrajectoryDPO, offline) on ``batch`` random image pairs: VAE encode, policy
  forward with grad on 2 x batch latents, reference forward without, backward.
- ``dense``: a DenseDiscountedDPO trajectory update on ``batch`` comparisons drawn from a buffer of synthetic chains
  (K = 3 steps each, guidance: 2 UNet rows per trajectory), whole-batch (``micro_batch_size: null``) or in
  micro-batches of one comparison.

One model is built; each configuration's peak is the process's peak resident memory (VmHWM, reset before each
update by ``bench/perf.py``'s ``Memory``) minus the resident memory before the update, so the weights are not counted
(they are printed first). Extrapolation: a UNet's activations grow about linearly with the latent pixels when
attention is memory-efficient (PyTorch's SDPA kernels on a GPU), so the per-sample slope times
``(512 / resolution)^2`` estimates a sample at 512 px; the fixed part (weights, optimizer state of the LoRA) does
not grow. An estimate to confirm on a GPU (``bench/perf.py`` reports CUDA peaks).

    python bench/memory.py --resolution 128 --batch-sizes 1 2      (--model small: a tenth of the size, for a try)
"""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
import torch
from diffusers import DDIMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from perf import Memory  # noqa: E402  (bench/perf.py, beside this file)

from lit_pref.backbone import DiffusionBackbone  # noqa: E402
from lit_pref.losses import DiffusionDPOLoss  # noqa: E402
from lit_pref.modules import DenseDiscountedDPO, TrajectoryDPO, TrajectorySettings  # noqa: E402
from lit_pref.modules import collection  # noqa: E402
from lit_pref.modules.replay import TrajectoryGroup  # noqa: E402


class Rewardless:
    """Never called: the buffer is filled with synthetic chains."""

    def score(self, images, prompts):
        raise AssertionError("not used")


def update_peak(backbone: DiffusionBackbone, method: str, batch: int, resolution: int, checkpointing: bool,
                micro: bool) -> int:
    """Peak memory (bytes above the memory before it) of one update."""
    if checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    else:
        backbone.unet.disable_gradient_checkpointing()
    torch.manual_seed(0)
    memory = Memory(torch.device("cpu"))
    if method == "dpo":
        module = TrajectoryDPO(backbone, loss=DiffusionDPOLoss())
        pairs = {"images_0": torch.rand(batch, 3, resolution, resolution) * 2 - 1,
                 "images_1": torch.rand(batch, 3, resolution, resolution) * 2 - 1,
                 "label_0": torch.ones(batch), "captions": ["a photo of a cat"] * batch}
        memory.start()
        module.training_step(pairs, 0).backward()
    else:
        steps = 50
        settings = TrajectorySettings(pairs_per_step=batch, num_sampled_steps=3, kept_per_prompt=5,
                                      micro_batch_size=1 if micro else None)
        module = DenseDiscountedDPO(backbone, scorer=Rewardless(), trajectory=settings, num_inference_steps=steps)
        grid = DDIMScheduler.from_config(backbone.scheduler_config)
        grid.set_timesteps(steps)
        latent = resolution // backbone.vae_scale_factor
        for g in range(4):
            module.buffer.add(TrajectoryGroup(f"prompt {g}", torch.randn(5, steps + 1, 4, latent, latent),
                                              torch.zeros(5, steps), torch.arange(5.0), grid.timesteps, 0))
        memory.start()
        loss, _ = collection.update(module)
        loss.backward()
    peak = memory.peak()
    for param in backbone.lora_parameters():
        param.grad = None
    return peak


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--model", default="sd15", help="the preset (sd15: the SD1.5 architecture)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs=2, default=[1, 2])
    parser.add_argument("--methods", nargs="+", default=["dpo", "dense"])
    args = parser.parse_args()
    backbone = DiffusionBackbone(model=args.model, lora_rank=4)
    weights = sum(p.numel() * p.element_size() for p in backbone.parameters())
    print(f"{args.model}: weights {weights / 2**30:.2f} GiB (float32, as built here)", flush=True)
    b0, b1 = args.batch_sizes
    scale = (512 / args.resolution) ** 2
    print(f"| update | checkpointing | micro-batch of 1 | peak at b={b0} | peak at b={b1} | per sample | "
          f"per sample extrapolated to 512 px |\n|---|---|---|---:|---:|---:|---:|", flush=True)
    for method in args.methods:
        for checkpointing in (False, True):
            for micro in ((False, True) if method == "dense" else (False,)):
                peaks = [update_peak(backbone, method, b, args.resolution, checkpointing, micro) for b in (b0, b1)]
                slope = (peaks[1] - peaks[0]) / (b1 - b0)
                print(f"| {method} | {checkpointing} | {micro} | {peaks[0] / 2**30:.3f} GiB | {peaks[1] / 2**30:.3f} GiB "
                      f"| {slope / 2**30:.3f} GiB | {slope * scale / 2**30:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()
