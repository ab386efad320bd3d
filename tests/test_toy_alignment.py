"""Toy preference pairs from the base model and the hidden human, and alignment that the hidden human sees."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
import torch
from lightning.pytorch import Trainer

from datamodules import ToyPreferenceDataModule, toy_prompts
from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiffusionDPOLoss
from lit_pref.modules import TrajectoryDPO
from lit_pref.rewards import ToyGroundTruthReward, win_rate


def test_toy_pairs_are_labelled_by_the_hidden_reward_and_cached(tmp_path):
    kwargs = dict(data_dir=str(tmp_path / "pairs"), num_pairs=6, num_val_pairs=2, num_inference_steps=4,
                  temperature=0.0, batch_size=3)
    data = ToyPreferenceDataModule(**kwargs)
    data.prepare_data()
    table = pq.read_table(tmp_path / "pairs" / "train.parquet").to_pylist()
    assert len(table) == 6 and set(r["caption"] for r in table) <= set(toy_prompts("train"))
    for row in table:  # temperature 0: the higher hidden reward always wins
        expected = 0.5 if row["reward_0"] == row["reward_1"] else float(row["reward_0"] > row["reward_1"])
        assert row["label_0"] == expected
    val = pq.read_table(tmp_path / "pairs" / "val.parquet").column("caption").to_pylist()
    assert set(val) <= set(toy_prompts("heldout"))

    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["images_0"].shape == (3, 3, 32, 32) and len(batch["captions"]) == 3

    mtime = os.stat(tmp_path / "pairs" / "train.parquet").st_mtime_ns
    ToyPreferenceDataModule(**kwargs).prepare_data()
    assert os.stat(tmp_path / "pairs" / "train.parquet").st_mtime_ns == mtime  # cached
    ToyPreferenceDataModule(**{**kwargs, "temperature": 0.5}).prepare_data()
    assert os.stat(tmp_path / "pairs" / "train.parquet").st_mtime_ns != mtime  # rebuilt for new parameters
