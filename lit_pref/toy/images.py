"""Captioned toy images as a data set and a DataModule, for pre-training the toy text-to-image model."""

from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lit_pref.toy.world import Scene, Split, render, sample_scene, split_combos

__all__ = ["ToyImageDataModule", "ToyImageDataset", "collate_toy"]


class ToyImageDataset(Dataset):
    """Captioned toy images generated on the fly; item ``i`` depends only on ``(seed, i)``.

    Items are ``{"pixel_values": FloatTensor[3, R, R] in [-1, 1], "caption": str}``.

    Args:
        num_items: Length of the data set.
        split: ``"train"`` (no held-out combinations), ``"heldout"`` (only
            them) or ``"all"``.
        resolution: Side ``R`` of the square images in pixels.
        seed: Seed; item ``i`` uses the generator seeded with ``(seed, i)``.
    """

    def __init__(self, num_items: int, split: Split = "train", resolution: int = 32, seed: int = 0) -> None:
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}")
        if resolution < 8:
            raise ValueError(f"resolution must be at least 8, got {resolution}")
        split_combos(split)  # validates
        self.num_items = num_items
        self.split = split
        self.resolution = resolution
        self.seed = seed

    def __len__(self) -> int:
        return self.num_items

    def scene(self, index: int) -> Scene:
        """The scene of item ``index``."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        return sample_scene(np.random.default_rng((self.seed, index)), self.split, self.resolution)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.scene(index)
        image = torch.from_numpy(render(scene, self.resolution)).permute(2, 0, 1)
        return {"pixel_values": image.float().div_(127.5).sub_(1.0), "caption": scene.caption}


def collate_toy(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"pixel_values": [B, 3, R, R], "captions": list[str]}``."""
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "captions": [it["caption"] for it in items],
    }


class ToyImageDataModule(pl.LightningDataModule):
    """Captioned toy images for pre-training a tiny text-to-image model.

    Training items come from the ``"train"`` split (held-out colour-shape
    combinations never appear); validation items from the ``"heldout"`` split
    with seed ``seed + 1_000_000``. Batches are ``{"pixel_values":
    FloatTensor[B, 3, R, R] in [-1, 1], "captions": list[str]}``.

    Args:
        num_train: Number of training images per epoch (generated on the fly).
        num_val: Number of validation images (held-out combinations; 0 for none).
        resolution: Side of the square images in pixels.
        batch_size: Batch size of training and validation.
        num_workers: DataLoader worker processes (persistent when > 0).
        seed: Seed of the images and of the training shuffle order.
    """

    VAL_SEED_OFFSET = 1_000_000

    def __init__(
        self,
        num_train: int = 200_000,
        num_val: int = 512,
        resolution: int = 32,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.num_train = num_train
        self.num_val = num_val
        self.resolution = resolution
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_dataset: ToyImageDataset | None = None
        self.val_dataset: ToyImageDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = ToyImageDataset(self.num_train, "train", self.resolution, self.seed)
        self.val_dataset = ToyImageDataset(
            self.num_val, "heldout", self.resolution, self.seed + self.VAL_SEED_OFFSET
        )

    def _loader(self, dataset: ToyImageDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_toy,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            self.setup("validate")
        if len(self.val_dataset) == 0:
            return []
        return self._loader(self.val_dataset, shuffle=False)
