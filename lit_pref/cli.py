"""The command line of ``fit``, ``validate``, ``test`` and ``predict``: LightningCLI (jsonargparse), with the errors
of every other subcommand (:mod:`lit_pref.commands`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import Namespace, lazy_instance
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

# Imported so that their classes are known subclasses: ``--model TrajectoryDPO`` and ``--model.help TrajectoryDPO``
# resolve short names, and ``fit --help`` can list them.
from lit_pref import callbacks
from lit_pref import datamodules
import lit_pref.modules
from lit_pref.callbacks.progress import StepProgressBar
from lit_pref.callbacks.run_summary import RunSummary
from lit_pref.callbacks.tensorboard_layout import TensorBoardLayout
from lit_pref.checkpointing import AtomicCheckpointIO, FinalLastCheckpoint
from lit_pref.commands import PROG, exit_with_error

LOG_DIR = "runs"  # save_dir of the default logger
# ckpt_path values Lightning resolves itself (not files)
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def _class_names(package: Any, base: type) -> list[str]:
    """Names of the ``base`` subclasses that ``package`` exports."""
    return sorted(n for n in dir(package) if isinstance(getattr(package, n), type) and issubclass(getattr(package, n), base)
                  and getattr(package, n) is not base)


def fit_description() -> str:
    """``fit --help``'s description: the methods and data modules by the short names ``--model``/``--data`` take."""
    methods = _class_names(lit_pref.modules, LightningModule)
    data = _class_names(datamodules, LightningDataModule)
    return (f"Train a model. Methods (--model NAME): {', '.join(methods)}. Data modules (--data NAME): "
            f"{', '.join(data)}. Callbacks: {', '.join(callbacks.__all__)} (lit_pref.callbacks.NAME). The toy "
            f"world's data and pre-training modules go by class path (--data lit_pref.toy.ToyPreferenceDataModule). "
            f"`{PROG} fit --model.help NAME` lists a class's options; configs/ holds a recipe of each method.")


class LitPrefArgumentParser(LightningArgumentParser):
    """LightningCLI's parser; a parse error prints one line (the key, the value and why; a class path that cannot
    be imported names both) and a pointer to ``--help``, not the whole usage. Parsers it makes for
    ``--model.help NAME`` are named ``python -m lit_pref`` too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prog", PROG)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        exit_with_error(getattr(ex, "subcommand_parser", None) or self, message)


class LitPrefCLI(LightningCLI):
    """LightningCLI with class paths for model and data, and optimizers injected into the modules.

    ``model`` and ``data`` take ``class_path``/``init_args`` (any LightningModule / LightningDataModule; lit_pref's
    own also by their short name); the module builds its own optimizer from its ``optimizer`` argument, so there is
    no top-level ``--optimizer``. Checkpoint files are written atomically
    (:class:`lit_pref.checkpointing.AtomicCheckpointIO`) unless ``trainer.plugins`` names another ``CheckpointIO``;
    ``last.ckpt`` always holds the final state (:class:`lit_pref.checkpointing.FinalLastCheckpoint`). Data paths
    (``data.init_args.path`` / ``*_path``) and ``ckpt_path`` are checked before anything is built, so a wrong path
    costs no model load and leaves no run folder. Every run writes a TensorBoard layout (:class:`lit_pref.callbacks.TensorBoardLayout`) and ends with a
    summary (:class:`lit_pref.callbacks.RunSummary`); its progress bar, unless ``trainer.callbacks`` names one or
    ``trainer.enable_progress_bar`` is false, is :class:`lit_pref.callbacks.StepProgressBar`. The logger is TensorBoard under ``runs/`` unless
    ``trainer.logger`` names another (or ``false``); a config sets only the run's folder name,
    ``trainer.logger.init_args.name``, so runs land in ``runs/<name>/version_N``.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_class=LitPrefArgumentParser,
            parser_kwargs={"prog": PROG, "fit": {"description": fit_description()}},
            trainer_defaults={"callbacks": [FinalLastCheckpoint(), TensorBoardLayout(), RunSummary()],
                              "logger": lazy_instance(TensorBoardLogger, save_dir=LOG_DIR)},
            args=args,
            run=run,
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        missing = missing_paths(config)
        if missing:
            raise SystemExit("error: " + "; ".join(f"{key}: no such file or folder: {value}" for key, value in missing))

    def _trainer_list(self, kwargs: dict[str, Any], key: str) -> list[Any]:
        """The trainer's ``key`` (``plugins``, ``callbacks``) as a list: from ``kwargs`` if given, else the config."""
        value = kwargs.get(key, self._get(self.config_init, f"trainer.{key}")) or []
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plugins = self._trainer_list(kwargs, "plugins")
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        callback_list = self._trainer_list(kwargs, "callbacks")
        wants_bar = self._get(self.config_init, "trainer.enable_progress_bar") is not False
        if wants_bar and not any(isinstance(c, ProgressBar) for c in callback_list):
            kwargs["callbacks"] = [*callback_list, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)


def missing_paths(config: Namespace) -> list[tuple[str, str]]:
    """``(key, value)`` of every local path in ``config`` that does not exist: ``data.init_args.path`` and
    ``data.init_args.*_path`` (input data) and ``ckpt_path`` (unless one of Lightning's names such as ``last``)."""
    found = []
    data = config.get("data")
    init_args = data.get("init_args") if isinstance(data, Namespace) else None
    if isinstance(init_args, Namespace):
        for key, value in vars(init_args).items():  # the data module's own arguments, not nested class paths
            if (key == "path" or key.endswith("_path")) and key != "class_path" and isinstance(value, str):
                found.append((f"data.init_args.{key}", value))
    ckpt = config.get("ckpt_path")
    if isinstance(ckpt, str) and ckpt not in SPECIAL_CKPT_PATHS and not ckpt.startswith("registry:"):
        found.append(("ckpt_path", ckpt))
    return [(key, value) for key, value in found if "://" not in value and not Path(value).exists()]


def _run(subcommand: str, argv: list[str]) -> None:
    """``LitPrefCLI`` on ``subcommand`` and ``argv``; from the command line (``sys.argv`` holds these words) it reads
    ``sys.argv`` itself, since LightningCLI warns when given both."""
    words = [subcommand, *argv]
    LitPrefCLI(args=None if sys.argv[1:] == words else words)


def fit(argv: list[str]) -> None:
    """``python -m lit_pref fit ...``: train (LightningCLI's ``fit``)."""
    _run("fit", argv)


def validate(argv: list[str]) -> None:
    """``python -m lit_pref validate ...``: LightningCLI's ``validate``."""
    _run("validate", argv)


def test(argv: list[str]) -> None:
    """``python -m lit_pref test ...``: LightningCLI's ``test``."""
    _run("test", argv)


def predict(argv: list[str]) -> None:
    """``python -m lit_pref predict ...``: LightningCLI's ``predict``."""
    _run("predict", argv)
