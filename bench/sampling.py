"""Sampling throughput with per-step log-probs (trajectory collection), against plain DDIM sampling.

    python bench/sampling.py [--model tiny] [--batch 16] [--steps 50] [--repeats 3]

Prints trajectories per second (median over repeats) for ``sample(eta=1, return_trajectory=True)`` and images per
second for plain ``sample(eta=1)`` in the same run (calls alternate), and their ratio. ``bench/perf.py`` reuses :func:`sampling_rates`.
"""

from __future__ import annotations

import statistics
import time

from jsonargparse import ActionConfigFile, ArgumentParser
import torch

from lit_pref.backbone import DiffusionBackbone


def sampling_rates(backbone: DiffusionBackbone, batch: int, steps: int, guidance: float, repeats: int,
                   resolution: int | None = None) -> tuple[float, float]:
    """(trajectories/s with log-probs, images/s plain): medians over ``repeats`` timed calls of each mode after one
    warm-up call each; the modes alternate (in both orders), so a drifting machine load slows both alike."""
    prompts = ["a small red circle on a white background"] * batch
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(repeats + 1):
        for return_trajectory in (True, False) if i % 2 == 0 else (False, True):
            start = time.perf_counter()
            backbone.sample(prompts, num_inference_steps=steps, guidance_scale=guidance, eta=1.0,
                            generator=torch.Generator(backbone.device).manual_seed(i), height=resolution,
                            width=resolution, return_trajectory=return_trajectory)
            if backbone.device.type == "cuda":
                torch.cuda.synchronize()
            times[return_trajectory].append(time.perf_counter() - start)
    return batch / statistics.median(times[True][1:]), batch / statistics.median(times[False][1:])


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--model", default="tiny", help="backbone preset, hub id or folder")
    parser.add_argument("--batch", type=int, default=16, help="chains per call")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (the paper's chain length is 50)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode, after one warm-up call")
    args = parser.parse_args()
    backbone = DiffusionBackbone(model=args.model).eval()
    with_logprob, plain = sampling_rates(backbone, args.batch, args.steps, args.guidance, args.repeats)
    print(f"{args.model}, batch {args.batch}, {args.steps} DDIM steps, guidance {args.guidance}, "
          f"{torch.get_num_threads()} threads: {with_logprob:.1f} trajectories/s with log-probs, "
          f"{plain:.1f} images/s plain (ratio {with_logprob / plain:.2f})")


if __name__ == "__main__":
    main()
