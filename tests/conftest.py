"""Shared fixtures: everything builds tiny models from config and makes its own data (no downloads)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pair_files import BLUE, RED, solid

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def run_cli(tmp_path):
    """Run ``python -m lit_pref ...`` in a subprocess from the repo root; returns the CompletedProcess."""
    import subprocess

    def run(*args: str, env: dict | None = None, timeout: int = 300):
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "lit_pref", *args],
            cwd=REPO,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, f"lit_pref {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        return proc

    return run


def read_events(log_dir: Path):
    """An EventAccumulator over the single TensorBoard event file of ``log_dir``, fully loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(log_dir).glob("events.out.tfevents.*"))
    assert len(files) == 1, f"expected one event file in {log_dir}, found {files}"
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """A folder with a red ``a.png`` and a blue ``b.png``."""
    Image.fromarray(solid(RED)).save(tmp_path / "a.png")
    Image.fromarray(solid(BLUE)).save(tmp_path / "b.png")
    return tmp_path
