"""The DPO-trained reward model: the Bradley-Terry loss by hand; trained on toy pairs it ranks held-out pairs well
above chance; its saved folder loads as a scorer that gives the module's scores; its patch-grid features by hand."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from conftest import read_events
from lit_pref.datamodules import PreferencePairDataModule
from lit_pref.toy import BradleyTerryLabeller, ToyGroundTruthReward, render, sample_scene
from lit_pref.formats.pairs import PAIR_SCHEMA, write_pairs_parquet
from lit_pref.datamodules.synthetic import COLOURS, SHAPES, random_placement
from lit_pref.toy.world import Scene
from lit_pref.losses import bradley_terry_loss
from lit_pref.modules import RewardModel
from lit_pref.rewards import RewardModelScorer
from lit_pref.rewards.clip_score import clip_preprocess
from lit_pref.rewards.reward_model import clip_image_features


def test_bradley_terry_loss_by_hand():
    s_w = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
    s_l = torch.tensor([0.0, 0.0, 0.5])
    loss, stats = bradley_terry_loss(s_w, s_l, beta=2.0)
    # -log sigmoid(2 * d) for d = 1, 0, -1.5, averaged.
    expected = sum(math.log1p(math.exp(-2.0 * d)) for d in (1.0, 0.0, -1.5)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["accuracy"].item() == pytest.approx((1 + 0.5 + 0) / 3)  # equal scores count 0.5
    assert stats["margin"].item() == pytest.approx((1.0 + 0.0 - 1.5) / 3)
    loss.backward()
    # d/ds_w of -log sigmoid(2 d) / 3 = -2 sigmoid(-2 d) / 3.
    expected_grad = [-2 * (1 / (1 + math.exp(2.0 * d))) / 3 for d in (1.0, 0.0, -1.5)]
    assert s_w.grad.tolist() == pytest.approx(expected_grad, rel=1e-5)


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _toy_pairs(n: int, seed: int) -> tuple[pa.Table, list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rendered toy pairs of one caption: half show the caption twice at two random positions (the hidden human
    prefers the more centred one), half show it once and a scene with another colour or shape. Labelled by the
    noiseless hidden human; differences of at most 0.05 are ties. Image order is random."""
    rng = np.random.default_rng(seed)
    captions, first, second = [], [], []
    for _ in range(n):
        scene = sample_scene(rng)
        colour, shape = scene.colour, scene.shape
        if rng.random() < 0.5:
            if rng.random() < 0.5:
                colour = str(rng.choice([c for c in COLOURS if c != colour]))
            else:
                shape = str(rng.choice([s for s in SHAPES if s != shape]))
        side, center = random_placement(rng, 32, size_class=scene.size)
        other = Scene(colour, shape, scene.size, scene.background, side, center)
        images = [torch.from_numpy(render(s)).permute(2, 0, 1).float() / 255 for s in (scene, other)]
        if rng.random() < 0.5:
            images.reverse()
        captions.append(scene.caption)
        first.append(images[0])
        second.append(images[1])
    images_0, images_1 = torch.stack(first), torch.stack(second)
    labels = BradleyTerryLabeller(ToyGroundTruthReward(), temperature=0.0, tie_margin=0.05).label(images_0, images_1,
                                                                                                 captions)
    table = pa.table({"caption": captions, "jpg_0": [_png(x) for x in images_0], "jpg_1": [_png(x) for x in images_1],
                      "label_0": labels.double().tolist()}, schema=PAIR_SCHEMA)
    return table, captions, images_0, images_1, labels


