"""A TensorBoard custom-scalars layout (TensorBoard's own ``custom_scalars`` plugin) that opens on what the methods
share: the win rate with its interval, reward means, loss and implicit accuracy."""

from __future__ import annotations

import re

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lit_pref.callbacks.reward_metrics import RewardMetrics, WinRate

CATEGORY = "lit_pref: results"


def layout(trainer: Trainer) -> dict[str, dict[str, list]]:
    """The layout in ``SummaryWriter.add_custom_scalars``'s format: a margin chart (value, low, high) per
    :class:`~lit_pref.callbacks.WinRate` scorer, then multiline charts (tags as regular expressions) of the reward means
    (:class:`~lit_pref.callbacks.RewardMetrics` scorers, trajectory collection, VCA-PPO rounds), the loss and the
    implicit accuracy (train and val)."""
    charts: dict[str, list] = {}
    for callback in trainer.callbacks:
        if isinstance(callback, WinRate):
            for name in callback.scorers:
                tag = f"eval/win_rate_vs_base/{name}"
                charts[f"win rate vs base: {name} (95% interval)"] = ["Margin", [tag, f"{tag}_low", f"{tag}_high"]]
    names = [re.escape(n) for c in trainer.callbacks if isinstance(c, RewardMetrics) for n in c.scorers]
    rewards = ([f"^eval/({'|'.join(names)})$"] if names else []) + [r"reward_(mean|total)$"]
    charts["reward means"] = ["Multiline", rewards]
    charts["loss"] = ["Multiline", [r"^(train|val)/loss$"]]
    charts["implicit accuracy"] = ["Multiline", [r"^(train|val)/implicit_acc$"]]
    return {CATEGORY: charts}


class TensorBoardLayout(Callback):
    """Write :func:`layout` to every TensorBoard logger when fit starts (rank 0). TensorBoard shows it on its
    "Custom Scalars" tab (``http://localhost:6006/#custom_scalars``). ``python -m lit_pref`` adds it to every run."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_custom_scalars(layout(trainer))
