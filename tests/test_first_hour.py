"""What a new user meets first: the top-level help, short class names, one-line errors, thread defaults,
``last.ckpt`` holding the final state, the end-of-run summary, file modes, the TensorBoard layout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import TensorBoardLogger

from lit_pref.callbacks.run_summary import summary
from lit_pref.callbacks.tensorboard_layout import TensorBoardLayout
from conftest import REPO
from lit_pref import __main__ as entry
from lit_pref.checkpointing import FinalLastCheckpoint
from lit_pref.io import atomic_dir, atomic_file
from lit_pref.threads import default_threads, free_cores


def test_top_level_help_lists_every_subcommand_with_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        entry.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m lit_pref ") and "__main__" not in out
    for name in entry.SUBCOMMANDS:
        line = next(line for line in out.splitlines() if line.startswith(f"  {name} "))
        assert len(line.split()) > 3, line  # a name and a sentence


def test_threads_option_is_taken_out_of_the_command_line():
    words = ["fit", "--threads", "3", "--config", "x.yaml"]
    assert entry.pop_threads(words) == 3 and words == ["fit", "--config", "x.yaml"]
    words = ["--threads=2", "compare", "runs"]
    assert entry.pop_threads(words) == 2 and words == ["compare", "runs"]
    with pytest.raises(SystemExit, match="positive integer"):
        entry.pop_threads(["fit", "--threads", "0"])


def test_default_threads_are_the_free_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert free_cores() == 1  # 4 cores, about 3 busy
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert free_cores() == 1  # never below one
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert default_threads() == 2


def cli(*args: str) -> None:
    from lit_pref.cli import LitPrefCLI

    LitPrefCLI(args=list(args))


def test_fit_help_names_the_methods_and_data_modules(capsys):
    with pytest.raises(SystemExit):
        cli("fit", "--help")
    out = " ".join(capsys.readouterr().out.split())
    assert "usage: python -m lit_pref [options] fit" in out
    for name in ("TrajectoryDPO", "DenseDiscountedDPO", "RichPreferenceDPO", "VCAPPO", "ToyPreferenceDataModule",
                 "PreferencePairDataModule", "PromptDataModule"):
        assert name in out, name


def test_short_class_names_work_for_help(capsys):
    with pytest.raises(SystemExit) as stop:
        cli("fit", "--model.help", "TrajectoryDPO")
    assert stop.value.code == 0 and "--model.backbone" in capsys.readouterr().out


def test_a_misspelt_key_prints_the_error_first_in_a_few_lines(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lit_pref"])  # as on a command line: no warning about pytest's own arguments
    with pytest.raises(SystemExit) as stop:
        cli("fit", "--config", "configs/demo.yaml", "--trainer.max_stpes", "3")
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert err[0].startswith("error:") and "trainer.max_stpes" in err[0] and len(err) <= 3, err


def test_a_missing_data_path_stops_before_any_model_is_built_and_leaves_no_run_folder(tmp_path, monkeypatch):
    from lit_pref.backbone import DiffusionBackbone

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the data path was checked")

    monkeypatch.setattr(DiffusionBackbone, "__init__", refuse)
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit, match=r"data.init_args.train_path: no such file or folder: .*nowhere.parquet"):
        cli("fit", "--config", "configs/toy/trajectory_dpo.yaml", "--data", "PreferencePairDataModule",
            "--data.train_path", str(tmp_path / "nowhere.parquet"), "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


class WorseningModel(BoringModel):
    """Its validation loss grows with every step, so only the first validation is a ModelCheckpoint's best."""

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.trainer.global_step))


def fit(tmp_path: Path, callbacks: list) -> ModelCheckpoint:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/loss", save_last=True)
    trainer = Trainer(max_steps=4, val_check_interval=2, limit_val_batches=1, callbacks=[checkpoint, *callbacks],
                      logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(WorseningModel())
    return checkpoint


def test_last_ckpt_holds_the_final_step_when_the_monitored_metric_got_worse(tmp_path):
    plain = fit(tmp_path / "plain", [])
    assert torch.load(plain.last_model_path, weights_only=False)["global_step"] == 2  # Lightning's own: not the end
    fixed = fit(tmp_path / "fixed", [FinalLastCheckpoint()])
    assert Path(fixed.last_model_path).name == "last.ckpt"
    assert torch.load(fixed.last_model_path, weights_only=False)["global_step"] == 4
    assert torch.load(fixed.best_model_path, weights_only=False)["global_step"] == 2


def test_layout_and_summary_of_a_run_without_win_rate(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    logger = TensorBoardLogger(tmp_path, name="boring")
    trainer = Trainer(max_steps=2, limit_val_batches=1, logger=logger, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[TensorBoardLayout()], default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    logger.experiment.flush()
    events = EventAccumulator(str(logger.log_dir), size_guidance={"tensors": 0})
    events.Reload()
    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: chart for chart in layout.category[0].chart}
    assert list(charts) == ["reward means", "loss", "implicit accuracy"]  # no WinRate: no margin chart
    assert list(charts["loss"].multiline.tag) == [r"^(train|val)/loss$"]
    text = summary(trainer)
    assert "Win rate" not in text and "Run folder:" in text and f"--logdir {logger.log_dir}" in text


def test_outputs_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "file") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "weights").write_text("x")
            os.chmod(tmp / "weights", 0o600)  # as diffusers writes its LoRA files
    finally:
        os.umask(old)
    assert (tmp_path / "file").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder" / "weights").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
