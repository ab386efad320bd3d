"""Recorded dialogues as preference pairs: which rounds give pairs (and the count of those that do not), the batch
contract of PreferencePairDataModule, the Pick-a-Pic export, the reward model's satisfaction target and a reward model
trained straight from a dialogue file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from safetensors.torch import load_file

from conftest import read_events
from lit_pref.datamodules import DialogueDataModule, DialogueFormatError, PreferencePairDataset
from lit_pref.datamodules.dialogue_pairs import DialoguePairDataset
from lit_pref.__main__ import main
from lit_pref.modules.reward_model import RewardModel
from lit_pref.toy import make_toy_dialogues


def _image(path, value: int) -> None:
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


@pytest.fixture
def dialogue_file(tmp_path):
    """Two dialogues: 3 images chosen 2 (pairs), images without `chosen`, 1 image, no images, 2 images chosen 0."""
    for name, value in (("a", 0), ("b", 100), ("c", 200), ("d", 50), ("e", 150)):
        _image(tmp_path / f"{name}.png", value)
    lines = [
        {"dialogue_id": "x", "initial_prompt": "a watercolour fox in the snow", "turns": [
            {"round": 1, "images": ["a.png", "b.png", "c.png"], "chosen": 2, "user_feedback": "warmer",
             "satisfaction": 0.25},
            {"round": 2, "prompt": "a warm watercolour fox", "images": ["a.png", "b.png"], "user_feedback": ""},
            {"round": 3, "prompt": "p3", "images": ["a.png"], "chosen": 0, "user_feedback": ""},
            {"round": 4, "prompt": "p4", "user_feedback": "perfect"}]},
        {"dialogue_id": "y", "initial_prompt": "a lighthouse at dusk", "turns": [
            {"round": 1, "prompt": "a lighthouse at dusk, oil painting", "images": ["d.png", "e.png"], "chosen": 0,
             "user_feedback": "ok"}]},
    ]
    path = tmp_path / "dialogues.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_chosen_beats_each_unchosen_image_alternating_sides_and_rounds_without_pairs_are_counted(dialogue_file):
    data = DialoguePairDataset(dialogue_file, resolution=8)
    assert data.rounds_without_pairs == 3  # no `chosen`, one image, no images
    got = [(p.caption, p.image_0.rsplit("/", 1)[1], p.image_1.rsplit("/", 1)[1], p.label_0, p.satisfaction)
           for p in data.pairs]
    assert got == [
        ("a watercolour fox in the snow", "c.png", "a.png", 1.0, 0.25),  # round 1 has no prompt: initial_prompt
        ("a watercolour fox in the snow", "b.png", "c.png", 0.0, 0.25),
        ("a lighthouse at dusk, oil painting", "d.png", "e.png", 1.0, None),
    ]


def test_datamodule_yields_pairs_in_the_preference_pair_batch_contract_and_logs_the_count(dialogue_file, tmp_path):
    data = DialogueDataModule(str(dialogue_file), pairs=True, resolution=8, batch_size=3, shuffle=False)
    trainer = Trainer(logger=TensorBoardLogger(tmp_path, name="d", version=0), accelerator="cpu",
                      enable_progress_bar=False)
    data.trainer = trainer
    data.setup("fit")
    (batch,) = list(data.train_dataloader())
    assert batch["images_0"].shape == batch["images_1"].shape == (3, 3, 8, 8)
    assert batch["captions"][2] == "a lighthouse at dusk, oil painting"
    assert batch["label_0"].tolist() == [1.0, 0.0, 1.0]
    # image 0 of pair 0 is c.png (value 200), of pair 1 b.png (100), in [-1, 1]
    assert batch["images_0"][0].unique().tolist() == [pytest.approx(200 / 127.5 - 1)]
    assert batch["images_0"][1].unique().tolist() == [pytest.approx(100 / 127.5 - 1)]
    assert batch["satisfaction"][:2].tolist() == [0.25, 0.25] and math.isnan(batch["satisfaction"][2])
    assert data.rounds_without_pairs == 3
    trainer.logger.finalize("success")
    events = read_events(tmp_path / "d" / "version_0")
    assert [e.value for e in events.Scalars("data/dialogue_rounds_without_pairs")] == [3.0]


def test_a_missing_image_is_an_error_naming_file_and_line(dialogue_file, tmp_path):
    (tmp_path / "e.png").unlink()
    with pytest.raises(DialogueFormatError, match=r"dialogues.jsonl line 2: field 'turns\[0\].images\[1\]'"):
        DialoguePairDataset(dialogue_file)


def test_export_writes_pick_a_pic_parquet_that_preference_pair_datamodule_reads(dialogue_file, tmp_path, capsys):
    main(["dialogues-to-pairs", str(dialogue_file), str(tmp_path / "pairs")])
    assert "3 pairs written" in capsys.readouterr().out
    exported = PreferencePairDataset(str(tmp_path / "pairs"), resolution=8)
    direct = DialoguePairDataset(dialogue_file, resolution=8)
    a, b = (data.collate([data[i] for i in range(3)]) for data in (exported, direct))
    assert a["captions"] == b["captions"] and torch.equal(a["label_0"], b["label_0"])
    assert torch.equal(a["images_0"], b["images_0"]) and torch.equal(a["images_1"], b["images_1"])


def test_satisfaction_target_adds_the_weighted_squared_error_of_the_winners_sigmoid_score():
    torch.manual_seed(0)
    plain = RewardModel(clip_model="toy", hidden_dim=8)
    weighted = RewardModel(clip_model="toy", hidden_dim=8, satisfaction_weight=0.5)
    weighted.head.load_state_dict(plain.head.state_dict())
    images = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    batch = {"images_0": images[0], "images_1": images[1], "label_0": torch.tensor([1.0, 0.0, 1.0]),
             "captions": ["a", "b", "c"], "satisfaction": torch.tensor([0.2, 0.9, float("nan")])}
    base = plain._step(batch, "val")
    with torch.no_grad():
        s = plain(images[0][:2] / 2 + 0.5, ["a", "b"]), plain(images[1][1:2] / 2 + 0.5, ["b"])
    # winners: pair 0 image 0, pair 1 image 1; pair 2 recorded no satisfaction
    mse = ((torch.sigmoid(s[0][0]) - 0.2) ** 2 + (torch.sigmoid(s[1][0]) - 0.9) ** 2) / 2
    assert weighted._step(batch, "val").item() == pytest.approx(base.item() + 0.5 * mse.item(), rel=1e-5)
    del batch["satisfaction"]
    assert weighted._step(batch, "val").item() == pytest.approx(base.item(), rel=1e-6)


def test_reward_model_trains_straight_from_a_dialogue_file(tmp_path):
    make_toy_dialogues(tmp_path / "train.jsonl", 24, seed=0, save_images=True)
    data = DialogueDataModule(str(tmp_path / "train.jsonl"), pairs=True, resolution=32, batch_size=16)
    model = RewardModel(clip_model="toy", hidden_dim=16, export_dir=str(tmp_path / "export"), satisfaction_weight=0.1)
    trainer = Trainer(max_steps=3, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="rm", version=0),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      log_every_n_steps=1)
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    trainer.fit(model, data)
    assert any(not torch.equal(before[k], v) for k, v in model.head.state_dict().items())
    assert (tmp_path / "export" / "config.json").is_file()
    tags = read_events(tmp_path / "rm" / "version_0").Tags()["scalars"]
    assert {"train/loss", "train/satisfaction_mse", "data/dialogue_rounds_without_pairs"} <= set(tags)


def test_trajectory_dpo_dialogues_config_trains_the_policy_from_a_recorded_dialogue_file(tmp_path, run_cli):
    make_toy_dialogues(tmp_path / "train.jsonl", 8, seed=0, save_images=True)
    run_cli("fit", "--config", "configs/toy/trajectory_dpo_dialogues.yaml",
            "--data.init_args.train_path", str(tmp_path / "train.jsonl"), "--trainer.max_steps", "2",
            "--trainer.log_every_n_steps", "1",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"))
    run = tmp_path / "runs" / "toy_trajectory_dpo_dialogues" / "version_0"
    tags = set(read_events(run).Tags()["scalars"])
    assert {"train/loss", "data/dialogue_rounds_without_pairs"} <= tags
    lora = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    up = [v for k, v in lora.items() if "lora_B" in k or "lora.up" in k]
    assert up and any(v.abs().sum() > 0 for v in up)  # B starts at zero: two DPO steps on the dialogue pairs moved it
