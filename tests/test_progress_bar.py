"""The progress bar of ``lit_pref fit``: a run bounded by ``max_steps`` alone no longer reads "Epoch N/-2"."""

from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from lit_pref.callbacks import StepProgressBar

REPO = Path(__file__).resolve().parents[1]


def _printed(**trainer_kwargs) -> str:
    """What the bar printed over a real two- or three-step fit."""
    bar = StepProgressBar(console_kwargs={"record": True, "force_terminal": True, "width": 160})
    trainer = Trainer(callbacks=[bar], logger=False, enable_checkpointing=False, enable_model_summary=False,
                      limit_val_batches=0, **trainer_kwargs)
    trainer.fit(BoringModel())
    return bar._console.export_text()


def test_a_step_bounded_run_names_its_step_limit_not_a_negative_epoch():
    text = _printed(max_steps=3)
    assert "Epoch 0 · step limit 3" in text
    assert "/-2" not in text  # Lightning's own bar: max_epochs - 1 with max_epochs = -1


def test_an_epoch_bounded_run_keeps_lightnings_title():
    text = _printed(max_epochs=2, limit_train_batches=2)
    assert "Epoch 1/1" in text and "step limit" not in text


@pytest.mark.parametrize("extra, expected", [
    ([], StepProgressBar),
    (["--trainer.enable_progress_bar", "false"], type(None)),
    (["--trainer.callbacks", "lightning.pytorch.callbacks.TQDMProgressBar"], TQDMProgressBar),
])
def test_the_cli_adds_the_bar_unless_told_otherwise(tmp_path, monkeypatch, extra, expected):
    from lit_pref.cli import LitPrefCLI

    monkeypatch.chdir(REPO)  # the config names its prompt files relative to the repository

    args = ["--config", str(REPO / "configs" / "toy" / "trajectory_dpo.yaml"), "--model.init_args.backbone.init_args.model", "tiny",
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
            "--data", "lit_pref.datamodules.SyntheticPreferenceDataModule", "--data.data_dir", str(tmp_path / "d"),
            *extra]
    trainer = LitPrefCLI(args=args, run=False).trainer
    assert type(trainer.progress_bar_callback) is expected
    assert sum(isinstance(c, (StepProgressBar, TQDMProgressBar)) for c in trainer.callbacks) == (expected is not type(None))
