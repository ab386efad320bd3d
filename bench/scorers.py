"""Scorer throughput: images/s of every scorer's tiny build, against CLIPScore on the toy CLIP in the same run.

    python bench/scorers.py [--batch 16] [--size 64] [--repeats 5] [--device cpu]

Tiny builds (``lit_pref.rewards.tiny``): ImageReward, HPSv2 and PickScore at 32 pixels with random weights, saved
in their official file layouts and loaded through the real code paths; AestheticScorer (random head) and CLIPScore
on the shipped toy CLIP (32 pixels). Every call scores ``--batch`` images of ``--size`` pixels (resized by each
scorer) with their prompts. Prints the median over ``--repeats`` timed calls, after one warm-up call; the scorers
take turns in each round.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings

from jsonargparse import ActionConfigFile, ArgumentParser
import torch

from lit_pref.toy.world import prompts as toy_prompts
from lit_pref.rewards import AestheticScorer, CLIPScore, HPSv2, ImageReward, PickScore, Scorer
from lit_pref.rewards.tiny import save_tiny_hpsv2, save_tiny_image_reward, save_tiny_pickscore

TOY_CLIP = "local-dir:lit_pref/assets/toy/clip"


def median_rates(scorers: dict[str, Scorer], images: torch.Tensor, prompts: list[str],
                 repeats: int) -> dict[str, float]:
    """Images per second of each scorer, median over ``repeats`` timed calls after one warm-up call; the scorers
    take turns within each round, so load changes on a shared machine hit them alike."""
    times: dict[str, list[float]] = {name: [] for name in scorers}
    for _ in range(repeats + 1):
        for name, scorer in scorers.items():
            start = time.perf_counter()
            scorer.score(images, prompts)
            if images.is_cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: len(prompts) / statistics.median(t[1:]) for name, t in times.items()}


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--batch", type=int, default=16, help="images per score() call")
    parser.add_argument("--size", type=int, default=64, help="side of the input images in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per scorer, after one warm-up call")
    parser.add_argument("--device", default="cpu", help="device the scorers run on")
    args = parser.parse_args()
    prompts = (toy_prompts("all") * args.batch)[:args.batch]
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    images = images.to(args.device)
    common = {"device": args.device, "batch_size": args.batch}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the aesthetic head's "random weights" warning
        scorers = {
            "CLIPScore (toy CLIP)": CLIPScore(TOY_CLIP, pretrained=None, **common),
            "AestheticScorer (toy CLIP)": AestheticScorer(None, TOY_CLIP, None, embed_dim=64, **common),
            "ImageReward (tiny)": ImageReward(**save_tiny_image_reward(f"{folder}/image_reward"), **common),
            "HPSv2 (tiny)": HPSv2(**save_tiny_hpsv2(f"{folder}/hps"), **common),
            "PickScore (tiny)": PickScore(**save_tiny_pickscore(f"{folder}/pickscore"), **common),
        }
    rates = median_rates(scorers, images, prompts, args.repeats)
    baseline = rates["CLIPScore (toy CLIP)"]
    print(f"batch {args.batch}, {args.size}x{args.size} inputs, {args.device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}:")
    for name, rate in rates.items():
        print(f"  {name:28s} {rate:8.1f} images/s  ({rate / baseline:.2f}x CLIPScore)")


if __name__ == "__main__":
    main()
