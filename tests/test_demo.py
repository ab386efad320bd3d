"""What configs/demo.yaml promises (README "Quick start"): it trains on the toy world's shipped pairs, read by the
data module of users' own Pick-a-Pic-layout files; one win-rate evaluation on at least 96 held-out pairs, at the last
step; the training of configs/toy/dense_discounted_dpo_best_of_8.yaml; the encoders' cache last among the callbacks, so
one option moves it. The demo run itself: tests/test_cli.py; the shipped pairs: tests/test_shipped_pairs.py."""

from __future__ import annotations

import pytest

from conftest import REPO
from lit_pref.datamodules.prompts import read_prompts
from lit_pref.toy.pairs import SHIPPED_PAIRS
from test_configs import print_config


@pytest.fixture(scope="module")
def demo() -> dict:
    return print_config("--config", str(REPO / "configs/demo.yaml"))


def callback(config: dict, class_path: str) -> dict:
    (found,) = [c for c in config["trainer"]["callbacks"] if c["class_path"] == class_path]
    return found["init_args"]


def test_demo_trains_on_the_shipped_pairs_through_the_pick_a_pic_data_module(demo):
    data = demo["data"]
    assert data["class_path"] == "lit_pref.datamodules.PreferencePairDataModule"
    paths = {key: (REPO / data["init_args"][f"{key}_path"]).resolve() for key in ("train", "val")}
    assert paths == {key: SHIPPED_PAIRS / f"{key}.parquet" for key in ("train", "val")}
    assert data["init_args"]["resolution"] == 32  # the toy model's side: no resizing


def test_demo_judges_its_final_lora_once_on_at_least_96_held_out_pairs(demo):
    trainer = demo["trainer"]
    assert trainer["val_check_interval"] == trainer["max_steps"] and trainer["check_val_every_n_epoch"] is None
    win_rate = callback(demo, "lit_pref.callbacks.WinRate")
    assert win_rate["every_n_steps"] is None  # only after the one validation
    held_out = read_prompts(REPO / win_rate["prompts"])
    assert len(held_out) == 12 and len(held_out) * win_rate["num_images_per_prompt"] >= 96
    assert win_rate["num_inference_steps"] == 20 and list(win_rate["scorers"]) == ["hidden"]


def test_demo_trains_as_the_dense_best_of_8_recipe_on_its_pairs(demo):
    """The demo is configs/toy/dense_discounted_dpo_best_of_8.yaml's training (README's leaderboard), on the pairs
    that recipe generates (seed 0), shipped: the same model, optimizer, steps and batch size."""
    recipe = print_config("--config", str(REPO / "configs/toy/dense_discounted_dpo_best_of_8.yaml"))
    assert demo["model"] == recipe["model"] and demo["model"]["init_args"]["scheduler"] is None  # a constant lr
    assert demo["model"]["init_args"]["step_weights"]["init_args"]["gamma"] == 0.7
    assert demo["trainer"]["max_steps"] == recipe["trainer"]["max_steps"] == 400
    assert demo["data"]["init_args"]["batch_size"] == recipe["data"]["init_args"]["batch_size"] == 8


def test_demo_caches_encodings_in_its_last_callback_so_one_option_moves_the_cache(tmp_path):
    moved = print_config("--config", str(REPO / "configs/demo.yaml"), "--trainer.callbacks.cache_dir", str(tmp_path))
    assert moved["trainer"]["callbacks"][-1] == {"class_path": "lit_pref.callbacks.EncodingCache",
                                                 "init_args": {"cache_dir": str(tmp_path)}}
