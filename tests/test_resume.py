"""Exact resume: a run stopped and resumed (or killed with SIGKILL and resumed) ends where the uninterrupted
run ends, and a resumed epoch skips its consumed batches by index instead of reading them again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file

from conftest import REPO, read_events
from lit_pref.datamodules import (
    EpochSampler,
    PreferencePairDataset,
    ResumableLoader,
    SyntheticPreferenceDataModule,
    collate_pairs,
)
from dist_worker import NUM_PAIRS, fit, fit_args
from lit_pref.checkpointing import AtomicCheckpointIO

BATCH = 2  # 6 batches per epoch of NUM_PAIRS = 12
STEPS = 12  # two epochs


def checkpointing(dirpath: Path, every: int, save_last: bool = False) -> str:
    return "--trainer.callbacks+=" + json.dumps({
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(dirpath), "every_n_train_steps": every, "save_top_k": -1 if not save_last else 1,
                      "save_last": save_last}})


def run_args(run: Path, data: Path, *extra: str) -> list[str]:
    """TrajectoryDPO on the tiny backbone, 12 steps of 2 pairs, half the captions dropped (per-pair draws),
    TensorBoard logging every step into ``run``."""
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": str(run), "name": "tb"}}
    return fit_args(run, data, steps=STEPS, batch_size=BATCH, extra=[
        "--model.init_args.proportion_empty_prompts", "0.5",
        "--trainer.logger", json.dumps(logger), "--trainer.log_every_n_steps", "1", *extra])


def logged_losses(run: Path) -> dict[int, float]:
    versions = sorted((run / "tb").iterdir(), key=lambda p: int(p.name.split("_")[1]))
    return {e.step: e.value for e in read_events(versions[-1]).Scalars("train/loss")}


def lora(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "lora" / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs")
    SyntheticPreferenceDataModule(data_dir=str(path), num_pairs=NUM_PAIRS, num_val_pairs=0, resolution=16).prepare_data()
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data) -> Path:
    """12 steps in one go, with a checkpoint every 4 steps (step 4 is in the middle of the first epoch)."""
    run = tmp_path_factory.mktemp("uninterrupted")
    fit(run_args(run, data, checkpointing(run / "checkpoints", every=4)))
    return run


def test_fit_2n_equals_fit_n_plus_resume_n(uninterrupted, data, tmp_path):
    """Resumed from the mid-epoch checkpoint of step 4, the run logs the same losses at steps 4..11 and ends with
    the same LoRA, bit for bit, although the global RNG was reseeded in between: the noise, timesteps and
    caption drops are drawn per pair, and the data order is the sampler's."""
    torch.manual_seed(12345)
    cli = fit(run_args(tmp_path, data), ckpt_path=str(uninterrupted / "checkpoints" / "epoch=0-step=4.ckpt"))
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # the CLI's default
    full, resumed = logged_losses(uninterrupted), logged_losses(tmp_path)
    assert sorted(full) == list(range(STEPS)) and sorted(resumed) == list(range(4, STEPS))
    assert [resumed[s] for s in range(4, STEPS)] == [full[s] for s in range(4, STEPS)]
    a, b = lora(uninterrupted), lora(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = json.loads((uninterrupted / "steps_rank0.json").read_text())
    again = json.loads((tmp_path / "steps_rank0.json").read_text())
    assert [r["indices"] for r in again] == [r["indices"] for r in first[4:]]


def test_sigkill_mid_epoch_resumes_from_the_last_checkpoint_and_finishes(uninterrupted, data, tmp_path):
    """``python -m lit_pref fit`` with a checkpoint every step, killed with SIGKILL once one exists; then a save
    of ``last.ckpt`` is killed half-written; ``--ckpt_path last`` still resumes from the last complete
    checkpoint and ends where the uninterrupted run ends."""
    checkpoints = tmp_path / "checkpoints"
    args = ["fit", *run_args(tmp_path, data, checkpointing(checkpoints, every=1, save_last=True))]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "lit_pref", *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (checkpoints / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (tmp_path / "lora").exists()  # it never reached the end
    step = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert 1 <= step < STEPS - 1

    interrupted_save(checkpoints / "last.ckpt")
    newest = max(checkpoints.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name.startswith(".tmp-") and newest.name.endswith(".partial")  # a half-written last.ckpt

    proc = subprocess.run([sys.executable, "-m", "lit_pref", *args, "--ckpt_path", "last"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    resumed, full = logged_losses(tmp_path), logged_losses(uninterrupted)
    assert min(resumed) == step and max(resumed) == STEPS - 1  # went on from the checkpoint to the end
    assert [resumed[s] for s in sorted(resumed)] == pytest.approx([full[s] for s in sorted(resumed)], rel=1e-6)
    a, b = lora(uninterrupted), lora(tmp_path)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


class _FailWhenPickled:
    """Pickling it raises, as a full disk would in the middle of a save."""

    def __reduce__(self):
        raise OSError("disk full")


KILLED_SAVE = """
import os, signal, sys, torch
from lit_pref.checkpointing import AtomicCheckpointIO

class KillWhenPickled:  # pickling it kills the process: a SIGKILL in the middle of writing a checkpoint
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)

AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(1 << 16)}, "z": KillWhenPickled()}, sys.argv[1])
"""


def interrupted_save(path: Path) -> None:
    """In another process, start saving a checkpoint over ``path`` with AtomicCheckpointIO and die half-way.
    (A process, not os.fork: a forked child of this multi-threaded one can deadlock on a lock some thread held.)"""
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_atomic_checkpoint_io_leaves_the_old_file_or_the_new_one(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": _FailWhenPickled()}, path)
    assert torch.load(path, weights_only=True) == {"step": 1} and os.listdir(tmp_path) == ["last.ckpt"]
    interrupted_save(path)  # killed: nothing cleans up
    assert torch.load(path, weights_only=True) == {"step": 1}
    (partial,) = [p for p in os.listdir(tmp_path) if p != "last.ckpt"]
    assert partial.startswith(".tmp-") and partial.endswith(".partial") and "last" not in partial
    io.save_checkpoint({"step": 3}, path)
    assert torch.load(path, weights_only=True) == {"step": 3}


def test_a_pairs_draws_depend_on_the_seed_and_the_pair_only():
    """TrajectoryDPO's per-pair generators: the same pair draws the same numbers at any place in any batch,
    whatever the global RNG; other pairs and other seeds draw others."""
    from lit_pref.backbone import DiffusionBackbone
    from lit_pref.modules import TrajectoryDPO

    model = TrajectoryDPO(DiffusionBackbone.tiny(), seed=7)

    def draws(indices: list[int], seed: int = 7) -> list[torch.Tensor]:
        model.seed = seed
        torch.manual_seed(len(indices))  # the global RNG plays no part
        return [torch.rand(4, generator=g) for g in model.pair_generators(torch.tensor(indices))]

    a, b = draws([1, 2]), draws([2, 5, 1])
    assert torch.equal(a[0], b[2]) and torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[1]) and not torch.equal(draws([1], seed=8)[0], a[0])


# ---------------------------------------------------------------------------------------------- data order
class Probe(LightningModule):
    """Records the pairs of every training batch (and trains one number, so the loop runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["indices"].tolist())
        return (self.w - batch["images_0"].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def probe_fit(data: Path, root: Path, steps: int, ckpt_path: str | None = None, callbacks=()) -> Probe:
    model = Probe()
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root, callbacks=list(callbacks))
    dm = SyntheticPreferenceDataModule(data_dir=str(data), num_pairs=NUM_PAIRS, num_val_pairs=0, resolution=16,
                                       batch_size=BATCH)
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("resume_step", [4, 6], ids=["mid_epoch", "end_of_epoch"])
def test_resumed_epoch_skips_consumed_batches_without_reading_them(data, tmp_path, monkeypatch, recwarn, resume_step):
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    full = probe_fit(data, tmp_path, STEPS, callbacks=[checkpoints]).seen
    assert sorted(i for batch in full[:6] for i in batch) == list(range(NUM_PAIRS))  # epoch 1: every pair once
    assert full[6:] != full[:6]  # epoch 2: another order

    decoded: list[int] = []
    decode = PreferencePairDataset._decode_pair
    monkeypatch.setattr(PreferencePairDataset, "_decode_pair", lambda self, row: decoded.append(row) or decode(self, row))
    resumed = probe_fit(data, tmp_path, STEPS, ckpt_path=str(tmp_path / f"epoch=0-step={resume_step}.ckpt")).seen
    assert resumed == full[resume_step:]
    trained = [i for batch in resumed for i in batch]
    assert decoded[:len(trained)] == trained  # the first image read is the first pair trained on
    assert len(decoded) <= len(trained) + BATCH  # at most one batch read ahead, none replayed
    assert not [w for w in recwarn if "not resumable" in str(w.message)]  # Lightning sees a resumable loader


def test_mid_epoch_state_refuses_another_data_order(data):
    dm = SyntheticPreferenceDataModule(data_dir=str(data), num_pairs=NUM_PAIRS, num_val_pairs=0, resolution=16,
                                       batch_size=BATCH)
    dm.setup("fit")
    state = {"epoch": 3, "start": 4, "num_replicas": 2, "seed": 0, "dataset_size": NUM_PAIRS}
    loader = ResumableLoader(dm.train_dataset, EpochSampler(dm.train_dataset, num_replicas=2, rank=1), batch_size=2,
                             collate_fn=collate_pairs)
    loader.load_state_dict(state)
    two_processes = [i for batch in loader for i in batch["indices"].tolist()]
    assert loader.sampler.epoch == 3 and len(two_processes) == NUM_PAIRS // 2 - 4  # rank 1's share, 4 skipped
    with pytest.raises(ValueError, match="2 process"):
        ResumableLoader(dm.train_dataset, EpochSampler(dm.train_dataset)).load_state_dict(state)
    loader = ResumableLoader(dm.train_dataset, EpochSampler(dm.train_dataset))
    loader.load_state_dict({**state, "start": 0})  # an epoch boundary: any data order may follow
    assert loader.sampler.epoch == 3
