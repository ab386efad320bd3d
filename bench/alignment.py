"""Alignment on the toy world: train a method from the toy base, then judge it on held-out prompts.

    python bench/alignment.py                                  # train configs/toy/trajectory_dpo.yaml, evaluate
    python bench/alignment.py --config configs/demo.yaml       # another recipe (any method config on the toy base)
    python bench/alignment.py --lora runs/demo/version_0/lora  # evaluate an exported LoRA, no training
    python bench/alignment.py -- --trainer.max_steps=100       # training overrides go after --

Reports the hidden human's reward (and each of its terms) for the base model and the trained policy on the
held-out prompts, same prompts and same initial noise for both, and the policy's win rate against the base
(ties count 0.5) with a bootstrap 95% interval over prompts.
"""

from __future__ import annotations

import time

from jsonargparse import ArgumentParser
import torch

from lit_pref.toy.world import prompts
from lit_pref.backbone import DiffusionBackbone, lora_config
from lit_pref.cli import LitPrefCLI
from lit_pref.rewards import win_rate
from lit_pref.toy import ToyGroundTruthReward


@torch.no_grad()
def evaluate(backbone: DiffusionBackbone, seeds: int = 16, steps: int = 20, guidance: float = 4.0) -> dict:
    """Hidden-reward terms of policy and base on every held-out prompt x ``seeds``, and the policy's win rate."""
    texts = [p for p in prompts("heldout") for _ in range(seeds)]
    reward = ToyGroundTruthReward()

    def sample() -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 64):
            generators = [torch.Generator(backbone.device).manual_seed(10_000 + j) for j in range(i, min(i + 64, len(texts)))]
            out.append(backbone.sample(texts[i:i + 64], num_inference_steps=steps, guidance_scale=guidance,
                                       generator=generators).cpu())
        return torch.cat(out)

    policy_images = sample()
    with backbone.reference_forward():
        base_images = sample()
    policy, base = reward.score(policy_images, texts), reward.score(base_images, texts)
    terms = {name: (base_v.mean().item(), pol_v.mean().item())
             for (name, base_v), pol_v in zip(reward.components(base_images, texts).items(),
                                              reward.components(policy_images, texts).values())}
    return {"reward": (base.mean().item(), policy.mean().item()), "terms": terms,
            "win_rate": win_rate(policy, base, groups=texts), "n": len(texts),
            "policy_scores": policy.tolist(), "base_scores": base.tolist(), "texts": texts}


def train_recipe(config: str, seed: int, overrides: list[str], root: str) -> tuple[LitPrefCLI, float, float]:
    """Train a method recipe from the toy base through the CLI with ``seed_everything`` = ``seed`` (no logger,
    callbacks or checkpoints: the recipe's own evaluations are not part of the cost) plus CLI ``overrides``;
    returns the CLI, the wall seconds and the CPU seconds (process time, all threads; data generation included)."""
    args = ["fit", "--config", config, f"--seed_everything={seed}", "--trainer.logger=false",
            "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={root}"]
    start, cpu_start = time.perf_counter(), time.process_time()
    cli = LitPrefCLI(args=args + overrides)
    return cli, time.perf_counter() - start, time.process_time() - cpu_start


def table(records: list[dict]) -> str:
    """The markdown table of judged runs, one row per ``label`` (in order of first appearance): seeds, win rate
    mean (range) over seeds, the 95% bootstrap interval of the pooled pairs (prompts resampled), the mean change of
    each hidden-reward term, and training minutes, wall and CPU (the max over seeds: only a first run generates
    cached data). A record has ``label``, ``seed``, ``policy``, ``base``, ``texts``, ``terms``, ``train_s`` and
    ``train_cpu_s`` (from :func:`evaluate` and :func:`train_recipe`)."""
    terms = ToyGroundTruthReward.TERMS
    rows = ["| method | seeds | win rate mean (range) | 95% interval, pooled pairs | "
            + " | ".join(f"Δ {t}" for t in terms) + " | train min: wall, CPU (max) |",
            "|---|---|---|---|" + "---|" * len(terms) + "---|"]
    for label in dict.fromkeys(r["label"] for r in records):
        runs = [r for r in records if r["label"] == label]
        rates = [win_rate(torch.tensor(r["policy"]), torch.tensor(r["base"]), groups=r["texts"]).rate for r in runs]
        pooled = win_rate(torch.tensor([x for r in runs for x in r["policy"]]),
                          torch.tensor([x for r in runs for x in r["base"]]),
                          groups=[t for r in runs for t in r["texts"]])
        deltas = [sum(r["terms"][t][1] - r["terms"][t][0] for r in runs) / len(runs) for t in terms]
        seeds = " ".join(str(r["seed"]) for r in runs)
        rows.append(f"| {label} | {seeds} | {sum(rates) / len(rates):.1%} ({min(rates):.1%}-{max(rates):.1%}) | "
                    f"{pooled.low:.1%}-{pooled.high:.1%} | " + " | ".join(f"{d:+.3f}" for d in deltas)
                    + f" | {max(r['train_s'] for r in runs) / 60:.1f}, "
                    f"{max(r['train_cpu_s'] for r in runs) / 60:.1f} |")
    return "\n".join(rows)


def report(result: dict, title: str) -> str:
    lines = [f"### {title}", "", "| held-out prompts | base | policy | change |", "|---|---|---|---|"]
    rows = {"hidden reward": result["reward"], **result["terms"]}
    lines += [f"| {name} | {b:.3f} | {p:.3f} | {p - b:+.3f} |" for name, (b, p) in rows.items()]
    wr = result["win_rate"]
    lines += ["", f"win rate vs base: {wr.rate:.1%} (95% CI {wr.low:.1%}-{wr.high:.1%}; "
              f"{wr.wins} wins, {wr.ties} ties, {wr.losses} losses over {wr.n} samples)"]
    return "\n".join(lines)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/toy/trajectory_dpo.yaml", help="method config to train")
    parser.add_argument("--lora", default=None, help="evaluate this exported LoRA folder instead of training")
    parser.add_argument("--seeds", type=int, default=16, help="samples per held-out prompt")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps when evaluating")
    parser.add_argument("cli_args", nargs="*", help="extra CLI overrides for training after --, e.g. -- "
                        "--trainer.max_steps=100")
    args = parser.parse_args()

    if args.lora:
        backbone = DiffusionBackbone(model="toy", **lora_config(args.lora))
        backbone.load_lora(args.lora)
        title = f"LoRA {args.lora}"
    else:
        start = time.perf_counter()
        cli = LitPrefCLI(args=["fit", "--config", args.config, "--trainer.enable_progress_bar=false",
                               "--trainer.default_root_dir=runs/bench_alignment", *args.cli_args])
        backbone = cli.model.backbone
        title = f"{args.config} ({cli.trainer.global_step} steps, {time.perf_counter() - start:.0f} s incl. data)"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(report(evaluate(backbone.eval().to(device), args.seeds, args.steps), title))


if __name__ == "__main__":
    main()
