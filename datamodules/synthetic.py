"""Synthetic preference pairs: coloured shapes whose winner matches the caption.

Every row has a caption such as ``"a red circle on a white background"``. The
winner shows the caption's colour and shape; the loser differs in colour, in
shape or in both (same background). The winner's side is random (``label_0``
1 or 0); with ``tie_fraction`` that fraction of rows are ties (``label_0 =
0.5``, both images correct). The drawing helpers (:func:`draw_shape`,
:func:`caption_for`, :data:`COLOURS`, :data:`SHAPES`, :data:`BACKGROUNDS`) use
numpy only and are meant to be reused by the toy world.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from PIL import Image

from lit_pref.formats.pairs import PAIR_SCHEMA, write_pairs_parquet

from .generated import GeneratedPairsDataModule

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "SHAPES",
    "SyntheticPreferenceDataModule",
    "caption_for",
    "draw_shape",
    "make_synthetic_pairs",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}

# Shape sizes as fractions of the resolution: "small" 7-10 px and "large"
# 14-20 px at 32 px (the toy world's ranges).
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (7 / 32, 10 / 32), "large": (14 / 32, 20 / 32)}

# Bump when the generator's output changes, so cached data sets are rebuilt.
GENERATOR_VERSION = 1


def caption_for(colour: str, shape: str, background: str) -> str:
    """``"a red circle on a white background"``."""
    return f"a {colour} {shape} on a {background} background"


def shape_mask(shape: str, size: float, center: tuple[float, float], resolution: int) -> np.ndarray:
    """Boolean ``[resolution, resolution]`` mask of a filled shape.

    Args:
        shape: ``"circle"`` (diameter ``size``), ``"square"`` (side ``size``,
            axis-aligned) or ``"triangle"`` (upright isosceles, base and height
            ``size``).
        size: Extent of the shape in pixels.
        center: ``(row, col)`` of the shape's centre in pixels (floats allowed).
        resolution: Side of the square image.
    """
    cy, cx = center
    # pixel centres
    yy, xx = np.meshgrid(np.arange(resolution) + 0.5, np.arange(resolution) + 0.5, indexing="ij")
    half = size / 2.0
    if shape == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= half**2
    if shape == "square":
        return (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
    if shape == "triangle":
        top = cy - half
        depth = (yy - top) / size  # 0 at the apex, 1 at the base
        return (depth >= 0) & (depth <= 1) & (np.abs(xx - cx) <= depth * half)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def draw_shape(
    shape: str,
    colour: str,
    size: float,
    center: tuple[float, float],
    background: str,
    resolution: int,
) -> np.ndarray:
    """Draws one filled shape on a plain background.

    Args:
        shape: One of :data:`SHAPES`.
        colour: One of :data:`COLOURS` (pure RGB colours).
        size: Extent of the shape in pixels (see :func:`shape_mask`).
        center: ``(row, col)`` of the centre in pixels.
        background: ``"white"`` or ``"black"``.
        resolution: Side of the square image.

    Returns:
        ``np.uint8`` array ``[resolution, resolution, 3]``.
    """
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {list(COLOURS)}")
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; expected one of {list(BACKGROUNDS)}")
    image = np.empty((resolution, resolution, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[background]
    image[shape_mask(shape, size, center, resolution)] = COLOURS[colour]
    return image


def random_placement(
    rng: np.random.Generator, resolution: int, size_class: str | None = None
) -> tuple[float, tuple[float, float]]:
    """Random size and a centre that keeps the shape inside the image.

    Args:
        rng: Source of randomness.
        resolution: Side of the square image.
        size_class: ``"small"`` or ``"large"`` (see :data:`SIZE_RANGES`); None
            picks one with probability 0.5 each.
    """
    if size_class is None:
        size_class = "small" if rng.random() < 0.5 else "large"
    elif size_class not in SIZE_RANGES:
        raise ValueError(f"unknown size_class {size_class!r}; expected one of {list(SIZE_RANGES)}")
    lo, hi = SIZE_RANGES[size_class]
    size = float(rng.integers(round(lo * resolution), round(hi * resolution) + 1))
    size = max(size, 2.0)
    half = size / 2.0
    cy = float(rng.uniform(half, resolution - half))
    cx = float(rng.uniform(half, resolution - half))
    return size, (cy, cx)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _generate_rows(num_pairs: int, resolution: int, tie_fraction: float, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    num_ties = int(round(num_pairs * tie_fraction))
    is_tie = np.zeros(num_pairs, dtype=bool)
    is_tie[rng.permutation(num_pairs)[:num_ties]] = True
    colours, shapes, backgrounds = list(COLOURS), list(SHAPES), list(BACKGROUNDS)

    rows: dict[str, list] = {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": []}
    for i in range(num_pairs):
        colour = colours[rng.integers(len(colours))]
        shape = shapes[rng.integers(len(shapes))]
        background = backgrounds[rng.integers(len(backgrounds))]
        size_w, center_w = random_placement(rng, resolution)
        winner = draw_shape(shape, colour, size_w, center_w, background, resolution)
        if is_tie[i]:
            size_o, center_o = random_placement(rng, resolution)
            other = draw_shape(shape, colour, size_o, center_o, background, resolution)
            images, label = (winner, other), 0.5
        else:
            mismatch = ("colour", "shape", "both")[rng.integers(3)]
            l_colour, l_shape = colour, shape
            if mismatch in ("colour", "both"):
                l_colour = [c for c in colours if c != colour][rng.integers(len(colours) - 1)]
            if mismatch in ("shape", "both"):
                l_shape = [s for s in shapes if s != shape][rng.integers(len(shapes) - 1)]
            size_l, center_l = random_placement(rng, resolution)
            loser = draw_shape(l_shape, l_colour, size_l, center_l, background, resolution)
            if rng.random() < 0.5:
                images, label = (winner, loser), 1.0
            else:
                images, label = (loser, winner), 0.0
        rows["caption"].append(caption_for(colour, shape, background))
        rows["jpg_0"].append(_png(images[0]))
        rows["jpg_1"].append(_png(images[1]))
        rows["label_0"].append(label)
    return rows


def make_synthetic_pairs(
    path: str | os.PathLike,
    num_pairs: int = 256,
    resolution: int = 32,
    tie_fraction: float = 0.0,
    seed: int = 0,
    rows_per_file: int | None = None,
) -> Path:
    """Writes a Pick-a-Pic-layout parquet of synthetic shape preference pairs.

    The output is a deterministic function of the arguments (the same seed
    gives byte-identical PNG images, captions and labels). It is written to a
    temporary name in the same directory and renamed, so an interrupted run
    never leaves a half-written data set at ``path``.

    Args:
        path: Output ``.parquet`` file, or with ``rows_per_file`` an output
            directory of shards ``part-00000.parquet``, ``part-00001.parquet``, ...
        num_pairs: Number of pairs (rows).
        resolution: Side of the square PNG images.
        tie_fraction: Fraction of rows that are ties (``label_0 = 0.5``, both
            images correct), rounded to a whole number of rows.
        seed: Seed of everything random.
        rows_per_file: Rows per shard; None writes a single file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be at least 1, got {num_pairs}")
    if not 0.0 <= tie_fraction <= 1.0:
        raise ValueError(f"tie_fraction must be in [0, 1], got {tie_fraction}")
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8, got {resolution}")
    if rows_per_file is not None and rows_per_file < 1:
        raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file}")
    table = pa.table(_generate_rows(num_pairs, resolution, tie_fraction, seed), schema=PAIR_SCHEMA)
    return write_pairs_parquet(table, path, rows_per_file)


