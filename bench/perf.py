"""TrajectoryDPO step time and peak memory against a naive Diffusion-DPO baseline, measured in one process.

    python bench/perf.py --device cuda --precision bf16-mixed --preset sd15 --resolution 512
    python bench/perf.py --device cpu --preset small --resolution 128 --steps 5

Both variants train the same LoRA adapters with the same Diffusion-DPO loss on the same pairs of random images.

* ``lit_pref``: ``TrajectoryDPO`` as it trains -- latents and text embeddings from the encoding cache (built once
  before timing, its build time printed), winner and loser in one UNet forward, the reference as the same UNet
  with adapters off under inference mode, SDPA attention; with ``--precision bf16-mixed`` the frozen base is
  stored in bf16 and the step runs under bf16 autocast (the VAE would stay float32 but is not needed).
* ``naive``: in the style of the Diffusion-DPO research code -- a separate frozen copy of the UNet as the
  reference, VAE encoding and text encoding at every step, winner and loser in separate forwards (policy and
  reference), float32 weights and no autocast (``--baseline-precision same`` gives it the autocast of
  ``--precision``, as the research code's mixed precision did).

Printed: per variant the median step time (forward, backward, optimizer step; the two variants' timed steps
alternate, so a machine whose load drifts slows both alike) with its interquartile range, steps/s, peak memory
(build, warm-up and one step), FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``, one
step), and the fraction of the compute bound: achieved FLOP/s over the throughput of a large matmul at the
step's compute dtype, timed between the steps; the ratios lit_pref / naive; then sampling throughput with per-step
log-probs (``bench/sampling.py``) on the lit_pref backbone.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the variant's life (weights, activations,
optimizer state) above what was allocated before the variant was built. On CPU the peak resident set size of
the process (VmHWM, reset through ``/proc/self/clear_refs`` before the variant is built) minus the resident size
before it was built: weights, activations and allocator slack. The lit_pref variant is built first; memory its
step freed and the allocator kept is reused by the naive one, which makes the naive figure smaller, not larger. Presets (``lit_pref/backbone/tiny.py``) are built from config with
random weights: nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # presets are built from config; never reach for a hub

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, when run as a script
from bench.sampling import sampling_rates  # noqa: E402
from lit_pref.datamodules import PreferencePairDataset, collate_pairs  # noqa: E402
from lit_pref.datamodules.encoding_cache import open_or_build  # noqa: E402
from lit_pref.backbone import DiffusionBackbone  # noqa: E402
from lit_pref.losses import DiffusionDPOLoss  # noqa: E402
from lit_pref.modules import TrajectoryDPO  # noqa: E402

BETA = 5000.0  # Diffusion-DPO's beta; the value does not change the cost


# --------------------------------------------------------------------------- memory
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class Memory:
    """Peak memory of one variant (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so the baseline is honest
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the peak resident set size (VmHWM) to the current one
        self.base = _rss_kib("VmRSS") * 1024

    def peak(self) -> int:
        """Bytes above the baseline at the highest point since :meth:`start`."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return _rss_kib("VmHWM") * 1024 - self.base


# --------------------------------------------------------------------------- data
def random_pairs(folder: Path, pairs: int, resolution: int) -> PreferencePairDataset:
    """``pairs`` pairs of random-noise PNGs (JSONL layout), centre-cropped at ``resolution``."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(pairs):
        for which in (0, 1):
            pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}_{which}.png")
        lines.append(f'{{"caption": "a photo of thing number {i}", "image_0": "{i}_0.png", '
                     f'"image_1": "{i}_1.png", "label_0": 1}}\n')
    (folder / "pairs.jsonl").write_text("".join(lines))
    return PreferencePairDataset(folder / "pairs.jsonl", resolution=resolution)


# --------------------------------------------------------------------------- the two variants
def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


