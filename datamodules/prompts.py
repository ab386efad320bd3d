"""Prompt lists for prediction / sampling (``python -m lit_pref predict``).

Reads prompts from a ``.txt`` file (one per line, blank lines ignored), a
``.jsonl`` file (each line an object with the key ``column``, or a JSON
string) or a ``.parquet`` file (column ``column``). Each prompt is repeated
``num_images_per_prompt`` times; the expanded list is served in order as
batches ``{"prompts": list[str], "seeds": LongTensor[B], "indices":
LongTensor[B]}`` where repeat ``j`` of prompt ``i`` has seed ``seed + i *
num_images_per_prompt + j`` and index ``i * num_images_per_prompt + j`` (its
position in the expanded list), so outputs are reproducible and file names can
be derived from the indices.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from .pair_rows import BadRowError

__all__ = ["PromptDataModule", "PromptDataset", "collate_prompts", "read_prompts"]


def _read_txt(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _read_jsonl(path: Path, column: str) -> list[str]:
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadRowError(f"{where}: invalid JSON ({e})") from e
            if isinstance(record, dict):
                if column not in record:
                    raise BadRowError(f"{where}: missing key '{column}'")
                record = record[column]
            if not isinstance(record, str):
                raise BadRowError(f"{where}: prompt is not a string (got {record!r})")
            prompts.append(record)
    return prompts


def _read_parquet(path: Path, column: str) -> list[str]:
    names = pq.ParquetFile(path).schema_arrow.names
    if column not in names:
        raise BadRowError(f"{path.name}: missing column '{column}' (has columns {names})")
    values = pq.read_table(path, columns=[column]).column(column)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise BadRowError(f"{path.name}: column '{column}' has type {values.type}, expected strings")
    prompts = values.to_pylist()
    for row, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise BadRowError(f"{path.name} row {row}: prompt is not a string (got {prompt!r})")
    return prompts


def read_prompts(path: str | os.PathLike, column: str = "caption") -> list[str]:
    """Reads a prompt file (``.txt``, ``.jsonl`` or ``.parquet``); see the module docstring.

    Raises:
        BadRowError: naming the file and line (1-based, JSONL) or row (0-based,
            parquet) of a bad entry, or the file when it holds no prompts.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if p.suffix == ".txt":
        prompts = _read_txt(p)
    elif p.suffix == ".jsonl":
        prompts = _read_jsonl(p, column)
    elif p.suffix == ".parquet":
        prompts = _read_parquet(p, column)
    else:
        raise BadRowError(f"{p}: unsupported prompt file (expected .txt, .jsonl or .parquet)")
    if not prompts:
        raise BadRowError(f"{p}: no prompts")
    return prompts


class PromptDataset(Dataset):
    """The expanded prompt list: item ``k`` is ``(prompt, seed, index k)``."""

    def __init__(self, prompts: Sequence[str], num_images_per_prompt: int = 1, seed: int = 0) -> None:
        self.prompts = list(prompts)
        self.num_images_per_prompt = num_images_per_prompt
        self.seed = seed

    def __len__(self) -> int:
        return len(self.prompts) * self.num_images_per_prompt

    def __getitem__(self, index: int) -> tuple[str, int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        prompt_index = index // self.num_images_per_prompt
        # seed + i * n + j == seed + index
        return self.prompts[prompt_index], self.seed + index, index


def collate_prompts(items: Sequence[tuple[str, int, int]]) -> dict[str, Any]:
    """``[(prompt, seed, index), ...]`` -> ``{"prompts", "seeds", "indices"}``."""
    return {
        "prompts": [item[0] for item in items],
        "seeds": torch.tensor([item[1] for item in items], dtype=torch.long),
        "indices": torch.tensor([item[2] for item in items], dtype=torch.long),
    }


class PromptDataModule(pl.LightningDataModule):
    """Prompts, from a file or listed inline: for ``predict`` (images for every prompt) and for methods that
    train on their own samples (``fit`` of the online trajectory module and PPO: shuffled prompt batches,
    reshuffled every epoch).

    ``predict_dataloader()`` yields ``{"prompts": list[str], "seeds":
    LongTensor[B], "indices": LongTensor[B]}`` in file order; repeat ``j`` of
    prompt ``i`` gets seed ``seed + i * num_images_per_prompt + j`` and index
    ``i * num_images_per_prompt + j``.

    Args:
        path: Prompt file: ``.txt`` (one prompt per line, blank lines ignored),
            ``.jsonl`` (each line an object with key ``column``, or a JSON
            string) or ``.parquet`` (column ``column``). Give ``path`` or ``prompts``.
        prompts: The prompts themselves, instead of a file.
        column: Key (JSONL) or column (parquet) holding the prompt; ignored for
            ``.txt``.
        batch_size: Prompts per batch.
        num_images_per_prompt: Images to generate per prompt (each with its own seed).
        seed: Seed of the first image; the others follow consecutively.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        path: str | None = None,
        prompts: list[str] | None = None,
        column: str = "caption",
        batch_size: int = 4,
        num_images_per_prompt: int = 1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if (path is None) == (prompts is None):
            raise ValueError("give exactly one of path (a prompt file) and prompts (a list)")
        if prompts is not None and not prompts:
            raise ValueError("prompts is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        self.path = path
        self.column = column
        self.batch_size = batch_size
        self.num_images_per_prompt = num_images_per_prompt
        self.seed = seed
        self.num_workers = num_workers
        self.prompts: list[str] | None = list(prompts) if prompts is not None else None
        self.dataset: PromptDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Reads and validates the prompt file."""
        if self.dataset is None:
            if self.prompts is None:
                self.prompts = read_prompts(self.path, self.column)
            self.dataset = PromptDataset(self.prompts, self.num_images_per_prompt, self.seed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled prompt batches (a generator seeded by ``seed``), the last short batch kept."""
        if self.dataset is None:
            self.setup("fit")
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            collate_fn=collate_prompts,
        )

    def predict_dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("predict")
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_prompts,
        )
