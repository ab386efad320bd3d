"""The row metadata of preference-pair files (Pick-a-Pic parquet, JSONL), read and validated eagerly: captions,
labels and (JSONL) image paths. The layouts are described in :mod:`lit_pref.datamodules.preference_pairs`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lit_pref.formats.jsonl import read_json_line

VALID_LABELS = (0.0, 0.5, 1.0)
PARQUET_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
JSONL_KEYS = ("caption", "image_0", "image_1", "label_0")


class BadRowError(ValueError):
    """A row (or a whole file) of a preference data set is invalid.

    The message names the file, the row (``row N``: 0-based row index within a
    parquet file; ``line N``: 1-based line number in a JSONL file) and the
    problem.
    """


# --------------------------------------------------------------------------- #
# Row metadata
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Source:
    """One input file: a parquet shard or a JSONL file."""

    path: Path
    kind: Literal["parquet", "jsonl"]


def _label_problem(value: Any) -> str | None:
    """Returns why ``value`` is not a valid ``label_0``, or None if it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"label_0 = {value!r} is not one of 0, 0.5, 1"
    if math.isnan(value) or float(value) not in VALID_LABELS:
        return f"label_0 = {value!r} is not one of 0, 0.5, 1"
    return None


def describe_row(source: _Source, locator: int) -> str:
    """``"picks.parquet row 3"`` or ``"pairs.jsonl line 5"``."""
    unit = "row" if source.kind == "parquet" else "line"
    return f"{source.path.name} {unit} {locator}"


def list_sources(path: str | os.PathLike) -> list[_Source]:
    """Expands a data path into its input files."""
    p = Path(path)
    if p.is_dir():
        shards = sorted(q for q in p.iterdir() if q.suffix == ".parquet" and q.is_file())
        if not shards:
            raise BadRowError(f"{p}: directory contains no *.parquet files")
        return [_Source(q, "parquet") for q in shards]
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.suffix == ".parquet":
        return [_Source(p, "parquet")]
    if p.suffix == ".jsonl":
        return [_Source(p, "jsonl")]
    raise BadRowError(
        f"{p}: unsupported data file (expected a .parquet file, a directory of "
        "*.parquet shards, or a .jsonl file)"
    )


class Rows:
    """Column-wise metadata of the valid rows of all sources (cheap to index)."""

    def __init__(self) -> None:
        self.source_idx: list[int] = []
        self.locator: list[int] = []  # parquet: 0-based row; JSONL: 1-based line
        self.captions: list[str] = []
        self.labels: list[float] = []
        self.image_paths: list[tuple[str, str] | None] = []  # JSONL only

    def __len__(self) -> int:
        return len(self.captions)

    def add(self, source_idx: int, locator: int, caption: str, label: float,
            image_paths: tuple[str, str] | None = None) -> None:
        self.source_idx.append(source_idx)
        self.locator.append(locator)
        self.captions.append(caption)
        self.labels.append(float(label))
        self.image_paths.append(image_paths)


def scan_parquet(source: _Source, source_idx: int, rows: Rows, problems: list[str]) -> None:
    """Reads and validates ``caption``/``label_0`` of one parquet file."""
    try:
        pf = pq.ParquetFile(source.path)
    except Exception as e:  # noqa: BLE001 - any reader error is a file-level error
        raise BadRowError(f"{source.path.name}: cannot be read as parquet ({e})") from e
    names = pf.schema_arrow.names
    for column in PARQUET_COLUMNS:
        if column not in names:
            raise BadRowError(
                f"{source.path.name}: missing column '{column}' (file {source.path}; "
                f"has columns {names})"
            )
    table = pf.read(columns=["caption", "label_0"])
    captions = table.column("caption")
    labels = table.column("label_0")

    caption_is_text = _is_text(captions.type)
    label_is_number = pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type)
    caption_list = captions.to_pylist()
    if label_is_number:
        label_arr = labels.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls -> NaN
        label_ok = np.isin(label_arr, VALID_LABELS)
    else:
        label_arr = None
        label_ok = np.zeros(len(table), dtype=bool)
    caption_ok = np.array([isinstance(c, str) for c in caption_list], dtype=bool) if caption_is_text \
        else np.zeros(len(table), dtype=bool)

    for i in range(len(table)):
        if caption_ok[i] and label_ok[i]:
            rows.add(source_idx, i, caption_list[i], float(label_arr[i]))
            continue
        where = describe_row(source, i)
        if not caption_ok[i]:
            problems.append(f"{where}: caption is not a string (got {caption_list[i]!r})")
        else:
            problems.append(f"{where}: {_label_problem(labels[i].as_py())}")


def _is_text(arrow_type: pa.DataType) -> bool:
    """Whether a column of this type holds strings: any Arrow string type, or a dictionary of them."""
    if pa.types.is_dictionary(arrow_type):
        return _is_text(arrow_type.value_type)
    return (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or pa.types.is_string_view(arrow_type))


def _outside(value: str) -> bool:
    """Whether a JSONL image path is absolute or leads out of the JSONL's folder (judged on the text)."""
    path = Path(value)
    return path.is_absolute() or (Path(os.path.normpath(path)).parts[:1] == ("..",))


def scan_jsonl(source: _Source, source_idx: int, rows: Rows, problems: list[str],
                allow_outside_paths: bool = False) -> None:
    """Reads and validates every line of one JSONL file (blank lines are ignored)."""
    base = source.path.parent
    with open(source.path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = describe_row(source, line_no)
            record, why = read_json_line(raw)
            if why is not None:
                problems.append(f"{where}: {why}")
                continue
            if not isinstance(record, dict):
                problems.append(f"{where}: expected a JSON object, got {type(record).__name__}")
                continue
            missing = [k for k in JSONL_KEYS if k not in record]
            if missing:
                problems.append(f"{where}: missing key " + ", ".join(repr(k) for k in missing))
                continue
            caption = record["caption"]
            if not isinstance(caption, str):
                problems.append(f"{where}: caption is not a string (got {caption!r})")
                continue
            label_problem = _label_problem(record["label_0"])
            if label_problem:
                problems.append(f"{where}: {label_problem}")
                continue
            paths = []
            for key in ("image_0", "image_1"):
                value = record[key]
                if not isinstance(value, str) or not value:
                    problems.append(f"{where}: {key} is not a path string (got {value!r})")
                    break
                if not allow_outside_paths and _outside(value):
                    problems.append(f"{where}: {key} = {value!r} is outside the JSONL's folder {base} (absolute or "
                                    "climbing out with ..; allow_outside_paths=True accepts it)")
                    break
                full = base / value  # an absolute `value` replaces `base`
                if not full.is_file():
                    problems.append(f"{where}: {key} file does not exist: {full}")
                    break
                paths.append(str(full))
            else:
                rows.add(source_idx, line_no, caption, float(record["label_0"]), (paths[0], paths[1]))


