"""Evidence on the toy world that recorded dialogues train VCA's reward model (issue: VCA learns from people).

    python bench/vca_people.py --out runs/vca_people

1. The toy simulated user plays dialogues; they are written to JSONL with their images, then read back only as
   recorded data: ``train`` (seed 0) and ``held_out`` (seed 1, other targets and noise). ``--images rendered``: the
   images of a round are renderings of its prompt (``make_toy_dialogues``), so they differ only in position and the
   choice is the most centred one; ``--images model``: they are the toy model's samples of the prompt (as the
   interactive tool shows them), which also differ in colour, shape, size and background.
2. A reward model (``configs/reward_model/dialogues_toy.yaml``'s settings) trains on the train file's pairs
   (``DialogueDataModule(pairs=True)``) and is saved to ``<out>/reward_model``.
3. Its agreement with the hidden human on the held-out file's pairs (chosen ≻ unchosen, the user's choice by the
   hidden reward) is printed with a Wilson 95% interval.

The reward model is then R_pref of ``configs/toy/vca_ppo_dialogues.yaml`` (VCA-PPO replaying the train dialogues),
and ``bench/vca_rounds.py`` compares rounds-to-target.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything

from lit_pref.datamodules import Dialogue, DialogueDataModule
from lit_pref.datamodules.dialogue_pairs import DialoguePairDataset
from lit_pref.backbone import DiffusionBackbone
from lit_pref.modules import RewardModel
from lit_pref.rewards import RewardModelScorer
from lit_pref.toy import ToyRefiner, ToySimulatedUser, make_toy_dialogues, toy_start
from lit_pref.vca import play_dialogue
from lit_pref.vca.studio import to_pil


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def record_with_model(backbone: DiffusionBackbone, path: Path, n: int, seed: int, steps: int, k: int = 4,
                      rounds: int = 5) -> None:
    """Plays ``n`` toy dialogues on the model's images (as ``make_toy_dialogues`` does on rendered ones) and writes
    them, with their images, in the dialogue format."""
    rng = np.random.default_rng(seed)
    image_dir = path.parent / f"{path.stem}_images"
    image_dir.mkdir(parents=True, exist_ok=True)
    dialogues = []
    for i in range(n):
        target, initial = toy_start(rng, max_changes=3)

        def generate(prompt: str, t: int) -> torch.Tensor:
            generator = torch.Generator().manual_seed(10**6 * seed + 100 * i + t)
            with torch.no_grad():
                return backbone.sample([prompt] * k, num_inference_steps=steps, guidance_scale=4.0,
                                       generator=generator).float()

        dialogue_id = f"toy-model-{seed}-{i}"
        turns, shown = play_dialogue(generate, ToySimulatedUser(target), ToyRefiner(), initial, rounds)
        for turn, images in zip(turns, shown):
            turn.images = [f"{image_dir.name}/{dialogue_id}_r{turn.round}_{j}.png" for j in range(k)]
            for name, image in zip(turn.images, images):
                to_pil(image).save(path.parent / name)
        dialogues.append(Dialogue(dialogue_id, initial, turns, category="toy"))
    path.write_text("".join(json.dumps(d.to_json()) + "\n" for d in dialogues), encoding="utf-8")


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--out", default="runs/vca_people", help="output folder")
    parser.add_argument("--train_dialogues", type=int, default=256)
    parser.add_argument("--held_out_dialogues", type=int, default=64)
    parser.add_argument("--steps", type=int, default=600, help="reward-model optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", choices=["rendered", "model"], default="rendered", help="who draws the images")
    parser.add_argument("--ddim_steps", type=int, default=10, help="DDIM steps of the model's images")
    parser.add_argument("--patch_grid", type=int, default=4,
                        help="RewardModel patch_grid: CLIP patch tokens pooled to a g x g grid (0: pooled embedding)")
    args = parser.parse_args()
    out = Path(args.out)
    train, held_out = out / "dialogues" / "train.jsonl", out / "dialogues" / "held_out.jsonl"
    if args.images == "rendered":
        make_toy_dialogues(train, args.train_dialogues, seed=0, save_images=True)
        make_toy_dialogues(held_out, args.held_out_dialogues, seed=1, save_images=True)
    else:
        backbone = DiffusionBackbone(model="toy").eval()
        record_with_model(backbone, train, args.train_dialogues, 0, args.ddim_steps)
        record_with_model(backbone, held_out, args.held_out_dialogues, 1, args.ddim_steps)

    seed_everything(args.seed)
    model = RewardModel(clip_model="toy", hidden_dim=64, export_dir=str(out / "reward_model"),
                        patch_grid=args.patch_grid,
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
