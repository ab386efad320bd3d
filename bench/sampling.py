"""Sampling throughput with per-step log-probs (trajectory collection), against plain DDIM sampling.

    python bench/sampling.py [--model tiny] [--batch 16] [--steps 50] [--repeats 3]

Prints trajectories per second (median over repeats) for ``sample(eta=1, return_trajectory=True)`` and images per
second for plain ``sample(eta=1)`` in the same run, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lit_pref.backbone import DiffusionBackbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="backbone preset, hub id or folder")
    parser.add_argument("--batch", type=int, default=16, help="chains per call")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (the paper's chain length is 50)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode, after one warm-up call")
    args = parser.parse_args()
    backbone = DiffusionBackbone(model=args.model).eval()
    prompts = ["a small red circle on a white background"] * args.batch

    def rate(return_trajectory: bool) -> float:
        times = []
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            backbone.sample(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, eta=1.0,
                            generator=torch.Generator().manual_seed(i), return_trajectory=return_trajectory)
            times.append(time.perf_counter() - start)
        return args.batch / statistics.median(times[1:])

    with_logprob, plain = rate(True), rate(False)
    print(f"{args.model}, batch {args.batch}, {args.steps} DDIM steps, guidance {args.guidance}, "
          f"{torch.get_num_threads()} threads: {with_logprob:.1f} trajectories/s with log-probs, "
          f"{plain:.1f} images/s plain (ratio {with_logprob / plain:.2f})")


if __name__ == "__main__":
    main()
