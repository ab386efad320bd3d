"""What a fit run prints when it ends: the win rate against the base, where the run is, how to look at it."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from lit_pref.callbacks.reward_metrics import WinRate


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working folder when it lies below it, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def command(name: str) -> str:
    """``name`` as installed beside the running Python (``.venv/bin/<name>``), else the bare name."""
    path = Path(sys.executable).parent / name
    return shown_path(path) if path.exists() else name


def verdict(low: float, high: float) -> str:
    """What the 95% interval says about a win rate against 50%."""
    if low > 0.5:
        return "better than the base"
    if high < 0.5:
        return "worse than the base"
    return "the interval holds 50%: no difference shown"


def summary(trainer: Trainer, seconds: float | None = None, run: str | None = None) -> str:
    """The end-of-run text: steps (and time), the last win rate of every :class:`~lit_pref.callbacks.WinRate` scorer with its
    interval and counts, the run folder with its LoRA and last checkpoint, and the commands to view and compare.

    Args:
        trainer: The trainer whose fit ended.
        seconds: The fit's wall time, if known.
        run: The run folder; ``None``: ``trainer.log_dir`` (a collective in a distributed run: there, read it on
            every process and pass it in).
    """
    lines = [f"Finished fit: {trainer.global_step} steps" + (f" in {seconds / 60:.1f} min" if seconds else "") + "."]
    for callback in trainer.callbacks:
        if isinstance(callback, WinRate):
            for name, r in callback.results.items():
                lines.append(f"Win rate vs base ({name}): {r.rate:.1%}, 95% interval [{r.low:.1%}, {r.high:.1%}] on "
                             f"{r.n} pairs at step {callback.results_step} ({r.wins} wins, {r.ties} ties, "
                             f"{r.losses} losses): {verdict(r.low, r.high)}.")
    run = trainer.log_dir if run is None else run
    if run:
        lines.append(f"Run folder: {shown_path(run)}")
        for name in ("lora", "lora_best"):
            if (Path(run) / name).is_dir():
                lines.append(f"  {name + '/':<11}{shown_path(Path(run) / name)}")
        last = getattr(trainer.checkpoint_callback, "last_model_path", "")
        if last:
            lines.append(f"  {'last.ckpt':<11}{shown_path(last)}")
        lines.append(f"View:    {command('tensorboard')} --logdir {shown_path(run)}   (then open "
                     "http://localhost:6006/#custom_scalars)")
        lines.append(f"Compare: {command('python')} -m lit_pref compare {shown_path(Path(run).parent)}   (every "
                     "version of this run)")
    return "\n".join(lines)


class RunSummary(Callback):
    """Print :func:`summary` when fit ends (rank 0). ``python -m lit_pref`` adds it to every run."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run = trainer.log_dir  # on every process: in a distributed run it is a broadcast from rank 0
        if trainer.is_global_zero:
            seconds = time.monotonic() - self._start if self._start is not None else None
            print("\n" + summary(trainer, seconds, run), flush=True)
