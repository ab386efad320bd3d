"""GPU throughput of the TrajectoryDPO step, one change at a time, on the SD1.5 architecture at 512 px.

    python bench/gpu.py                      # on a GPU: sd15 at 512 px, about 5 minutes (8 at most: --budget-s)
    python bench/gpu.py --smoke              # anywhere: the tiny preset at 32 px on the CPU, seconds

Each row adds one change to the row above (cumulative), measured on the same random-weight ``sd15`` preset
(``lit_pref/backbone/tiny.py``: SD1.5's exact shapes; nothing is downloaded), LoRA rank 8 on the attention
projections, Diffusion-DPO loss:

1. ``fp32, encoders every step``: float32 weights, no autocast, VAE and text encoder run at every step;
2. ``bf16 (VAE fp32)``: frozen UNet and text encoder stored in bf16, the step under bf16 autocast, the VAE in fp32
   (``trainer.precision: bf16-mixed``, ``backbone.dtype: bfloat16``);
3. ``cached latents, text``: the step reads VAE posteriors and text embeddings (``EncodingCache``) instead of
   encoding images and captions;
4. ``channels-last``: the UNet's convolution weights in channels-last memory format;
5. ``fused AdamW``: ``torch.optim.AdamW(fused=True)``;
6. ``micro-batch N``: more pairs per step (``--micro-batches``), for throughput;
7. ``torch.compile``: the UNet compiled (policy and reference: two graphs), with the largest micro-batch.

Attention is PyTorch's SDPA throughout (diffusers' ``AttnProcessor2_0``, flash attention in bf16 on a GPU). Per row:
median step time (forward, backward, optimizer step) over ``--steps`` after ``--warmup``, pairs/s, achieved TFLOP/s
(``FlopCounterMode``, one step) as a fraction of the measured bf16 matmul bound (``8192 x 8192`` matmuls, or fp32
for the fp32 row's own bound), peak memory above the weights per pair, and the projected hours of the paper's SD1.5
run (Diffusion-DPO: 2000 steps x 2048 pairs) at that rate on this GPU. Data loading is off the critical path: the
batch is on the device before timing (with the cache, a batch is a few hundred KiB a pair read from memory maps).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.perf import Memory, matmul, synchronize  # noqa: E402
from lit_pref.backbone import DiffusionBackbone  # noqa: E402
from lit_pref.losses import DiffusionDPOLoss  # noqa: E402
from lit_pref.modules import TrajectoryDPO  # noqa: E402

PAPER_PAIRS = 2000 * 2048  # Diffusion-DPO (Wallace et al. 2023), SD1.5: 2000 steps at an effective batch of 2048 pairs
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class Setup:
    """A model, its optimizer and a batch on the device, as one row of the ladder configures them."""

    def __init__(self, model: TrajectoryDPO, device: torch.device, pairs: int, resolution: int, bf16: bool,
                 cached: bool, fused: bool) -> None:
        self.model, self.bf16 = model, bf16
        backbone = model.backbone
        generator = torch.Generator().manual_seed(0)
        images = [(torch.rand(pairs, 3, resolution, resolution, generator=generator) * 2 - 1).to(device)
                  for _ in range(2)]
        captions = [f"a photo of thing number {i}" for i in range(pairs)]
        self.batch = {"label_0": torch.ones(pairs, device=device), "captions": captions}
        if cached:
            with torch.no_grad():
                self.batch.update(latent_dists_0=backbone.encode_latent_dist(images[0]),
                                  latent_dists_1=backbone.encode_latent_dist(images[1]),
                                  text=backbone.encode_text(captions))
        else:
            self.batch.update(images_0=images[0], images_1=images[1])
        self.optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5, fused=fused or None)
        self.device = device

    def __call__(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            pairs, _ = self.model.winners_and_losers(self.batch)
            loss, _ = self.model.loss(*self.model.denoising_errors(pairs))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def build(preset: str, dtype: str, device: torch.device) -> TrajectoryDPO:
    with device:  # random weights drawn on the device: seconds, not a minute of CPU for SD1.5's 1.07B
        backbone = DiffusionBackbone(model=preset, dtype=dtype, lora_rank=8, lora_target_modules=LORA_TARGETS)
    return TrajectoryDPO(backbone, loss=DiffusionDPOLoss(beta=5000.0)).to(device).train()


def measure(step: Setup, device: torch.device, warmup: int, steps: int, flops: int | None = None) -> dict:
    """Median step time and its quartiles, FLOPs of one step (counted unless given), and peak memory above what
    was allocated before (``bench/perf.py``'s ``Memory``: CUDA allocations, or resident memory on the CPU)."""
    memory = Memory(device)
    memory.start()
    for _ in range(warmup):
        step()
    if flops is None:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = counter.get_total_flops()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    q1, median, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median": median, "q1": q1, "q3": q3, "flops": flops, "peak": memory.peak()}


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 32 px, CPU, 2 steps: checks the script")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--preset", default="sd15")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step of rows 1-5")
    parser.add_argument("--micro-batches", type=int, nargs="*", default=[8, 16], help="pairs per step of rows 6+")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row (compile: these compile)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the rows left after this many seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.preset, args.resolution, args.pairs = "cpu", "tiny", 32, 1
        args.micro_batches, args.steps, args.warmup, args.no_compile = [2], 2, 1, True
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    bound_size = 8192 if device.type == "cuda" else 512
    bounds = {}
    for dtype in (torch.float32, torch.bfloat16):
        mm = matmul(device, dtype, bound_size)
        times = []
        for _ in range(5):
            synchronize(device)
            start = time.perf_counter()
            mm.step()
            synchronize(device)
            times.append(time.perf_counter() - start)
        bounds[dtype] = mm.flops / statistics.median(times)
    print(f"{args.preset} at {args.resolution} px on {name}; matmul bound {bounds[torch.float32] / 1e12:.3f} TFLOP/s "
          f"fp32, {bounds[torch.bfloat16] / 1e12:.3f} TFLOP/s bf16 ({bound_size}x{bound_size})", flush=True)

    rows: list[tuple[str, dict]] = []

    def row(label: str, step: Setup, pairs: int, bound: float, flops: int | None = None) -> None:
        result = measure(step, device, args.warmup, args.steps, flops)
        result.update(pairs=pairs, fraction=result["flops"] / result["median"] / bound)
        rows.append((label, result))
        print(f"  {label}: {result['median']:.4f} s a step, {result['fraction']:.1%} of the bound", flush=True)

    def over_budget(reserve: float = 0.0) -> bool:
        return time.perf_counter() - started > args.budget_s - reserve

    model = build(args.preset, "float32", device)
    row("fp32, encoders every step", Setup(model, device, args.pairs, args.resolution, False, False, False),
        args.pairs, bounds[torch.float32])
    del model
    model = build(args.preset, "bfloat16", device)
    ladder = [("bf16 (VAE fp32)", dict(cached=False, fused=False)),
              ("+ cached latents, text", dict(cached=True, fused=False)),
              ("+ channels-last", dict(cached=True, fused=False)),
              ("+ fused AdamW", dict(cached=True, fused=True))]
    for label, options in ladder:
        if over_budget():
            break
        if label == "+ channels-last":
            model.backbone.unet.to(memory_format=torch.channels_last)
        row(label, Setup(model, device, args.pairs, args.resolution, True, **options), args.pairs,
            bounds[torch.bfloat16])
    for pairs in args.micro_batches:
        if not over_budget():
            row(f"+ micro-batch {pairs}", Setup(model, device, pairs, args.resolution, True, True, True), pairs,
                bounds[torch.bfloat16])
    if not args.no_compile and not over_budget(reserve=180) and rows:  # compiling takes a minute or two
        last = rows[-1][1]
        model.backbone.unet.compile()
        # the same arithmetic as the row above, whose FLOPs are reused (counting them would run the graph eagerly)
        row(f"+ torch.compile (micro-batch {last['pairs']})",
            Setup(model, device, last["pairs"], args.resolution, True, True, True), last["pairs"],
            bounds[torch.bfloat16], flops=last["flops"])

    print("\n| change (cumulative) | s / step | pairs / s | % of matmul bound | peak GiB / pair | paper run, h |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        rate = r["pairs"] / r["median"]
        print(f"| {label} | {r['median']:.4f} ({r['q1']:.4f}-{r['q3']:.4f}) | {rate:.2f} | {r['fraction']:.1%} | "
              f"{r['peak'] / 2**30 / r['pairs']:.2f} | {PAPER_PAIRS / rate / 3600:.1f} |")
    print(f"(paper run: {PAPER_PAIRS} pairs, Diffusion-DPO's SD1.5 schedule; {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