class LitPrefStep:
    """TrajectoryDPO's training step on cached batches."""

    def __init__(self, args: Namespace, device: torch.device, dataset: PreferencePairDataset,
                 cache_dir: Path) -> None:
        dtype = "bfloat16" if args.precision == "bf16-mixed" else "float32"
        backbone = DiffusionBackbone(model=args.preset, dtype=dtype, gradient_checkpointing=args.gradient_checkpointing,
                                     compile_unet=args.compile)
        self.model = TrajectoryDPO(backbone, loss=DiffusionDPOLoss(beta=BETA)).to(device).train()
        start = time.perf_counter()
        dataset.use_encodings(open_or_build(cache_dir, dataset, backbone, batch_size=args.pairs))
        self.cache_build_s = time.perf_counter() - start
        self.batch = collate_pairs([dataset[i] for i in range(len(dataset))])
        self.optimizer = torch.optim.AdamW(self.model.trainable_parameters(), lr=1e-5)
        self.autocast = lambda: autocast(device, args.precision)

    def __call__(self) -> None:
        with self.autocast():
            pairs, _ = self.model.winners_and_losers(self.batch)
            loss, _ = self.model.loss(*self.model.denoising_errors(pairs))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class NaiveStep:
    """Diffusion-DPO as the research code does it: a reference UNet copy, encoders every step, separate forwards."""

    def __init__(self, args: Namespace, device: torch.device, dataset: PreferencePairDataset) -> None:
        backbone = DiffusionBackbone(model=args.preset, gradient_checkpointing=args.gradient_checkpointing)
        self.vae, self.text_encoder, self.tokenizer = backbone.vae.to(device), backbone.text_encoder.to(device), backbone.tokenizer
        self.unet = backbone.unet.to(device).train()  # the policy: base + LoRA adapters
        self.ref_unet = backbone.base_unet().to(device).requires_grad_(False).eval()  # a separate frozen copy
        self.scheduler = backbone.noise_scheduler
        self.scaling_factor = self.vae.config.scaling_factor
        batch = collate_pairs([dataset.uncached()[i] for i in range(len(dataset))])
        self.images_w, self.images_l = batch["images_0"].to(device), batch["images_1"].to(device)
        self.captions = batch["captions"]
        self.loss = DiffusionDPOLoss(beta=BETA)
        self.optimizer = torch.optim.AdamW([p for p in self.unet.parameters() if p.requires_grad], lr=1e-5)
        precision = args.precision if args.baseline_precision == "same" else "32"
        self.autocast = lambda: autocast(device, precision)
        self.device = device

    def __call__(self) -> None:
        with self.autocast():
            with torch.no_grad():
                latents_w = self.vae.encode(self.images_w).latent_dist.sample() * self.scaling_factor
                latents_l = self.vae.encode(self.images_l).latent_dist.sample() * self.scaling_factor
                tokens = self.tokenizer(self.captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                                        truncation=True, return_tensors="pt").input_ids.to(self.device)
                text = self.text_encoder(tokens)[0]
            noise = torch.randn_like(latents_w)
            t = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents_w.shape[0],), device=self.device)
            noisy_w = self.scheduler.add_noise(latents_w, noise, t)
            noisy_l = self.scheduler.add_noise(latents_l, noise, t)
            pred_w = self.unet(noisy_w, t, text).sample
            pred_l = self.unet(noisy_l, t, text).sample
            with torch.no_grad():
                ref_w = self.ref_unet(noisy_w, t, text).sample
                ref_l = self.ref_unet(noisy_l, t, text).sample

            def mse(pred: torch.Tensor) -> torch.Tensor:
                return (pred.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))

            loss, _ = self.loss(mse(pred_w), mse(pred_l), mse(ref_w), mse(ref_l))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- measuring
@dataclass
class Variant:
    name: str
    step: Callable[[], None]
    peak_bytes: int
    flops: int
    times: list[float]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(name: str, build: Callable[[], Callable[[], None]], device: torch.device, warmup: int) -> Variant:
    """Build a variant and run its warm-up steps and one FLOP-counted step; its peak memory covers all of them."""
    memory = Memory(device)
    memory.start()
    torch.manual_seed(0)
    step = build()
    for _ in range(warmup):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    synchronize(device)
    return Variant(name, step, memory.peak(), counter.get_total_flops(), [])


def time_interleaved(variants: list[Variant], device: torch.device, steps: int) -> None:
    """Alternate the variants' timed steps (reversing their order every other round), so that a machine whose load
    drifts (shared CPUs, GPU clocks) slows them alike."""
    for round_ in range(steps):
        for variant in variants if round_ % 2 == 0 else variants[::-1]:
            synchronize(device)
            start = time.perf_counter()
            variant.step()
            synchronize(device)
            variant.times.append(time.perf_counter() - start)


