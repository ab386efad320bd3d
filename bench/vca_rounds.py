"""Rounds-to-target on toy dialogues: how many rounds the toy simulated user needs with the base model or a LoRA.

    python bench/vca_rounds.py                                    # the toy base model
    python bench/vca_rounds.py --lora runs/vca/version_0/lora     # the base and the LoRA, same dialogues and noise
    python bench/vca_rounds.py --adapt --seeds 10 11 12           # also the base adapting live, as interact --adapt
    python bench/vca_rounds.py --seeds 10 11 12 --save runs/rounds_base.json       # the base, per dialogue
    python bench/vca_rounds.py --adapt --baseline runs/rounds_base.json --seeds 10 11 12   # paired, base not re-run
    python bench/vca_rounds.py --adapt --adapt_ppo runs/vca_people/reward_model --adapt_carry_over true   # PPO, live

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
timesteps of ``--adapt_timestep_range``; the LoRA is reset for every dialogue, or with ``--adapt_carry_over`` only
for every seed, so that the 32 dialogues of a seed are one person's dialogues in a row), and the seconds per
adaptation step are reported. With ``--adapt_ppo REWARD_MODEL`` the adapter is
:class:`~lit_pref.vca.adapt_ppo.LivePPOAdapter` instead: after each choice ``--adapt_updates`` PPO steps, each on
``--adapt_ppo_images`` fresh chains of the round's prompt scored by that reward model (the person's R_pref), at
``--adapt_lr`` on a LoRA of rank ``--adapt_rank``. ``--seeds`` repeats everything for several seeds of the
dialogue starts and noise.

Every model is also compared with the base dialogue by dialogue (the same starts and noise): the mean difference of
rounds-to-target (model - base, unreached = max+1) pooled over the dialogues of all seeds, with a 95% bootstrap
interval over dialogues, and how many dialogues got fewer, more or equal rounds. ``--save FILE`` writes every model's
per-dialogue rounds (JSON); ``--baseline FILE`` reads the base's from such a file instead of playing it again (the
settings and seeds must match).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
import numpy as np
import torch

from lit_pref.backbone import DiffusionBackbone, lora_config
from lit_pref.toy import ToyRefiner, ToySimulatedUser, toy_start
from lit_pref.vca import play_dialogue
from lit_pref.rewards import CLIPScore, RewardModelScorer, Scorer
from lit_pref.rewards.reward_model import TOY_CLIP
from lit_pref.vca.adapt import LiveAdapter, SessionAdapter
from lit_pref.vca.adapt_ppo import LivePPOAdapter


class AdaptingUser(ToySimulatedUser):
    """The toy user, after whose every choice the adapter updates the model on the round's pairs."""

    def __init__(self, target: str, adapter: SessionAdapter) -> None:
        super().__init__(target)
        self.adapter = adapter
        self.seconds: list[float] = []

    def choose(self, images: torch.Tensor, prompt: str = "") -> int:
        k = super().choose(images, prompt)
        if not self.satisfied(images[k]):  # the dialogue goes on: adapt before the next round
            self.seconds.append(self.adapter.adapt(images, k, prompt).seconds / self.adapter.updates)
        return k


class WithCLIPScore(Scorer):
    """``scorer + weight * CLIP score`` on the toy CLIP: prompt-image agreement as a fidelity term beside R_pref."""

    def __init__(self, scorer: Scorer, weight: float, device: str) -> None:
        self.scorer, self.weight = scorer, weight
        self.clip = CLIPScore("local-dir:" + str(TOY_CLIP), pretrained=None, device=device)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.scorer.score(images, prompts) + self.weight * self.clip.score(images, prompts)


def play(backbone: DiffusionBackbone, starts: list[tuple[str, str]], rounds: int, k: int, steps: int,
         guidance: float, seed: int = 0, adapter: SessionAdapter | None = None) -> dict:
    """Plays every dialogue (adapting live with ``adapter``); returns rounds-to-target statistics and images/s."""
    reached, attributes, images, adapt_seconds = [], [], 0, []
    if adapter is not None:
        adapter.reset()  # every seed is a new person, starting from the base
    start, cpu = time.perf_counter(), time.process_time()
    for i, (target, initial) in enumerate(starts):
        def generate(prompt: str, t: int) -> torch.Tensor:
            generators = [torch.Generator(backbone.device).manual_seed(10**9 * seed + 1_000_000 * i + 1000 * t + j)
                          for j in range(k)]
            with torch.no_grad():
                return backbone.sample([prompt] * k, num_inference_steps=steps, guidance_scale=guidance,
                                       generator=generators).float().cpu()

        if adapter is not None:
            adapter.new_session()
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
    capped = [r if r is not None else rounds + 1 for r in reached]
    attributes_capped = [r if r is not None else rounds + 1 for r in attributes]
    return {
        "n": len(starts),
        "success": len(done) / len(starts),
        "rounds_if_reached": statistics.mean(done) if done else float("nan"),
        "rounds_capped": statistics.mean(capped),
        "attributes_rounds_capped": statistics.mean(attributes_capped),
        "images_per_s": images / seconds,
        "cpu_seconds": time.process_time() - cpu,
        "rounds": capped,
        "attributes_rounds": attributes_capped,
        "seconds_per_adapt_step": statistics.mean(adapt_seconds) if adapt_seconds else float("nan"),
    }


