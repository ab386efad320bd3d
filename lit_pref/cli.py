"""The command line: LightningCLI for fit / validate / test / predict."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class LitPrefCLI(LightningCLI):
    """LightningCLI with class paths for model and data, and optimizers injected into the modules.

    ``model`` and ``data`` take ``class_path``/``init_args`` (any LightningModule / LightningDataModule);
    the module builds its own optimizer from its ``optimizer`` argument, so there is no top-level
    ``--optimizer``.
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
