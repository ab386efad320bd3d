"""Median TrajectoryDPO training-step time (forward, backward, optimizer step) on a backbone preset.

    python bench/step_time.py [--model tiny] [--pairs 4] [--steps 20]

Prints the median and the interquartile range over measured steps after warm-up.
"""

from __future__ import annotations

import statistics
import time

from jsonargparse import ActionConfigFile, ArgumentParser
import torch

from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiffusionDPOLoss
from lit_pref.modules import TrajectoryDPO


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--model", default="tiny", help="backbone preset, hub id or folder")
    parser.add_argument("--pairs", type=int, default=4, help="preference pairs per step")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: the model's)")
    parser.add_argument("--steps", type=int, default=20, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = TrajectoryDPO(DiffusionBackbone(model=args.model), loss=DiffusionDPOLoss())
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    res = args.resolution or model.backbone.default_resolution
    batch = {
        "images_0": torch.rand(args.pairs, 3, res, res) * 2 - 1,
        "images_1": torch.rand(args.pairs, 3, res, res) * 2 - 1,
        "label_0": torch.ones(args.pairs),
        "captions": ["a red circle on a white background"] * args.pairs,
    }
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        pairs, _ = model.winners_and_losers(batch)
        loss, _ = model.loss(*model.denoising_errors(pairs))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    q1, median, q3 = statistics.quantiles(times, n=4)
    print(f"TrajectoryDPO step, {args.model}, {args.pairs} pairs at {res}px, {torch.get_num_threads()} threads: "
          f"median {median * 1000:.1f} ms (IQR {q1 * 1000:.1f}-{q3 * 1000:.1f} ms) over {args.steps} steps")


if __name__ == "__main__":
    main()
