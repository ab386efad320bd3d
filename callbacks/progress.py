"""The progress bar of every ``lit_pref fit``: Lightning's rich bar, whose title makes sense for a run that is
limited by ``trainer.max_steps`` alone."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's :class:`~lightning.pytorch.callbacks.RichProgressBar`, except its title. Lightning titles the bar
    "Epoch N/M" with M = ``max_epochs - 1``; a run bounded by ``max_steps`` only has ``max_epochs = -1``, so the bar
    read "Epoch 12/-2". Such a run's bar reads "Epoch 12 · step limit 400" instead; runs bounded by epochs keep
    Lightning's title."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch} · step limit {trainer.max_steps}"
        return f"{description:{len(self.validation_description)}}"
