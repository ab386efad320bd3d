"""Rounds-to-target on toy dialogues: how many rounds the toy simulated user needs with the base model or a LoRA.

    python bench/vca_rounds.py                                    # the toy base model
    python bench/vca_rounds.py --lora runs/vca/version_0/lora     # the base and the LoRA, same dialogues and noise
    python bench/vca_rounds.py --adapt --seeds 10 11 12           # also the base adapting live, as interact --adapt
    python bench/vca_rounds.py --lora LORA --no_base --seeds 11   # the LoRA only (base rounds: fixed by the seed)

Each dialogue starts from :func:`lit_pref.toy.toy_start` (a hidden target caption; an initial prompt that differs
in 1-3 attributes) and is played by :func:`lit_pref.vca.play_dialogue`: K images of the current prompt from the
model, :class:`~lit_pref.toy.ToySimulatedUser` picks one and asks for one change, :class:`~lit_pref.toy.ToyRefiner`
rewrites the prompt. The user is satisfied when the chosen image shows all four attributes with the shape near the
centre (centredness >= 0.8); the captions cannot ask for position, so that part comes from the model alone.
Round ``t`` of dialogue ``i`` uses the same initial noise for every model. Reports, per model: the share of
dialogues that reach the target within ``--rounds``, the mean rounds of those that do, the mean rounds-to-target
with unreached dialogues counted as ``rounds + 1``, the rounds until all four attributes are right (position
ignored), and generated images per second. With ``--adapt`` the base model also plays while adapting live, as
``python -m lit_pref interact --adapt`` does, with the tool's defaults (:class:`~lit_pref.vca.adapt.LiveAdapter`:
after each choice ``--adapt_updates`` DPO steps on the pairs of the latest ``--adapt_history`` rounds at the
timesteps of ``--adapt_timestep_range``; the LoRA is reset for every dialogue), and the seconds per adaptation step
are reported. ``--seeds`` repeats everything for several seeds of the dialogue starts and noise.
"""

from __future__ import annotations

import contextlib
import statistics
import time

from jsonargparse import ActionConfigFile, ArgumentParser
import numpy as np
import torch

from lit_pref.backbone import DiffusionBackbone, lora_config
from lit_pref.toy import ToyRefiner, ToySimulatedUser, toy_start
from lit_pref.vca import play_dialogue
from lit_pref.vca.adapt import LiveAdapter


class AdaptingUser(ToySimulatedUser):
    """The toy user, after whose every choice the adapter updates the model on the round's pairs."""

    def __init__(self, target: str, adapter: LiveAdapter) -> None:
        super().__init__(target)
        self.adapter = adapter
        self.seconds: list[float] = []

    def choose(self, images: torch.Tensor, prompt: str = "") -> int:
        k = super().choose(images, prompt)
        if not self.satisfied(images[k]):  # the dialogue goes on: adapt before the next round
            self.seconds.append(self.adapter.adapt(images, k, prompt).seconds / self.adapter.updates)
        return k


def play(backbone: DiffusionBackbone, starts: list[tuple[str, str]], rounds: int, k: int, steps: int,
         guidance: float, seed: int = 0, adapter: LiveAdapter | None = None) -> dict:
    """Plays every dialogue (adapting live with ``adapter``); returns rounds-to-target statistics and images/s."""
    reached, attributes, images, adapt_seconds = [], [], 0, []
    start = time.perf_counter()
    for i, (target, initial) in enumerate(starts):
        def generate(prompt: str, t: int) -> torch.Tensor:
            generators = [torch.Generator(backbone.device).manual_seed(10**9 * seed + 1_000_000 * i + 1000 * t + j)
                          for j in range(k)]
            with torch.no_grad():
                return backbone.sample([prompt] * k, num_inference_steps=steps, guidance_scale=guidance,
                                       generator=generators).float().cpu()

        if adapter is not None:
            adapter.reset()
            user = AdaptingUser(target, adapter)
        else:
            user = ToySimulatedUser(target)
        turns, shown = play_dialogue(generate, user, ToyRefiner(), initial, rounds)
        adapt_seconds += getattr(user, "seconds", [])
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
        "rounds": reached,
        "seconds_per_adapt_step": statistics.mean(adapt_seconds) if adapt_seconds else float("nan"),
    }


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--lora", default=None, help="also play with this exported LoRA folder")
    parser.add_argument("--dialogues", type=int, default=32, help="number of dialogues")
    parser.add_argument("--rounds", type=int, default=8, help="maximum rounds per dialogue")
    parser.add_argument("--num_images", type=int, default=4, help="images per round (K)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the dialogue starts and noise")
    parser.add_argument("--adapt", action="store_true", help="also play the base model adapting live")
    parser.add_argument("--no_base", action="store_true",
                        help="skip the base model (its rounds are fixed by the seeds: same starts, same noise)")
    parser.add_argument("--adapt_updates", type=int, default=4, help="DPO steps after each choice (--adapt)")
    parser.add_argument("--adapt_lr", type=float, default=3e-3, help="learning rate of the adaptation (--adapt)")
    parser.add_argument("--adapt_beta", type=float, default=5000.0, help="Diffusion-DPO beta of the adaptation")
    parser.add_argument("--adapt_timestep_range", type=tuple[float, float], default=(0.6, 1.0),
                        help="fractions of the training timesteps the adaptation draws from")
    parser.add_argument("--adapt_history", type=int, default=4,
                        help="rounds of the dialogue whose pairs every adaptation step trains on")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = DiffusionBackbone(model="toy", **(lora_config(args.lora) if args.lora else {}))
    if args.lora:
        backbone.load_lora(args.lora)
    backbone = backbone.eval().to(device)
    models = {} if args.no_base else {"base": (backbone, backbone.reference, None)}
    if args.lora:
        models["lora"] = (backbone, contextlib.nullcontext, None)
    if args.adapt:
        live = DiffusionBackbone(model="toy").eval().to(device)  # LoRA B = 0: starts as the base
        adapter = LiveAdapter(live, args.adapt_updates, args.adapt_lr, args.adapt_beta,
                              timestep_range=args.adapt_timestep_range, history=args.adapt_history)
        models["base + live adaptation"] = (live, contextlib.nullcontext, adapter)
    print(f"{args.dialogues} toy dialogues per seed, seeds {args.seeds}, at most {args.rounds} rounds, "
          f"K={args.num_images}, {args.steps} DDIM steps, guidance {args.guidance}, device {device}\n")
    print("| seed | model | reached target | rounds (reached) | rounds (unreached = max+1) | rounds to 4 attributes | "
          "images/s | s per adaptation step |")
    print("|---|---|---|---|---|---|---|---|")
    capped: dict[str, list[float]] = {name: [] for name in models}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        starts = [toy_start(rng, max_changes=3) for _ in range(args.dialogues)]
        for name, (model, context, adapter) in models.items():
            with context():
                r = play(model, starts, args.rounds, args.num_images, args.steps, args.guidance, seed, adapter)
            capped[name].append(r["rounds_capped"])
            print(f"| {seed} | {name} | {r['success']:.0%} of {r['n']} | {r['rounds_if_reached']:.2f} | "
                  f"{r['rounds_capped']:.2f} | {r['attributes_rounds_capped']:.2f} | {r['images_per_s']:.1f} | "
                  f"{r['seconds_per_adapt_step']:.2f} |", flush=True)
    print("\nmean rounds-to-target (unreached = max+1) over seeds: " + "; ".join(
        f"{name} {statistics.mean(v):.2f} (per seed {', '.join(f'{x:.2f}' for x in v)})" for name, v in capped.items()))


if __name__ == "__main__":
    main()