def matmul(device: torch.device, dtype: torch.dtype, size: int) -> Variant:
    """``size`` x ``size`` matmuls (10 in a row on a GPU, where one takes about a millisecond), timed alongside the
    steps: their FLOP/s is the compute bound."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    repeats = 10 if device.type == "cuda" else 1

    def run() -> None:
        for _ in range(repeats):
            torch.mm(a, b)

    run()  # warm-up
    return Variant("matmul", run, 0, repeats * 2 * size**3, [])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default="32",
                        help="lit_pref's precision (bf16-mixed: bf16 frozen base and bf16 autocast)")
    parser.add_argument("--baseline-precision", choices=["32", "same"], default="32",
                        help="naive baseline: float32 (default) or the same autocast as --precision")
    parser.add_argument("--preset", choices=["tiny", "small", "sd15"], default="tiny", help="backbone preset")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: the preset's)")
    parser.add_argument("--pairs", type=int, default=2, help="preference pairs per step")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="in both variants")
    parser.add_argument("--compile", action="store_true", help="torch.compile lit_pref's UNet")
    parser.add_argument("--matmul-size", type=int, default=None, help="side of the peak-throughput matmul "
                        "(default 8192 on CUDA, 2048 on CPU)")
    parser.add_argument("--sample-batch", type=int, default=2, help="chains per sampling call")
    parser.add_argument("--sample-steps", type=int, default=10, help="DDIM steps of the sampling measurement")
    parser.add_argument("--sample-repeats", type=int, default=3, help="timed sampling calls per mode")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    compute_dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float32
    with torch.device("meta"):
        shape = DiffusionBackbone(model=args.preset)
    resolution = args.resolution or shape.default_resolution
    unet_params = sum(p.numel() for n, p in shape.unet.named_parameters() if "lora_" not in n)
    del shape

    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"preset {args.preset} (UNet {unet_params / 1e6:.1f}M parameters), {args.pairs} pairs at {resolution} px, "
          f"{device} ({threads}), lit_pref precision {args.precision}, naive precision "
          f"{args.precision if args.baseline_precision == 'same' else '32'}, "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, compile {'on' if args.compile else 'off'}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dataset = random_pairs(folder, args.pairs, resolution)
        ours = prepare("lit_pref", lambda: LitPrefStep(args, device, dataset, folder / "cache"), device, args.warmup)
        naive = prepare("naive", lambda: NaiveStep(args, device, dataset), device, args.warmup)
        bound = matmul(device, compute_dtype, matmul_size)
        time_interleaved([ours, naive, bound], device, args.steps)

    peak_flops = bound.flops / statistics.median(bound.times)
    print(f"matmul {matmul_size}x{matmul_size} {str(compute_dtype).removeprefix('torch.')}: "
          f"{peak_flops / 1e12:.3f} TFLOP/s (median of {len(bound.times)}, timed between the steps: the compute bound)")
    medians = {}
    for variant in (ours, naive):
        times = variant.times
        q1, median, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        medians[variant.name] = median
        achieved = variant.flops / median
        print(f"{variant.name:>9}: step {median:.3f} s (IQR {q1:.3f}-{q3:.3f}, {len(times)} steps), "
              f"{1 / median:.3f} steps/s, peak memory {gib(variant.peak_bytes)}, "
              f"{variant.flops / 1e12:.3f} TFLOP/step, {achieved / 1e12:.3f} TFLOP/s = "
              f"{achieved / peak_flops:.1%} of the matmul bound")
    print(f"lit_pref / naive: {medians['naive'] / medians['lit_pref']:.2f}x steps/s, "
          f"{ours.peak_bytes / naive.peak_bytes:.2f}x peak memory, {ours.flops / naive.flops:.2f}x FLOPs per step")
    print(f"encoding cache build: {args.pairs} pairs in {ours.step.cache_build_s:.2f} s (once, before timing)")
    naive.step = None  # free the baseline before sampling
    gc.collect()
    backbone = ours.step.model.backbone.eval()
    with torch.no_grad(), autocast(device, args.precision):
        with_logprob, plain = sampling_rates(backbone, args.sample_batch, args.sample_steps, 7.5,
                                             args.sample_repeats, resolution)
    print(f"sampling ({args.sample_batch} chains, {args.sample_steps} DDIM steps, guidance 7.5, eta 1): "
          f"{with_logprob:.3f} trajectories/s with log-probs, {plain:.3f} images/s plain "
          f"(ratio {with_logprob / plain:.2f})")


if __name__ == "__main__":
    main()