class SyntheticPreferenceDataModule(GeneratedPairsDataModule):
    """Generated shape pairs (no downloads): the winner shows the caption's colour and shape.

    ``prepare_data`` writes ``train.parquet``, ``val.parquet`` and ``meta.json`` under ``data_dir`` when
    they are missing or were made with other parameters (see :class:`GeneratedPairsDataModule`).

    Args:
        data_dir: Directory for the generated files.
        num_pairs: Number of training pairs.
        num_val_pairs: Number of validation pairs (0 for no validation set).
        tie_fraction: Fraction of pairs that are ties (``label_0 = 0.5``).
        seed: Seed of the generator and of the per-item flip decisions.
        resolution: Side of the square images in pixels.
        batch_size: Training batch size.
        val_batch_size: Validation batch size; None uses ``batch_size``.
        num_workers: DataLoader worker processes (persistent when > 0).
        random_flip: Flip training pairs horizontally with probability 0.5.
        on_bad_row: ``"raise"`` or ``"skip"`` (see :class:`PreferencePairDataModule`).
    """

    def __init__(
        self,
        data_dir: str = "data/synthetic_pairs",
        num_pairs: int = 256,
        num_val_pairs: int = 32,
        tie_fraction: float = 0.0,
        seed: int = 0,
        resolution: int = 32,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        random_flip: bool = False,
        on_bad_row: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(data_dir, num_pairs, num_val_pairs, seed, resolution, batch_size, val_batch_size,
                         num_workers, random_flip, on_bad_row)
        self.tie_fraction = tie_fraction

    def generation_params(self) -> dict:
        return {
            "generator_version": GENERATOR_VERSION,
            "num_pairs": self.num_pairs,
            "num_val_pairs": self.num_val_pairs,
            "tie_fraction": self.tie_fraction,
            "seed": self.seed,
            "resolution": self.resolution,
        }

    def write_pairs(self, path: Path, num_pairs: int, seed: int, split: str) -> None:
        make_synthetic_pairs(path, num_pairs, self.resolution, self.tie_fraction, seed)
