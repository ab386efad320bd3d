"""The command line: LightningCLI for fit / validate / test / predict."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from lit_pref.checkpointing import AtomicCheckpointIO


class LitPrefCLI(LightningCLI):
    """LightningCLI with class paths for model and data, and optimizers injected into the modules.

    ``model`` and ``data`` take ``class_path``/``init_args`` (any LightningModule / LightningDataModule);
    the module builds its own optimizer from its ``optimizer`` argument, so there is no top-level
    ``--optimizer``. Checkpoint files are written atomically (:class:`lit_pref.checkpointing.AtomicCheckpointIO`)
    unless ``trainer.plugins`` names another ``CheckpointIO``.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plugins = kwargs.get("plugins", self._get(self.config_init, "trainer.plugins")) or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)
