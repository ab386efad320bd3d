"""Files for the pair data tests: solid and gradient images, Pick-a-Pic parquet shards and JSONL image folders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(colour, size=(16, 16)) -> np.ndarray:
    """uint8 [H, W, 3] of one colour; size = (H, W)."""
    image = np.empty((*size, 3), dtype=np.uint8)
    image[:] = colour
    return image


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def expected_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def write_parquet(path: Path, rows: list[dict], drop: tuple[str, ...] = ()) -> Path:
    """rows: dicts with caption, jpg_0, jpg_1 (arrays or bytes), label_0, extras."""
    columns: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, np.ndarray):
                value = encode(value)
            columns.setdefault(key, []).append(value)
    for key in drop:
        columns.pop(key)
    types = {"caption": pa.string(), "jpg_0": pa.binary(), "jpg_1": pa.binary(), "label_0": pa.float64()}
    table = pa.table({k: pa.array(v, type=types.get(k)) for k, v in columns.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def colour_rows(n: int, start: int = 0) -> list[dict]:
    """Row i: image 0 has red channel 10 * i (encodes the row), image 1 is blue."""
    return [
        {
            "caption": f"caption {start + i}",
            "jpg_0": solid((10 * (start + i), 100, 0)),
            "jpg_1": solid(BLUE),
            "label_0": [1.0, 0.0, 0.5][(start + i) % 3],
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, lines: list) -> Path:
    with open(path, "w") as f:
        for line in lines:
            f.write(line if isinstance(line, str) else json.dumps(line))
            f.write("\n")
    return path


def jsonl_line(**overrides) -> dict:
    """A valid pairs.jsonl line over ``a.png`` / ``b.png``; a key set to ``...`` is left out."""
    line = {"caption": "c", "image_0": "a.png", "image_1": "b.png", "label_0": 1}
    line.update(overrides)
    return {k: v for k, v in line.items() if v is not ...}
