"""Leaderboard on the toy world: every method's toy recipe, trained from the base at an equal budget over
training seeds, judged by the hidden human on the held-out prompts.

    python bench/leaderboard.py                                       # every method's toy recipe, seeds 0 1 2
    python bench/leaderboard.py configs/toy/ddpo.yaml configs/toy/vca_ppo.yaml --seeds 0 1 2
    python bench/leaderboard.py configs/toy/dense_discounted_dpo.yaml --set model.init_args.gamma=1.0 --label gamma1

Each run trains one recipe with ``seed_everything`` = the seed (no logger, no callbacks: the recipe's own
evaluations are not part of the budget) for the recipe's own length (the toy recipes are sized to 10 minutes of
2-core CPU; ``--minutes`` also stops a run after that much wall time, ``trainer.max_time``), then judged as
``bench/alignment.py`` judges: the 12 held-out prompts x ``--samples`` seeds, the same initial noise for policy and
base. One JSON line per run goes to ``--out`` (appended; re-running skips the runs already there), and the table is
printed at the end:
method, win rate mean and range over seeds, the 95% bootstrap interval of the pooled pairs (prompts resampled),
the mean change of each hidden-reward term, and training minutes, wall and CPU (process time, all threads; data
generation included). On a shared machine the CPU minutes of a 1-thread run (``OMP_NUM_THREADS=1``) are the
honest measure of cost: the wall time then depends on the other processes.
"""

from __future__ import annotations

import json
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
import torch

from alignment import evaluate, table, train_recipe
from lit_pref.rewards import win_rate

RECIPES = [  # every method's toy recipe; DDPO's and VCA-PPO's come with their modules (skipped where absent)
    "configs/toy/trajectory_dpo_best_of_8.yaml",
    "configs/toy/dense_discounted_dpo_best_of_8.yaml",
    "configs/toy/rich_preference_dpo_early_steps.yaml",
    "configs/toy/ddpo.yaml",
    "configs/toy/vca_ppo.yaml",
]


def train_and_judge(config: str, seed: int, seconds: float | None, samples: int, overrides: list[str]) -> dict:
    """Train ``config`` from the toy base with ``seed`` (plus CLI ``overrides``), stopped after ``seconds`` at the
    latest, and judge it on ``samples`` seeds per held-out prompt; returns one result record."""
    limit = []
    if seconds is not None:
        seconds = int(seconds)
        limit = [f"--trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"]
    cli, train_s, train_cpu_s = train_recipe(config, seed, limit + overrides, "runs/bench_leaderboard")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = evaluate(cli.model.backbone.eval().to(device), seeds=samples)
    return {"config": config, "seed": seed, "overrides": overrides, "steps": cli.trainer.global_step,
            "train_s": train_s, "train_cpu_s": train_cpu_s, "policy": result["policy_scores"], "base": result["base_scores"],
            "texts": result["texts"], "terms": result["terms"]}


def per_seed(records: list[dict]) -> str:
    """One line per run: label, seed, steps, win rate with its interval, minutes."""
    lines = []
    for r in records:
        wr = win_rate(torch.tensor(r["policy"]), torch.tensor(r["base"]), groups=r["texts"])
        lines.append(f"{r['label']} seed {r['seed']}: {wr.rate:.1%} ({wr.low:.1%}-{wr.high:.1%}), "
                     f"{r['steps']} steps, {r['train_s'] / 60:.1f} min wall, {r['train_cpu_s'] / 60:.1f} min CPU")
    return "\n".join(lines)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("configs", nargs="*", default=RECIPES, help="recipes to train (toy base)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--minutes", type=float, default=None,
                        help="also stop each training run after this much wall time (default: the recipe's length)")
    parser.add_argument("--samples", type=int, default=16, help="judged samples per held-out prompt")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="CLI override for every run, e.g. model.init_args.gamma=1.0 (repeatable)")
    parser.add_argument("--label", default=None, help="table label (default: the config path, plus overrides)")
    parser.add_argument("--out", default="runs/bench_leaderboard/results.jsonl", help="JSON lines of every run")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out, train nothing")
    args = parser.parse_args()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    overrides = [f"--{kv}" for kv in args.set]
    if not args.table_only:
        for config in args.configs:
            if not Path(config).is_file():
                print(f"skipped {config}: no such file", flush=True)
                continue
            label = args.label or " ".join([Path(config).stem, *args.set])
            for seed in args.seeds:
                if any(r["label"] == label and r["seed"] == seed for r in records):
                    continue
                seconds = None if args.minutes is None else args.minutes * 60
                record = {"label": label, **train_and_judge(config, seed, seconds, args.samples, overrides)}
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                records.append(record)
                print(per_seed([record]), flush=True)
    print(per_seed(records))
    print()
    print(table(records))


if __name__ == "__main__":
    main()
