"""The data module of preference-pair files (Pick-a-Pic parquet, JSONL): splits, loaders, resumable order."""

from __future__ import annotations

from functools import partial
from typing import Literal

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from .pair_batches import collate_pairs
from .preference_pairs import PreferencePairDataset
from .resumable import EpochSampler, ResumableLoader




def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic disjoint (train, val) index split of ``range(n)``.

    The validation part has ``round(n * val_fraction)`` rows, at least 1 when
    ``val_fraction > 0``; the training part keeps at least one row.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0:
        n_val = max(1, n_val)
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training rows out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class PreferencePairDataModule(pl.LightningDataModule):
    """Preference pairs (Pick-a-Pic parquet or image folder + JSONL) for DPO-style training.

    Batches are dicts with ``images_0``, ``images_1`` (``[B, 3, R, R]`` in
    [-1, 1]), ``label_0`` (``[B]``: 1 = image 0 preferred, 0 = image 1, 0.5 =
    tie; ties are passed through, the LightningModule decides what to do with
    them), ``captions``, ``original_sizes`` and ``crop_top_left`` (``[B, 2]``,
    for SDXL's micro-conditioning) and ``num_skipped``. Validation data are
    always centre-cropped and never flipped.

    Args:
        train_path: Training data: a ``.parquet`` file, a directory of
            ``*.parquet`` shards (columns ``caption``, ``jpg_0``, ``jpg_1``,
            ``label_0``) or a ``.jsonl`` file of ``{"caption", "image_0",
            "image_1", "label_0"}`` objects with image paths relative to the
            JSONL file.
        val_path: Validation data in the same formats; None for no separate
            validation file.
        test_path: Test data in the same formats (``python -m lit_pref test``);
            None for none. Centre-cropped and never flipped, like validation.
        val_fraction: Fraction of the training rows held out for validation
            (a deterministic split by ``seed``) when ``val_path`` is None; 0
            for no validation set. Must be 0 when ``val_path`` is given.
        resolution: Side of the square training images in pixels (the shorter
            side is resized to it, then a square is cropped).
        center_crop: Centre crop for training; if False, random crop (the same
            relative position for both images of a pair).
        random_flip: Flip training pairs horizontally with probability 0.5 (both
            images of a pair together).
        batch_size: Training batch size (pairs per batch).
        val_batch_size: Validation batch size; None uses ``batch_size``.
        num_workers: DataLoader worker processes; with more than 0 the workers
            are persistent.
        on_bad_row: ``"raise"`` stops with a :class:`BadRowError` naming the file
            and row; ``"skip"`` drops bad rows (logged at setup, or counted in
            each batch's ``num_skipped`` when an image does not decode).
        seed: Seed of the validation split, of the per-item random
            crop/flip decisions and of the training order (epoch ``e``
            shuffles with ``seed + e``).
        allow_outside_paths: JSONL only: accept image paths that are absolute
            or lead out of the JSONL's folder (by default such rows are bad).
    """

    def __init__(
        self,
        train_path: str,
        val_path: str | None = None,
        test_path: str | None = None,
        val_fraction: float = 0.0,
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: bool = False,
        batch_size: int = 1,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        on_bad_row: Literal["raise", "skip"] = "raise",
        seed: int = 0,
        allow_outside_paths: bool = False,
    ) -> None:
        super().__init__()
        if val_path is not None and val_fraction > 0:
            raise ValueError("give either val_path or val_fraction > 0, not both")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if on_bad_row not in ("raise", "skip"):
            raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {on_bad_row!r}")
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError("batch sizes must be at least 1")
        self.train_path = train_path
        self.val_path = val_path
        self.test_path = test_path
        self.val_fraction = val_fraction
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.on_bad_row = on_bad_row
        self.seed = seed
        self.allow_outside_paths = allow_outside_paths
        self.train_dataset: PreferencePairDataset | None = None
        self.val_dataset: PreferencePairDataset | None = None
        self.test_dataset: PreferencePairDataset | None = None

    def _dataset(self, path: str) -> PreferencePairDataset:
        return PreferencePairDataset(
            path,
            resolution=self.resolution,
            center_crop=self.center_crop,
            random_flip=self.random_flip,
            on_bad_row=self.on_bad_row,
            seed=self.seed,
            allow_outside_paths=self.allow_outside_paths,
        )

    def setup(self, stage: str | None = None) -> None:
        """Reads and validates the metadata (images are decoded lazily)."""
        if self.train_dataset is not None:
            return
        full = self._dataset(self.train_path)
        if self.val_path is not None:
            self.train_dataset = full
            self.val_dataset = self._dataset(self.val_path).view(center_crop=True, random_flip=False)
        elif self.val_fraction > 0:
            train_idx, val_idx = split_indices(len(full), self.val_fraction, self.seed)
            self.train_dataset = full.view(train_idx)
            self.val_dataset = full.view(val_idx, center_crop=True, random_flip=False)
        else:
            self.train_dataset = full
        if self.test_path is not None:
            self.test_dataset = self._dataset(self.test_path).view(center_crop=True, random_flip=False)

    def _loader(self, dataset: PreferencePairDataset, batch_size: int) -> DataLoader:
        """An evaluation loader: in order."""
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=partial(collate_pairs, resolution=self.resolution),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by epoch with ``seed`` and dealt to the processes; a resumed run continues mid-epoch with
        the batches the uninterrupted run would have seen, skipping the consumed ones unread."""
        if self.train_dataset is None:
            self.setup("fit")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return ResumableLoader(
            self.train_dataset,
            sampler=EpochSampler(self.train_dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed),
            trainer=trainer,
            batch_size=self.batch_size,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=partial(collate_pairs, resolution=self.resolution),
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.train_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("test")
        if self.test_dataset is None:
            raise ValueError("no test data: set test_path (data.init_args.test_path) to run `lit_pref test`")
        return self._loader(self.test_dataset, self.val_batch_size)
