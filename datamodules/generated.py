"""Preference pairs generated on first use and cached on disk, rebuilt when their parameters change."""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info

from lit_pref.io import atomic_file

from .pair_datamodule import PreferencePairDataModule


class GeneratedPairsDataModule(PreferencePairDataModule):
    """A :class:`PreferencePairDataModule` over pairs that a subclass generates.

    ``prepare_data`` writes ``train.parquet``, ``val.parquet`` and ``meta.json`` (the generation parameters)
    under ``data_dir`` when they are missing or were made with other parameters; then the files are read
    exactly like any Pick-a-Pic-style parquet. Validation pairs use seed ``seed + VAL_SEED_OFFSET``.
    Subclasses implement :meth:`generation_params` and :meth:`write_pairs`.
    """

    VAL_SEED_OFFSET = 1_000_000

    def __init__(
        self,
        data_dir: str,
        num_pairs: int,
        num_val_pairs: int,
        seed: int,
        resolution: int,
        batch_size: int,
        val_batch_size: int | None,
        num_workers: int,
        random_flip: bool,
        on_bad_row: Literal["raise", "skip"],
    ) -> None:
        data_dir_path = Path(data_dir)
        super().__init__(
            train_path=str(data_dir_path / "train.parquet"),
            val_path=str(data_dir_path / "val.parquet") if num_val_pairs > 0 else None,
            resolution=resolution,
            center_crop=True,
            random_flip=random_flip,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            on_bad_row=on_bad_row,
            seed=seed,
        )
        self.data_dir = data_dir_path
        self.num_pairs = num_pairs
        self.num_val_pairs = num_val_pairs

    @abstractmethod
    def generation_params(self) -> dict[str, Any]:
        """Everything the generated files depend on (JSON-serialisable); a change triggers regeneration."""

    @abstractmethod
    def write_pairs(self, path: Path, num_pairs: int, seed: int, split: Literal["train", "val"]) -> None:
        """Generate ``num_pairs`` pairs from ``seed`` and write them to ``path`` (atomically)."""

    def _up_to_date(self) -> bool:
        try:
            recorded = json.loads((self.data_dir / "meta.json").read_text())
        except (OSError, ValueError):
            return False
        needed = [self.data_dir / "train.parquet"] + ([self.data_dir / "val.parquet"] if self.num_val_pairs else [])
        return recorded == self.generation_params() and all(p.is_file() for p in needed)

    def prepare_data(self) -> None:
        """Generate the data set unless an identical one is already on disk."""
        if self._up_to_date():
            return
        rank_zero_info(f"Generating {self.num_pairs} training and {self.num_val_pairs} validation pairs into "
                       f"{self.data_dir} (once: later runs with the same parameters reuse them)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "meta.json").unlink(missing_ok=True)  # invalid until rewritten
        self.write_pairs(self.data_dir / "train.parquet", self.num_pairs, self.seed, "train")
        val_path = self.data_dir / "val.parquet"
        if self.num_val_pairs > 0:
            self.write_pairs(val_path, self.num_val_pairs, self.seed + self.VAL_SEED_OFFSET, "val")
        else:
            val_path.unlink(missing_ok=True)
        with atomic_file(self.data_dir / "meta.json") as tmp:
            tmp.write_text(json.dumps(self.generation_params(), indent=2, sort_keys=True))

    def setup(self, stage: str | None = None) -> None:
        if not (self.data_dir / "train.parquet").is_file():
            raise FileNotFoundError(
                f"{self.data_dir / 'train.parquet'} does not exist: call prepare_data() first "
                "(the Trainer does this automatically)"
            )
        super().setup(stage)
