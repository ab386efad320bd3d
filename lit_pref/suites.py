"""Benchmark prompt suites read from local files in their published formats.

- ``hpsv2``: the HPSv2 benchmark (Wu et al. 2023): a folder with ``anime.json``, ``concept-art.json``,
  ``paintings.json`` and ``photo.json``, each one JSON list of prompt strings (800 each in the release; the
  ``hpsv2`` package keeps them in ``~/.cache/hpsv2/datasets/benchmark``). The category is the style.
- ``partiprompts``: ``PartiPrompts.tsv`` (Yu et al. 2022): tab-separated, header ``Prompt``, ``Category``,
  ``Challenge``, ``Note``. The category is ``Category``; ``Challenge`` is kept.
- ``drawbench``: the DrawBench sheet (Saharia et al. 2022) saved as CSV, header ``Prompts``, ``Category``.
- ``pickapic``: Pick-a-Pic captions from the parquet layout of the dataset (a ``.parquet`` file or a folder of
  shards, e.g. the ``test_unique`` split's), column ``caption``; repeated captions are kept once, in order.
- ``file``: any prompt file :func:`lit_pref.datamodules.prompts.read_prompts` reads (txt, JSONL, parquet); no category.

Every reader raises :class:`lit_pref.datamodules.pair_rows.BadRowError` naming the file and the row (1-based line
for text files, 0-based index for JSON lists and parquet rows) of a bad entry.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import pyarrow.parquet as pq

from lit_pref.datamodules.pair_rows import BadRowError
from lit_pref.datamodules.prompts import read_prompts

SuiteKind = Literal["hpsv2", "partiprompts", "drawbench", "pickapic", "file"]
HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")
HPSV2_BLOCK = 80  # the HPSv2 benchmark averages blocks of 80 prompts and reports their mean and spread


@dataclass(frozen=True)
class SuitePrompt:
    """One prompt of a suite.

    Attributes:
        prompt: The text.
        category: Its category (HPSv2 style, PartiPrompts/DrawBench category); ``""`` when the suite has none.
        challenge: PartiPrompts' ``Challenge`` column; ``""`` elsewhere.
    """

    prompt: str
    category: str = ""
    challenge: str = ""


@dataclass
class PromptSuite:
    """Which suite to read and from where.

    Args:
        kind: The format (see the module docstring).
        path: The folder (``hpsv2``, a ``pickapic`` shard folder) or file.
        categories: Keep only prompts of these categories (``None``: all).
        max_prompts: Keep only the first this many prompts after the category filter (``None``: all).
    """

    kind: SuiteKind = "file"
    path: str = "prompts.txt"
    categories: list[str] | None = None
    max_prompts: int | None = None

    def read(self) -> list[SuitePrompt]:
        """The suite's prompts, in file order (HPSv2: the four styles in turn)."""
        items = READERS[self.kind](self.path)
        if self.categories is not None:
            known = sorted({item.category for item in items})
            unknown = sorted(set(self.categories) - set(known))
            if unknown:
                raise ValueError(f"{self.path}: no prompt of categories {unknown}; its categories are {known}")
            items = [item for item in items if item.category in self.categories]
        if self.max_prompts is not None:
            if self.max_prompts < 1:
                raise ValueError(f"max_prompts must be at least 1, got {self.max_prompts}")
            items = items[: self.max_prompts]
        return items


def _text(value: object, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRowError(f"{where}: {column} must be a non-empty string, got {value!r}")
    return value.strip()


def read_hpsv2(folder: str | os.PathLike) -> list[SuitePrompt]:
    """The HPSv2 benchmark: the four style files of ``folder``, each a JSON list of prompts."""
    folder = Path(folder)
    items = []
    for style in HPSV2_STYLES:
        path = folder / f"{style}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {style}.json (the HPSv2 benchmark has {', '.join(HPSV2_STYLES)})")
        try:
            prompts = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise BadRowError(f"{path}: invalid JSON ({error})") from error
        if not isinstance(prompts, list) or not prompts:
            raise BadRowError(f"{path}: expected a non-empty JSON list of prompts, got {type(prompts).__name__}")
        items += [SuitePrompt(_text(p, f"{path} index {i}", "prompt"), style) for i, p in enumerate(prompts)]
    return items


