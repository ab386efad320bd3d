"""What configs/demo.yaml promises (README "Quick start"): one win-rate evaluation on at least 96 held-out pairs, at
the last step; a learning rate that decays to zero exactly there; the encoders' cache last among the callbacks, so
one option moves it. The demo run itself: tests/test_cli.py."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import REPO
from lit_pref.datamodules.prompts import read_prompts
from test_configs import print_config


@pytest.fixture(scope="module")
def demo() -> dict:
    return print_config("--config", str(REPO / "configs/demo.yaml"))


def callback(config: dict, class_path: str) -> dict:
    (found,) = [c for c in config["trainer"]["callbacks"] if c["class_path"] == class_path]
    return found["init_args"]


def test_demo_judges_its_final_lora_once_on_at_least_96_held_out_pairs(demo):
    trainer = demo["trainer"]
    assert trainer["val_check_interval"] == trainer["max_steps"] and trainer["check_val_every_n_epoch"] is None
    win_rate = callback(demo, "lit_pref.callbacks.WinRate")
    assert win_rate["every_n_steps"] is None  # only after the one validation
    held_out = read_prompts(REPO / win_rate["prompts"])
    assert len(held_out) == 12 and len(held_out) * win_rate["num_images_per_prompt"] >= 96
    assert win_rate["num_inference_steps"] == 20 and list(win_rate["scorers"]) == ["hidden"]


def test_demo_learning_rate_halves_midway_and_reaches_zero_at_the_last_step(demo):
    """Cosine decay: lr_k = lr_0 (1 + cos(pi k / T)) / 2 with T = max_steps: lr_0 / 2 at k = T / 2, 0 at k = T."""
    model, steps = demo["model"]["init_args"], demo["trainer"]["max_steps"]
    scheduler = model["scheduler"]
    assert scheduler["class_path"] == "torch.optim.lr_scheduler.CosineAnnealingLR"
    lr0 = model["optimizer"]["init_args"]["lr"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr0)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **scheduler["init_args"])
    lrs = [lr0]
    for _ in range(steps):
        optimizer.step()
        decay.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[steps // 2] == pytest.approx(lr0 / 2, rel=1e-9)
    assert lrs[steps] == pytest.approx(0.0, abs=1e-12)
    assert min(lrs[:steps]) > 0  # no step of training at a zero learning rate
    assert lrs[1] == pytest.approx(lr0 * (1 + math.cos(math.pi / steps)) / 2, rel=1e-9)


def test_demo_caches_encodings_in_its_last_callback_so_one_option_moves_the_cache(tmp_path):
    moved = print_config("--config", str(REPO / "configs/demo.yaml"), "--trainer.callbacks.cache_dir", str(tmp_path))
    assert moved["trainer"]["callbacks"][-1] == {"class_path": "lit_pref.callbacks.EncodingCache",
                                                 "init_args": {"cache_dir": str(tmp_path)}}
