"""The toy world's shipped preference pairs (lit_pref/assets/toy/pairs/best_of_8, what the demo trains on) are what
``python -m lit_pref make-toy-pairs`` makes, hold what their README says, and load through the data module users
give their own Pick-a-Pic-layout files."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lit_pref.backbone import DiffusionBackbone
from lit_pref.datamodules import PreferencePairDataModule
from lit_pref.toy import ToyGroundTruthReward, prompts
from lit_pref.toy.pairs import SHIPPED_PAIRS


@pytest.fixture(scope="module")
def train() -> dict:
    return pq.read_table(SHIPPED_PAIRS / "train.parquet").to_pydict()


def pixels(png: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(io.BytesIO(png)).convert("RGB"))).permute(2, 0, 1).float() / 255


def test_train_pairs_are_256_noise_free_verdicts_on_the_training_prompts_only(train):
    assert len(train["caption"]) == 256
    assert set(train["caption"]) <= set(prompts("train")) and not set(train["caption"]) & set(prompts("heldout"))
    # prompts cycled in a seeded order: each of the 60 training prompts 256 // 60 or one more times
    assert sorted(set(Counter(train["caption"]).values())) == [4, 5] and len(set(train["caption"])) == 60
    # temperature 0, tie margin 0: label_0 = 1 exactly when image 0 has the higher hidden reward
    assert train["label_0"] == [1.0 if r0 > r1 else 0.0 for r0, r1 in zip(train["reward_0"], train["reward_1"])]
    val = pq.read_table(SHIPPED_PAIRS / "val.parquet").to_pydict()
    assert len(val["caption"]) == 32 and set(val["caption"]) <= set(prompts("heldout"))


def test_the_first_two_pairs_are_what_the_generator_makes(train):
    """Pair i: the prompt at position i of the seeded order, the best and the worst (kept in sampling order) of 8
    base samples in 10 DDIM steps at guidance 4 from noise seeds 8i .. 8i + 7 (seed 0), under the hidden reward."""
    order = np.random.default_rng(0).permutation(256) % 60
    backbone = DiffusionBackbone(model="toy").eval()
    reward = ToyGroundTruthReward()
    for i in range(2):
        caption = prompts("train")[order[i]]
        assert train["caption"][i] == caption
        generators = [torch.Generator().manual_seed(8 * i + j) for j in range(8)]
        with torch.no_grad():
            images = backbone.sample([caption] * 8, num_inference_steps=10, guidance_scale=4.0, generator=generators)
        rewards = reward.score(images, [caption] * 8)
        kept = sorted([int(rewards.argmin()), int(rewards.argmax())])
        for side, k in enumerate(kept):
            assert (pixels(train[f"jpg_{side}"][i]) - images[k]).abs().max() <= 2 / 255  # float noise across CPUs
            assert train[f"reward_{side}"][i] == pytest.approx(rewards[k].item(), abs=1e-3)
        assert train["label_0"][i] == float(rewards[kept[0]] > rewards[kept[1]])


def test_the_pairs_load_through_the_pick_a_pic_data_module():
    data = PreferencePairDataModule(train_path=str(SHIPPED_PAIRS / "train.parquet"),
                                    val_path=str(SHIPPED_PAIRS / "val.parquet"), resolution=32, batch_size=8)
    data.setup("fit")
    assert len(data.train_dataset) == 256 and len(data.val_dataset) == 32
    batch = next(iter(data.train_dataloader()))
    assert batch["images_0"].shape == (8, 3, 32, 32) and batch["num_skipped"] == 0