def _read_table(path: str | os.PathLike, delimiter: str, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """(1-based line, row) of a CSV/TSV file with a header that has ``columns``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise BadRowError(f"{path}: header lacks column(s) {missing} (has {reader.fieldnames})")
        return [(reader.line_num, row) for row in reader]


def read_partiprompts(path: str | os.PathLike) -> list[SuitePrompt]:
    """``PartiPrompts.tsv``: columns ``Prompt``, ``Category``, ``Challenge``, ``Note``."""
    return [SuitePrompt(_text(row["Prompt"], f"{path} line {line}", "Prompt"),
                        _text(row["Category"], f"{path} line {line}", "Category"), (row["Challenge"] or "").strip())
            for line, row in _read_table(path, "\t", ("Prompt", "Category", "Challenge", "Note"))]


def read_drawbench(path: str | os.PathLike) -> list[SuitePrompt]:
    """DrawBench as CSV: columns ``Prompts``, ``Category``."""
    return [SuitePrompt(_text(row["Prompts"], f"{path} line {line}", "Prompts"),
                        _text(row["Category"], f"{path} line {line}", "Category"))
            for line, row in _read_table(path, ",", ("Prompts", "Category"))]


def read_pickapic(path: str | os.PathLike) -> list[SuitePrompt]:
    """Pick-a-Pic captions (column ``caption``) of a parquet file or a folder of ``*.parquet`` shards (sorted),
    each caption once, in order."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(p for p in path.iterdir() if p.suffix == ".parquet")
        if not shards:
            raise FileNotFoundError(f"{path}: no *.parquet shard in this folder")
    elif path.is_file():
        shards = [path]
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    captions: dict[str, None] = {}
    for shard in shards:
        names = pq.ParquetFile(shard).schema_arrow.names
        if "caption" not in names:
            raise BadRowError(f"{shard}: missing column 'caption' (has columns {names})")
        for row, caption in enumerate(pq.read_table(shard, columns=["caption"]).column("caption").to_pylist()):
            captions.setdefault(_text(caption, f"{shard} row {row}", "caption"))
    return [SuitePrompt(c) for c in captions]


def read_file(path: str | os.PathLike) -> list[SuitePrompt]:
    """A plain prompt file (txt, JSONL or parquet, see ``lit_pref.datamodules.prompts.read_prompts``)."""
    return [SuitePrompt(p) for p in read_prompts(path)]


READERS = {"hpsv2": read_hpsv2, "partiprompts": read_partiprompts, "drawbench": read_drawbench,
           "pickapic": read_pickapic, "file": read_file}


def hpsv2_style_report(scores: Sequence[float], styles: Sequence[str]) -> dict[str, tuple[float, float]]:
    """The per-style report the HPSv2 benchmark prints: for each style, the scores (raw HPSv2 cosines, one per
    prompt in file order) cut into blocks of 80 prompts, each block's mean times 100; the mean and the standard
    deviation (numpy's, ddof 0) of those block means. A last, shorter block counts as a block.

    Returns:
        style -> (mean, std).
    """
    if len(scores) != len(styles):
        raise ValueError(f"{len(scores)} scores for {len(styles)} styles")
    report = {}
    for style in dict.fromkeys(styles):
        values = [s for s, st in zip(scores, styles) if st == style]
        blocks = [100 * sum(b) / len(b) for b in (values[i:i + HPSV2_BLOCK] for i in range(0, len(values), HPSV2_BLOCK))]
        mean = sum(blocks) / len(blocks)
        report[style] = (mean, math.sqrt(sum((b - mean) ** 2 for b in blocks) / len(blocks)))
    return report
