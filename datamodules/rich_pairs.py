"""Rich preference pairs that RichPreferenceDPO re-synthesises while it trains: the newest rounds, re-read each epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch.utils.data import ConcatDataset, DataLoader

from lit_pref.formats.rich_pairs import complete_rounds

from .pair_datamodule import PreferencePairDataModule


class _Rounds(ConcatDataset):
    """The pairs of several rounds as one data set; an item's ``index`` (which seeds its training draws) is its
    position here, unique across rounds."""

    def __getitem__(self, index: int) -> dict | None:
        item = super().__getitem__(index)
        return None if item is None else {**item, "index": index}


class RichPreferenceDataModule(PreferencePairDataModule):
    """The iterative mode's training data: the newest complete synthesis rounds under ``pairs_dir``.

    ``lit_pref.modules.RichPreferenceDPO`` (with ``resynthesize_every > 0``) writes ``<pairs_dir>/round-NNNN/``
    folders of Pick-a-Pic-style shards; every call of :meth:`train_dataloader` (each epoch with
    ``trainer.reload_dataloaders_every_n_epochs: 1``) reads the newest ``rounds`` of those that are complete.
    Nothing flows back: the datamodule only reads files. Validation and test data are fixed files, as in
    :class:`PreferencePairDataModule`; batches are the same.

    Args:
        pairs_dir: The module's ``pairs_dir``.
        rounds: How many of the newest complete rounds to train on (1: only pairs from the latest policy).
        val_path: Validation pairs (a parquet file or folder, or JSONL); None for none.
        test_path: Test pairs; None for none.
        resolution: Side of the square training images in pixels.
        center_crop: Centre crop for training (else a random crop).
        random_flip: Flip training pairs horizontally with probability 0.5.
        batch_size: Training batch size.
        val_batch_size: Validation batch size; None uses ``batch_size``.
        num_workers: DataLoader worker processes.
        on_bad_row: ``"raise"`` or ``"skip"`` (see ``PreferencePairDataModule``).
        seed: Seed of the per-item random crop and flip decisions.
    """

    def __init__(
        self,
        pairs_dir: str,
        rounds: int = 1,
        val_path: str | None = None,
        test_path: str | None = None,
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: bool = False,
        batch_size: int = 1,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        on_bad_row: Literal["raise", "skip"] = "raise",
        seed: int = 0,
    ) -> None:
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        super().__init__(train_path=pairs_dir, val_path=val_path, test_path=test_path, resolution=resolution,
                         center_crop=center_crop, random_flip=random_flip, batch_size=batch_size,
                         val_batch_size=val_batch_size, num_workers=num_workers, on_bad_row=on_bad_row, seed=seed)
        self.pairs_dir = Path(pairs_dir)
        self.rounds = rounds
        self.train_rounds: list[Path] = []

    def setup(self, stage: str | None = None) -> None:
        """Reads the validation and test metadata; the training rounds are read by :meth:`train_dataloader`."""
        if self.val_path is not None and self.val_dataset is None:
            self.val_dataset = self._dataset(self.val_path).view(center_crop=True, random_flip=False)
        if self.test_path is not None and self.test_dataset is None:
            self.test_dataset = self._dataset(self.test_path).view(center_crop=True, random_flip=False)

    def train_dataloader(self) -> DataLoader:
        self.train_rounds = complete_rounds(self.pairs_dir)[-self.rounds:]
        if not self.train_rounds:
            raise FileNotFoundError(
                f"{self.pairs_dir} holds no complete synthesis round (round-NNNN/ with _stats.json): train with "
                "RichPreferenceDPO and resynthesize_every > 0 (it writes round-0000 when fit starts), or write one "
                f"with python -m lit_pref synthesize-pairs --output_dir {self.pairs_dir / 'round-0000'}")
        self.train_dataset = _Rounds([self._dataset(str(path)) for path in self.train_rounds])
        return super().train_dataloader()  # shuffled by epoch, dealt to the processes, resumable
