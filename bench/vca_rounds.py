"""Rounds-to-target on toy dialogues: how many rounds the toy simulated user needs with the base model or a LoRA.

    python bench/vca_rounds.py                                    # the toy base model
    python bench/vca_rounds.py --lora runs/vca/version_0/lora     # the base and the LoRA, same dialogues and noise

Each dialogue starts from :func:`lit_pref.vca.toy_start` (a hidden target caption; an initial prompt that differs
in 1-3 attributes) and is played by :func:`lit_pref.vca.play_dialogue`: K images of the current prompt from the
model, :class:`~lit_pref.vca.ToySimulatedUser` picks one and asks for one change, :class:`~lit_pref.vca.TemplateRefiner`
rewrites the prompt. The user is satisfied when the chosen image shows all four attributes with the shape near the
centre (centredness >= 0.8); the captions cannot ask for position, so that part comes from the model alone.
Round ``t`` of dialogue ``i`` uses the same initial noise for every model. Reports, per model: the share of
dialogues that reach the target within ``--rounds``, the mean rounds of those that do, the mean rounds-to-target
with unreached dialogues counted as ``rounds + 1``, the rounds until all four attributes are right (position
ignored), and generated images per second.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

from lit_pref.backbone import DiffusionBackbone, lora_config
from lit_pref.vca import TemplateRefiner, ToySimulatedUser, play_dialogue, toy_start


@torch.no_grad()
def play(backbone: DiffusionBackbone, starts: list[tuple[str, str]], rounds: int, k: int, steps: int,
         guidance: float) -> dict:
    """Plays every dialogue; returns rounds-to-target statistics and images/s."""
    reached, attributes, images = [], [], 0
    start = time.perf_counter()
    for i, (target, initial) in enumerate(starts):
        def generate(prompt: str, t: int) -> torch.Tensor:
            generators = [torch.Generator(backbone.device).manual_seed(1_000_000 * i + 1000 * t + j) for j in range(k)]
            return backbone.sample([prompt] * k, num_inference_steps=steps, guidance_scale=guidance,
                                   generator=generators).float().cpu()

        user = ToySimulatedUser(target)
        turns, shown = play_dialogue(generate, user, TemplateRefiner(), initial, rounds)
        images += sum(len(s) for s in shown)
        reached.append(len(turns) if turns[-1].user_feedback == "perfect" else None)
        first = next((t.round for t in turns if t.user_feedback in ("perfect", "move it to the centre")), None)
        attributes.append(first)
    seconds = time.perf_counter() - start
    done = [r for r in reached if r is not None]
    return {
        "n": len(starts),
        "success": len(done) / len(starts),
        "rounds_if_reached": statistics.mean(done) if done else float("nan"),
        "rounds_capped": statistics.mean(r if r is not None else rounds + 1 for r in reached),
        "attributes_rounds_capped": statistics.mean(r if r is not None else rounds + 1 for r in attributes),
        "images_per_s": images / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", default=None, help="also play with this exported LoRA folder")
    parser.add_argument("--dialogues", type=int, default=32, help="number of dialogues")
    parser.add_argument("--rounds", type=int, default=8, help="maximum rounds per dialogue")
    parser.add_argument("--num_images", type=int, default=4, help="images per round (K)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dialogue starts")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    starts = [toy_start(rng, max_changes=3) for _ in range(args.dialogues)]
    backbone = DiffusionBackbone(model="toy", **(lora_config(args.lora) if args.lora else {}))
    if args.lora:
        backbone.load_lora(args.lora)
    backbone = backbone.eval().to("cuda" if torch.cuda.is_available() else "cpu")
    models = {"base": backbone.reference}
    if args.lora:
        models["lora"] = contextlib.nullcontext
    print(f"{args.dialogues} toy dialogues, at most {args.rounds} rounds, K={args.num_images}, {args.steps} DDIM steps, "
          f"guidance {args.guidance}, device {backbone.device}\n")
    print("| model | reached target | rounds (reached) | rounds (unreached = max+1) | rounds to 4 attributes | images/s |")
    print("|---|---|---|---|---|---|")
    for name, context in models.items():
        with context():
            r = play(backbone, starts, args.rounds, args.num_images, args.steps, args.guidance)
        print(f"| {name} | {r['success']:.0%} of {r['n']} | {r['rounds_if_reached']:.2f} | {r['rounds_capped']:.2f} | "
              f"{r['attributes_rounds_capped']:.2f} | {r['images_per_s']:.1f} |")


if __name__ == "__main__":
    main()
