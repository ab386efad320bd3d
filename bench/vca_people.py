"""Evidence on the toy world that recorded dialogues train VCA's reward model (issue: VCA learns from people).

    python bench/vca_people.py --out runs/vca_people

1. The toy simulated user plays dialogues on rendered toy images (``make_toy_dialogues``); they are written to JSONL
   with their images, then read back only as recorded data: ``train`` (seed 0) and ``held_out`` (seed 1, other
   targets and positions).
2. A reward model (``configs/reward_model/dialogues_toy.yaml``'s settings) trains on the train file's pairs
   (``DialogueDataModule(pairs=True)``) and is saved to ``<out>/reward_model``.
3. Its agreement with the hidden human on the held-out file's pairs (chosen ≻ unchosen, the user's choice by the
   hidden reward) is printed with a Wilson 95% interval.

The reward model is then R_pref of ``configs/toy/vca_ppo_dialogues.yaml`` (VCA-PPO replaying the train dialogues),
and ``bench/vca_rounds.py`` compares rounds-to-target.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from datamodules import DialogueDataModule
from datamodules.dialogue_pairs import DialoguePairDataset
from lit_pref.modules import RewardModel
from lit_pref.rewards import RewardModelScorer
from lit_pref.vca import make_toy_dialogues


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/vca_people", help="output folder")
    parser.add_argument("--train_dialogues", type=int, default=256)
    parser.add_argument("--held_out_dialogues", type=int, default=64)
    parser.add_argument("--steps", type=int, default=600, help="reward-model optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    train, held_out = out / "dialogues" / "train.jsonl", out / "dialogues" / "held_out.jsonl"
    make_toy_dialogues(train, args.train_dialogues, seed=0, save_images=True)
    make_toy_dialogues(held_out, args.held_out_dialogues, seed=1, save_images=True)

    seed_everything(args.seed)
    model = RewardModel(clip_model="toy", hidden_dim=64, export_dir=str(out / "reward_model"),
                        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4))
    data = DialogueDataModule(str(train), pairs=True, resolution=32, batch_size=32, seed=args.seed)
    Trainer(max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False).fit(model, data)
    print(f"train pairs: {len(data.train_dataset)}; rounds without pairs: {data.rounds_without_pairs}")

    scorer = RewardModelScorer(str(out / "reward_model"))
    pairs = DialoguePairDataset(held_out, resolution=32)
    batch = pairs.collate([pairs[i] for i in range(len(pairs))])
    s0 = scorer.score(batch["images_0"] / 2 + 0.5, batch["captions"])
    s1 = scorer.score(batch["images_1"] / 2 + 0.5, batch["captions"])
    agree = int(((s0 > s1) == (batch["label_0"] == 1.0)).sum())
    n = len(pairs)
    low, high = wilson(agree, n)
    print(f"held-out agreement with the hidden human: {agree}/{n} = {agree / n:.3f} "
          f"(Wilson 95% [{low:.3f}, {high:.3f}]) on {args.held_out_dialogues} held-out dialogues")


if __name__ == "__main__":
    main()