def test_reward_model_trained_on_toy_pairs_ranks_held_out_pairs_well_above_chance(tmp_path):
    torch.manual_seed(0)
    train, *_ = _toy_pairs(256, seed=0)
    write_pairs_parquet(train, tmp_path / "train.parquet")
    val, captions, images_0, images_1, labels = _toy_pairs(256, seed=1)
    write_pairs_parquet(val, tmp_path / "val.parquet")
    data = PreferencePairDataModule(str(tmp_path / "train.parquet"), val_path=str(tmp_path / "val.parquet"),
                                    resolution=32, batch_size=64)
    model = RewardModel(clip_model="toy", hidden_dim=64,
                        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-4))
    trainer = Trainer(max_epochs=6, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="rm", version=0),
                      enable_checkpointing=True, enable_progress_bar=False, enable_model_summary=False,
                      log_every_n_steps=2, default_root_dir=tmp_path, num_sanity_val_steps=0,
                      check_val_every_n_epoch=6)
    trainer.fit(model, data)
    events = read_events(tmp_path / "rm" / "version_0")
    for tag in ("train/loss", "train/accuracy", "train/margin", "train/ties_dropped", "val/loss", "val/accuracy"):
        assert tag in events.Tags()["scalars"], tag

    # The exported folder loads as a scorer with the module's scores.
    scorer = RewardModelScorer(str(tmp_path / "rm" / "version_0" / "reward_model"))
    s0, s1 = scorer.score(images_0, captions), scorer.score(images_1, captions)
    with torch.no_grad():
        assert torch.allclose(s0, model.cpu()(images_0, captions), atol=1e-5)
    decided = labels != 0.5
    correct = int(((s0 > s1) == (labels == 1.0))[decided].sum())
    n = int(decided.sum())
    # Chance (a coin per pair) reaches `correct` of n with probability below 1e-6.
    tail = sum(math.comb(n, k) for k in range(correct, n + 1)) / 2**n
    assert tail < 1e-6, (correct, n)
    assert n >= 150  # most held-out pairs are decided (not ties)
    # Lightning checkpoints hold the head only: CLIP is frozen and named by the config.
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=True)
    assert checkpoint["state_dict"] and all(k.startswith("head.") for k in checkpoint["state_dict"])


def test_ties_are_dropped_and_counted_or_raise():
    model = RewardModel(clip_model="toy", hidden_dim=0)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    batch = {"images_0": images, "images_1": -images, "label_0": torch.tensor([1.0, 0.5, 0.0]),
             "captions": ["a", "b", "c"]}
    w, lose, captions, dropped = model.winners_and_losers(batch)
    assert dropped == 1 and captions == ["a", "c"]
    assert torch.allclose(w, torch.stack([images[0], -images[2]]) / 2 + 0.5)
    assert torch.allclose(lose, torch.stack([-images[0], images[2]]) / 2 + 0.5)
    model.ties = "raise"
    with pytest.raises(ValueError, match="tie"):
        model.winners_and_losers(batch)


def test_patch_grid_is_the_patch_tokens_averaged_over_blocks_of_the_image():
    model = RewardModel(clip_model="toy", hidden_dim=0, patch_grid=2)
    pixels = clip_preprocess(torch.rand(2, 3, 32, 32), model.preprocess_cfg)
    e_i, grid = clip_image_features(model.clip, pixels, patch_grid=2)
    assert torch.allclose(e_i, model.clip.encode_image(pixels, normalize=True), atol=1e-6)  # the default features
    model.clip.visual.output_tokens = True
    _, tokens = model.clip.visual(pixels)  # (B, 64, W): the toy CLIP's 8 x 8 patches (32 px, patch 4), row-major
    model.clip.visual.output_tokens = False
    width = tokens.shape[-1]
    assert model.head.grid_dim == width * 4
    # Cell (i, j) of a 2 x 2 grid is the mean of patch rows 4i..4i+3 and columns 4j..4j+3; channels first.
    for i in range(2):
        for j in range(2):
            index = [8 * r + c for r in range(4 * i, 4 * i + 4) for c in range(4 * j, 4 * j + 4)]
            cell = grid.view(2, width, 2, 2)[:, :, i, j]
            assert torch.allclose(cell, tokens[:, index].mean(1), atol=1e-5)
    assert not model.clip.visual.output_tokens  # the tower is left as it was


def test_patch_grid_reward_model_saves_and_loads_as_the_same_scorer(tmp_path):
    torch.manual_seed(0)
    model = RewardModel(clip_model="toy", hidden_dim=8, patch_grid=2)
    images, captions = torch.rand(3, 3, 32, 32), ["a red circle", "a blue square", "a green star"]
    scorer = RewardModelScorer(str(model.save_pretrained(tmp_path / "rm")))
    with torch.no_grad():
        assert torch.allclose(scorer.score(images, captions), model(images, captions), atol=1e-6)
    assert scorer.config["patch_grid"] == 2
    # A folder saved before patch grids (no grid keys) reads the pooled embedding only.
    pooled = RewardModel(clip_model="toy", hidden_dim=8)
    folder = pooled.save_pretrained(tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                    if k not in ("grid_dim", "patch_grid")}))
    with torch.no_grad():
        assert torch.allclose(RewardModelScorer(str(folder)).score(images, captions), pooled(images, captions),
                              atol=1e-6)
    with pytest.raises(ValueError, match="patch_grid"):
        RewardModel(clip_model="toy", patch_grid=-1)
