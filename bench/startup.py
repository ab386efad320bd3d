"""Start-up of ``python -m lit_pref fit``: CPU and wall seconds from the command to the end of the first step, by phase.

    python bench/startup.py                              # the demo (configs/demo.yaml) and the `small` preset
    python bench/startup.py --targets demo --rounds 3 --trees /tmp/before .   # two checkouts, alternating

Each run is a child process with one thread (``OMP_NUM_THREADS=1``) that runs ``python -m lit_pref fit`` as a user
would, with a probe callback appended to the trainer's callbacks; the probe reads the child's CPU time
(``time.process_time``: the fair cost on a loaded machine) and its wall time at each phase and ends the process after
the first optimizer step. The phases:

* ``interpreter``: Python itself, to the first line of the child;
* ``imports``: ``lit_pref.__main__`` and ``lit_pref.cli`` (torch, Lightning, diffusers, transformers, peft, ...);
* ``cli``: parsing the config, building the model (weights and LoRA), the data module, the callbacks and the trainer,
  ``prepare_data``, up to the trainer's ``setup`` hook;
* ``fit setup``: ``setup`` to ``on_fit_start`` (data set scanning, the module's and callbacks' setup, optimizers);
* ``to first batch``: the callbacks' ``on_fit_start`` / ``on_train_start`` work and loading the first batch;
* ``first step``: the first optimizer step.

Targets: ``demo`` is ``configs/demo.yaml`` with the first 8 of its shipped training and validation pairs, copied
into the work folder, after an untimed first run that fills its encoding cache; ``small`` is
TrajectoryDPO on the ``small`` preset (an SD-like UNet) at 256 px, 2 pairs a step, LoRA rank 4, from a model folder
and a Pick-a-Pic parquet written beforehand (the settings of ``bench/vs_diffusers.py``).

``--trees`` compares checkouts: each is put first on ``PYTHONPATH`` (the current one runs as installed), so it needs
``lit_pref/callbacks`` and ``lit_pref/datamodules`` as links to its ``callbacks/`` and ``datamodules/``::

    mkdir /tmp/before && git archive HEAD~1 | tar -x -C /tmp/before
    ln -s ../callbacks /tmp/before/lit_pref/callbacks && ln -s ../datamodules /tmp/before/lit_pref/datamodules

Runs alternate their order each round. Printed: each run's phases as it ends, then the median over rounds of each
phase with its range.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:  # the timed child: nothing imported before this mark
    MARKS = {"interpreter": (time.process_time(), time.perf_counter())}
    import lit_pref.__main__
    import lit_pref.callbacks
    import lit_pref.cli
    from lightning.pytorch import Callback, LightningModule, Trainer

    MARKS["imports"] = (time.process_time(), time.perf_counter())

    class Probe(Callback):
        """Marks the phases and ends the process after the first optimizer step."""

        def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
            MARKS.setdefault("cli", (time.process_time(), time.perf_counter()))

        def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
            MARKS.setdefault("fit setup", (time.process_time(), time.perf_counter()))

        def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
                                 ) -> None:
            MARKS.setdefault("to first batch", (time.process_time(), time.perf_counter()))

        def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            MARKS["first step"] = (time.process_time(), time.perf_counter())
            print("STARTUP " + json.dumps({**MARKS, "callbacks": lit_pref.callbacks.__file__}), flush=True)
            os._exit(0)

else:  # the parent
    import shutil
    import statistics
    import subprocess
    import tempfile
    from pathlib import Path

    from jsonargparse import ActionConfigFile, ArgumentParser
    from vs_diffusers import lit_pref_config, write_data  # beside this file: the `small` target's model and data

    import pyarrow.parquet as pq

    from lit_pref.backbone import DiffusionBackbone
    from lit_pref.toy.pairs import SHIPPED_PAIRS

    REPO = Path(__file__).resolve().parents[1]
    PHASES = ("interpreter", "imports", "cli", "fit setup", "to first batch", "first step")
    ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def child_main() -> None:
    """``--child fit ARGS``: run ``python -m lit_pref fit ARGS --trainer.callbacks+=Probe``."""
    lit_pref.__main__.main(sys.argv[2:] + ["--trainer.callbacks+=__main__.Probe"])
    raise SystemExit("the run ended before its first optimizer step")


def run_child(args: list[str], tree: Path, work: Path) -> dict[str, tuple[float, float]]:
    """One timed run of ``fit ARGS`` with ``tree`` first on PYTHONPATH: CPU and wall seconds of each phase."""
    env = {**os.environ, **ENV}
    if tree != REPO:  # this checkout is what the editable install imports
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args], env=env, cwd=work,
                         capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("STARTUP ")]
    if not lines:
        raise RuntimeError(f"fit {' '.join(args)} (tree {tree}) printed no timings:\n{out.stdout[-2000:]}"
                           f"\n{out.stderr[-3000:]}")
    marks = json.loads(lines[0][len("STARTUP "):])
    if not Path(marks["callbacks"]).resolve().is_relative_to(tree):
        raise RuntimeError(f"--trees {tree}: the child imported lit_pref.callbacks from {marks['callbacks']}")
    previous, times = (0.0, start), {}
    for phase in PHASES:
        cpu, wall = marks[phase]
        times[phase] = (cpu - previous[0], wall - previous[1])
        previous = (cpu, wall)
    return times


def target_args(target: str, work: Path) -> list[str]:
    """The ``fit`` arguments of a target, its data and model written under ``work`` on first use (the demo's: the
    first 8 of its shipped training and validation pairs)."""
    if target == "demo":
        for split in ("train", "val"):
            if not (work / f"demo-{split}.parquet").is_file():
                pq.write_table(pq.read_table(SHIPPED_PAIRS / f"{split}.parquet").slice(0, 8),
                               work / f"demo-{split}.parquet")
        return ["fit", "--config", str(REPO / "configs/demo.yaml"), "--trainer.logger.init_args.save_dir",
                str(work / "runs"), "--data.init_args.train_path", str(work / "demo-train.parquet"),
                "--data.init_args.val_path", str(work / "demo-val.parquet")]
    if not (work / "small-model").is_dir():
        DiffusionBackbone(model="small").save_pretrained(work / "small-model")
        write_data(work / "small-data", pairs=8, resolution=256)
    config = lit_pref_config(work / "small.yaml", work / "small-model", work / "small-data", 256, 2, 1, None)
    return ["fit", "--config", str(config), "--trainer.default_root_dir", str(work)]  # its config.yaml goes there


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of the options below")
    parser.add_argument("--targets", nargs="+", default=["demo", "small"], choices=["demo", "small"],
                        help="what to start: the demo and/or the small preset")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each target and tree")
    parser.add_argument("--trees", nargs="+", default=[str(REPO)],
                        help="lit_pref checkouts to compare (each put first on PYTHONPATH; its lit_pref/callbacks "
                             "and lit_pref/datamodules must link to its callbacks/ and datamodules/)")
    args = parser.parse_args(argv)
    trees = [Path(t).resolve() for t in args.trees]
    for tree in trees:
        if tree != REPO and not (tree / "lit_pref/callbacks/__init__.py").is_file():
            raise SystemExit(f"--trees {tree}: no lit_pref/callbacks/__init__.py (link callbacks/ and datamodules/ "
                             "into lit_pref/ so that the checkout imports from PYTHONPATH)")
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    try:
        commands = {(target, tree): target_args(target, work) for target in args.targets for tree in trees}
        for target, tree in commands:
            if target == "demo":  # its first run fills the encoding cache
                run_child(commands[target, tree], tree, REPO)
        results: dict[tuple[str, Path], list[dict]] = {key: [] for key in commands}
        for round_ in range(args.rounds):
            for target, tree in (list(results) if round_ % 2 == 0 else list(results)[::-1]):
                times = run_child(commands[target, tree], tree, REPO)
                results[target, tree].append(times)
                print(f"round {round_} {target} {tree}: {sum(c for c, _ in times.values()):.2f} s CPU, "
                      f"{sum(w for _, w in times.values()):.2f} s wall to the end of the first step; CPU s by phase "
                      + ", ".join(f"{phase} {times[phase][0]:.2f}" for phase in PHASES), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    print(f"\nCPU seconds (wall in the last column), 1 thread, median (range) of {args.rounds} rounds\n")
    print("| target | tree | " + " | ".join(PHASES) + " | CPU to first step | wall to first step |")
    print("|---" * (len(PHASES) + 4) + "|")
    for (target, tree), runs in results.items():
        print(f"| {target} | {tree} | " + " | ".join(cell([r[p][0] for r in runs]) for p in PHASES)
              + f" | {cell([sum(c for c, _ in r.values()) for r in runs])}"
              + f" | {cell([sum(w for _, w in r.values()) for r in runs])} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main()
    else:
        main()
