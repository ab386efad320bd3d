"""The DataModule of multi-round dialogues (VCA-PPO); the JSONL format is :mod:`lit_pref.formats.dialogues`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lit_pref.formats.dialogues import Dialogue, DialogueFormatError, read_dialogues

from .dialogue_pairs import DialoguePairDataset

__all__ = ["DialogueDataModule", "DialogueDataset"]


class DialogueDataset(Dataset):
    """The dialogues of a file; item ``i`` is a :class:`Dialogue`."""

    def __init__(self, dialogues: list[Dialogue]) -> None:
        self.dialogues = dialogues

    def __len__(self) -> int:
        return len(self.dialogues)

    def __getitem__(self, index: int) -> Dialogue:
        return self.dialogues[index]


def _as_list(items: list[Dialogue]) -> list[Dialogue]:
    return list(items)


class DialogueDataModule(pl.LightningDataModule):
    """Multi-round dialogues from JSONL files (format in :mod:`lit_pref.formats.dialogues`); batches are ``list[Dialogue]``,
    whose turns' image paths are resolved against the file's folder (absolute paths stay as they are),
    or with ``pairs=True`` the dialogues' preference pairs in the batch format of
    :class:`~lit_pref.datamodules.PreferencePairDataModule` (:mod:`lit_pref.datamodules.dialogue_pairs`: chosen ≻ each unchosen image of
    every round with ``images`` and ``chosen``; plus ``satisfaction``), so pair methods and the reward model train on
    them. Rounds that give no pairs are counted, not errors: ``rounds_without_pairs`` (train file), also logged once as
    ``data/dialogue_rounds_without_pairs`` to the trainer's loggers.

    Files are read and validated in ``setup`` (any problem raises :class:`DialogueFormatError`; nothing is skipped).

    Args:
        train_path: Training dialogues (``.jsonl``).
        val_path: Validation dialogues (``.jsonl``); None for none.
        batch_size: Dialogues per batch.
        shuffle: Shuffle the training dialogues (seeded by ``seed``, a new order every epoch).
        seed: Seed of the shuffle order.
        check_images: Check that every listed image file exists.
        pairs: Yield preference pairs instead of dialogues.
        resolution: Side of the pairs' square images (``pairs`` only).
        num_workers: DataLoader worker processes (``pairs`` only).
    """

    def __init__(
        self,
        train_path: str,
        val_path: str | None = None,
        batch_size: int = 4,
        shuffle: bool = True,
        seed: int = 0,
        check_images: bool = True,
        pairs: bool = False,
        resolution: int = 512,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.train_path = train_path
        self.val_path = val_path
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.check_images = check_images
        self.pairs = pairs
        self.resolution = resolution
        self.num_workers = num_workers
        self.rounds_without_pairs: int | None = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Reads and validates the files (once)."""
        if self.train_dataset is None:
            self.train_dataset = self._dataset(self.train_path)
            if not len(self.train_dataset):
                raise DialogueFormatError(f"{self.train_path}: no {'pairs' if self.pairs else 'dialogues'}")
            if self.pairs:
                self.rounds_without_pairs = self.train_dataset.rounds_without_pairs
                if self.trainer is not None:
                    for logger in self.trainer.loggers:
                        logger.log_metrics({"data/dialogue_rounds_without_pairs": float(self.rounds_without_pairs)},
                                           step=0)
        if self.val_path is not None and self.val_dataset is None:
            self.val_dataset = self._dataset(self.val_path)

    def _dataset(self, path: str) -> Dataset:
        if self.pairs:
            return DialoguePairDataset(path, self.resolution, self.check_images)
        dialogues = read_dialogues(path, self.check_images)
        for turn in (turn for dialogue in dialogues for turn in dialogue.turns if turn.images):
            turn.images = [str(Path(path).parent / image) for image in turn.images]  # usable without the file
        return DialogueDataset(dialogues)

    def _collate(self, dataset: Dataset) -> Any:
        return dataset.collate if self.pairs else _as_list

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=torch.Generator().manual_seed(self.seed) if self.shuffle else None,
            collate_fn=self._collate(self.train_dataset),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        if self.val_dataset is None or not len(self.val_dataset):
            return []
        return DataLoader(self.val_dataset, batch_size=self.batch_size, shuffle=False,
                          collate_fn=self._collate(self.val_dataset), num_workers=self.num_workers)