def paired_difference(model: list[float], base: list[float], resamples: int = 10_000, seed: int = 0) -> dict:
    """Mean per-dialogue difference ``model - base`` with a percentile bootstrap 95% interval over dialogues.

    Args:
        model: The model's rounds-to-target, one per dialogue.
        base: The base's rounds-to-target on the same dialogues (same starts, same noise), in the same order.
        resamples: Bootstrap resamples of the dialogues.
        seed: Seed of the resampling.
    """
    if len(model) != len(base) or not model:
        raise ValueError(f"need the same dialogues for both, got {len(model)} and {len(base)} results")
    diff = np.asarray(model, dtype=float) - np.asarray(base, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    low, high = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
    return {"n": len(diff), "mean": float(diff.mean()), "low": float(low), "high": float(high),
            "fewer": int((diff < 0).sum()), "more": int((diff > 0).sum()), "equal": int((diff == 0).sum())}


def load_baseline(path: str, settings: dict, seeds: list[int], name: str = "base") -> dict[int, list[float]]:
    """The per-dialogue rounds of ``name`` for ``seeds`` from a ``--save`` file played with the same ``settings``."""
    saved = json.loads(Path(path).read_text())
    differing = {k: (v, saved["settings"].get(k)) for k, v in settings.items() if saved["settings"].get(k) != v}
    if differing:
        raise ValueError(f"{path}: played with other settings (here, there): {differing}")
    runs = saved["results"].get(name, {})
    missing = [seed for seed in seeds if str(seed) not in runs]
    if missing:
        raise ValueError(f"{path}: no {name!r} results for seeds {missing} (it has {sorted(runs)})")
    return {seed: runs[str(seed)]["rounds"] for seed in seeds}


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
    parser.add_argument("--adapt_updates", type=int, default=None,
                        help="optimizer steps after each choice (--adapt; default: the adapter's, DPO 4, PPO 2)")
    parser.add_argument("--adapt_lr", type=float, default=None,
                        help="learning rate of the adaptation (--adapt; default: the adapter's, DPO 3e-3, PPO 5e-4)")
    parser.add_argument("--adapt_beta", type=float, default=5000.0, help="Diffusion-DPO beta of the adaptation")
    parser.add_argument("--adapt_timestep_range", type=tuple[float, float], default=(0.6, 1.0),
                        help="fractions of the training timesteps the adaptation draws from")
    parser.add_argument("--adapt_history", type=int | None, default=4,
                        help="rounds of the dialogue whose pairs every adaptation step trains on (null: all)")
    parser.add_argument("--adapt_fresh_optimizer", type=bool, default=False,
                        help="a fresh AdamW state every round (no momentum from the earlier rounds)")
    parser.add_argument("--adapt_carry_over", type=bool, default=False,
                        help="the adapted LoRA carries over from dialogue to dialogue within a seed (one person's "
                             "dialogues in a row, as interact --adapt_carry_over); else every dialogue starts "
                             "from the base")
    parser.add_argument("--adapt_ppo", default=None,
                        help="a reward model folder: adapt with PPO on its score (LivePPOAdapter, --adapt_updates "
                             "steps of --adapt_ppo_images chains a round at --adapt_lr) instead of DPO")
    parser.add_argument("--adapt_rank", type=int, default=4,
                        help="LoRA rank of the adapting model (the tool's default LoRA: 4)")
    parser.add_argument("--adapt_ppo_clip_weight", type=float, default=0.0,
                        help="add this weight times the toy CLIP score (prompt-image agreement) to the PPO reward")
    parser.add_argument("--adapt_ppo_images", type=int, default=32, help="chains per PPO step (--adapt_ppo)")
    parser.add_argument("--save", default=None, help="write every model's per-dialogue rounds to this JSON file")
    parser.add_argument("--baseline", default=None,
                        help="a --save file to take the base's per-dialogue rounds from (the base is not played)")
    args = parser.parse_args()
    settings = {k: getattr(args, k) for k in ("dialogues", "rounds", "num_images", "steps", "guidance")}
    base_rounds = load_baseline(args.baseline, settings, args.seeds) if args.baseline else {}

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = DiffusionBackbone(model="toy", **(lora_config(args.lora) if args.lora else {}))
    if args.lora:
        backbone.load_lora(args.lora)
    backbone = backbone.eval().to(device)
    models = {} if args.no_base or args.baseline else {"base": (backbone, backbone.reference_forward, None)}
    if args.lora:
        models["lora"] = (backbone, contextlib.nullcontext, None)
    if args.adapt:
        # LoRA B = 0: the adapting model starts as the base
        live = DiffusionBackbone(model="toy", lora_rank=args.adapt_rank).eval().to(device)
        given = {name: value for name, value in (("updates", args.adapt_updates), ("lr", args.adapt_lr))
                 if value is not None}  # not given: the adapter's own defaults
        if args.adapt_ppo:
            scorer = RewardModelScorer(args.adapt_ppo, device=device)
            if args.adapt_ppo_clip_weight:
                scorer = WithCLIPScore(scorer, args.adapt_ppo_clip_weight, device)
            adapter = LivePPOAdapter(live, scorer, num_images=args.adapt_ppo_images, num_inference_steps=args.steps,
                                     guidance_scale=args.guidance, carry_over=args.adapt_carry_over, **given)
        else:
            adapter = LiveAdapter(live, beta=args.adapt_beta, timestep_range=args.adapt_timestep_range,
                                  history=args.adapt_history, fresh_optimizer=args.adapt_fresh_optimizer,
                                  carry_over=args.adapt_carry_over, **given)
        args.adapt_updates, args.adapt_lr = adapter.updates, adapter.lr  # what ran, for --save
        models["base + live adaptation"] = (live, contextlib.nullcontext, adapter)
    print(f"{args.dialogues} toy dialogues per seed, seeds {args.seeds}, at most {args.rounds} rounds, "
          f"K={args.num_images}, {args.steps} DDIM steps, guidance {args.guidance}, device {device}\n")
    print("| seed | model | reached target | rounds (reached) | rounds (unreached = max+1) | rounds to 4 attributes | "
          "images/s | s per adaptation step | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    capped: dict[str, list[float]] = {name: [] for name in models}
    results: dict[str, dict[str, dict]] = {name: {} for name in models}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        starts = [toy_start(rng, max_changes=3) for _ in range(args.dialogues)]
        for name, (model, context, adapter) in models.items():
            with context():
                r = play(model, starts, args.rounds, args.num_images, args.steps, args.guidance, seed, adapter)
            capped[name].append(r["rounds_capped"])
            results[name][str(seed)] = r
            if name == "base":
                base_rounds[seed] = r["rounds"]
            if args.save:  # after every model and seed, so a stopped run keeps what it played
                Path(args.save).parent.mkdir(parents=True, exist_ok=True)
                Path(args.save).write_text(json.dumps({"settings": settings, "adaptation": {
                    k: v for k, v in vars(args).items() if k.startswith("adapt")}, "results": results}, indent=1))
            print(f"| {seed} | {name} | {r['success']:.0%} of {r['n']} | {r['rounds_if_reached']:.2f} | "
                  f"{r['rounds_capped']:.2f} | {r['attributes_rounds_capped']:.2f} | {r['images_per_s']:.1f} | "
                  f"{r['seconds_per_adapt_step']:.2f} | {r['cpu_seconds']:.0f} |", flush=True)
    print("\nmean rounds-to-target (unreached = max+1) over seeds: " + "; ".join(
        f"{name} {statistics.mean(v):.2f} (per seed {', '.join(f'{x:.2f}' for x in v)})" for name, v in capped.items()))
    if base_rounds:
        print(f"\npaired against the base (same dialogues and noise; model - base rounds, unreached = max+1; "
              f"95% bootstrap interval over the dialogues of seeds {args.seeds}):")
        for name in (n for n in models if n != "base"):
            d = paired_difference([x for s in args.seeds for x in results[name][str(s)]["rounds"]],
                                  [x for s in args.seeds for x in base_rounds[s]])
            print(f"- {name}: {d['mean']:+.3f} rounds [{d['low']:+.3f}, {d['high']:+.3f}] over {d['n']} dialogues; "
                  f"fewer rounds in {d['fewer']}, more in {d['more']}, equal in {d['equal']}")


if __name__ == "__main__":
    main()
