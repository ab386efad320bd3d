"""Overhead of evaluation on a demo run: the same training with and without the evaluation callbacks.

    python bench/eval_overhead.py [--config configs/demo.yaml] [--steps 100] [--val-every 50] [--repeats 1]

(the demo itself: 200 steps, validation every 100). On a CPU shared with other jobs, set OMP_NUM_THREADS=1: with
more threads than free cores, sampling slowed down up to tenfold here and the ratio measured that instead.

Trains ``--config`` for ``--steps`` steps, validating every ``--val-every`` steps, as shipped ("with": WinRate with
its image grid, and SampleGrid, run after each validation) and with the callbacks of ``EVALUATION`` removed
("without"; validation, val/*, checkpoints and LoRA export kept). Both read the same pairs (the demo's shipped ones;
a config's generated pairs are made by an untimed first run), and the runs are written into a temporary folder. Runs alternate (with, without, with, ...) so that
a change in the machine's load hits both; prints the median wall time of each ``fit`` (model load included) and
their ratio.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from jsonargparse import ArgumentParser
import torch
import yaml

from lit_pref.cli import LitPrefCLI

EVALUATION = ("lit_pref.callbacks.WinRate", "lit_pref.callbacks.RewardMetrics", "lit_pref.callbacks.SampleGrid")


def fit_seconds(config: Path, work: Path, overrides: list[str]) -> float:
    """Wall seconds of one ``fit`` of ``config`` with ``overrides``, writing only under ``work``."""
    start = time.perf_counter()
    LitPrefCLI(args=["fit", "--config", str(config), f"--trainer.logger.init_args.save_dir={work / 'runs'}",
                     f"--trainer.default_root_dir={work}",
                     "--trainer.enable_progress_bar=false", *overrides])
    return time.perf_counter() - start


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="a config with evaluation callbacks")
    parser.add_argument("--steps", type=int, default=100, help="training steps of every run")
    parser.add_argument("--val-every", type=int, default=50, help="validate (and so evaluate) every this many steps")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each variant")
    args = parser.parse_args()

    config = yaml.safe_load(Path(args.config).read_text())
    callbacks = config["trainer"].get("callbacks", [])
    removed = [c["class_path"] for c in callbacks if c["class_path"] in EVALUATION]
    if not removed:
        raise SystemExit(f"{args.config}: no evaluation callback ({', '.join(EVALUATION)}) in trainer.callbacks")
    overrides = [f"--trainer.max_steps={args.steps}", f"--trainer.val_check_interval={args.val_every}"]
    with tempfile.TemporaryDirectory(prefix="eval_overhead-") as tmp:
        work = Path(tmp)
        without = work / "without.yaml"
        config["trainer"]["callbacks"] = [c for c in callbacks if c["class_path"] not in EVALUATION]
        without.write_text(yaml.safe_dump(config, sort_keys=False))
        # Untimed: fills the caches (generated pairs, encodings) and warms up imports and allocators.
        fit_seconds(without, work, ["--trainer.max_steps=1", "--trainer.limit_val_batches=0"])
        times: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(args.repeats):
            times["with"].append(fit_seconds(Path(args.config), work, overrides))
            times["without"].append(fit_seconds(without, work, overrides))
    with_s, without_s = statistics.median(times["with"]), statistics.median(times["without"])
    print(f"{args.config}: {args.steps} steps, validation every {args.val_every}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"  with evaluation ({', '.join(removed)}): {with_s:.1f} s  {[round(t, 1) for t in times['with']]}")
    print(f"  without:  {without_s:.1f} s  {[round(t, 1) for t in times['without']]}")
    evaluations = args.steps // args.val_every
    print(f"  ratio with / without: {with_s / without_s:.2f}; evaluation adds {with_s - without_s:.1f} s, "
          f"{(with_s - without_s) / evaluations:.1f} s per validation ({evaluations} validations)")


if __name__ == "__main__":
    main()
