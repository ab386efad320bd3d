"""Preference-pair data: Pick-a-Pic-style parquet and image-folder + JSONL.

Two input formats are read into one kind of item:

1. **Parquet** (Pick-a-Pic layout): a ``.parquet`` file or a directory of
   ``*.parquet`` shards (read in sorted name order). Columns ``caption``
   (string), ``jpg_0`` / ``jpg_1`` (encoded image bytes, any format PIL reads)
   and ``label_0`` (1 = image 0 preferred, 0 = image 1 preferred, 0.5 = tie).
   Extra columns (e.g. ``critique``, ``instructions``) are ignored.
2. **JSONL**: a ``.jsonl`` file whose lines are
   ``{"caption": str, "image_0": path, "image_1": path, "label_0": 0 | 0.5 | 1}``;
   relative image paths are resolved against the JSONL file's directory, and must stay inside it: a path
   that is absolute or climbs out (``../``) makes a bad row unless ``allow_outside_paths=True``.

Captions may be any Arrow string type (``string``, ``large_string``, ``string_view``, or dictionary-encoded
strings: pandas ``category``). Images of any mode PIL reads become 8-bit RGB by
:func:`lit_pref.datamodules.image_modes.to_rgb`: 16-bit grayscale scaled by its range, transparency composited on
white; non-finite or out-of-range float pixels make the row bad (an image that does not decode).

Validation follows "nothing lost, nothing silently trained on": metadata
(columns, keys, caption types, labels, JSON syntax, image files existing) is
checked eagerly when the data set is built; images are decoded lazily in
``__getitem__``. With ``on_bad_row="raise"`` any problem raises
:class:`BadRowError` naming the file, the row (0-based row index within the
file for parquet, 1-based line number for JSONL) and the problem. With
``on_bad_row="skip"`` bad-metadata rows are dropped at construction (and a
warning is logged), and rows whose images do not decode come back as ``None``
from ``__getitem__``; :func:`collate_pairs` drops them and reports how many in
the batch's ``num_skipped``.

Batch contract (output of :func:`collate_pairs`)::

    images_0        FloatTensor[B, 3, R, R] in [-1, 1]
    images_1        FloatTensor[B, 3, R, R] in [-1, 1]
    label_0         FloatTensor[B]   (0., 0.5, 1.; ties are passed through)
    captions        list[str] of length B
    original_sizes  LongTensor[B, 2] (height, width of image 0 before resize/crop)
    crop_top_left   LongTensor[B, 2] (top, left of the crop in resized-image pixels)
    indices         LongTensor[B]    (the items' indices in the dataset)
    num_skipped     int              (items dropped because an image did not decode)

With an encoding cache attached (``lit_pref.callbacks.EncodingCache``, see ``datamodules/encoding_cache.py``) the
images are replaced by what the frozen encoders made of them::

    latent_dists_0  Tensor[B, 2C, h, w] VAE posterior (mean, log-variance) of image 0, the VAE's dtype
    latent_dists_1  Tensor[B, 2C, h, w] the same for image 1
    text            {"hidden": Tensor[B, 77, D]} (SDXL adds "pooled": Tensor[B, P]), the model's dtype
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import bisect
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lit_pref.formats.jsonl import read_json_line

from .encoding_cache import EncodingStore
from .image_modes import to_rgb
from .resumable import EpochSampler, ResumableLoader

CACHED_ROW_GROUPS = 4  # parquet row groups of images kept in memory per process

logger = logging.getLogger(__name__)

__all__ = [
    "BadRowError",
    "PreferencePairDataset",
    "PreferencePairDataModule",
    "collate_pairs",
]

VALID_LABELS = (0.0, 0.5, 1.0)
PARQUET_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
JSONL_KEYS = ("caption", "image_0", "image_1", "label_0")
OnBadRow = Literal["raise", "skip"]

# How many reasons a "skip" warning quotes.
_MAX_REASONS_IN_WARNING = 5


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


def _where(source: _Source, locator: int) -> str:
    """``"picks.parquet row 3"`` or ``"pairs.jsonl line 5"``."""
    unit = "row" if source.kind == "parquet" else "line"
    return f"{source.path.name} {unit} {locator}"


def _list_sources(path: str | os.PathLike) -> list[_Source]:
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


class _Rows:
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


def _scan_parquet(source: _Source, source_idx: int, rows: _Rows, problems: list[str]) -> None:
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
        where = _where(source, i)
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


def _scan_jsonl(source: _Source, source_idx: int, rows: _Rows, problems: list[str],
                allow_outside_paths: bool = False) -> None:
    """Reads and validates every line of one JSONL file (blank lines are ignored)."""
    base = source.path.parent
    with open(source.path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = _where(source, line_no)
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


# --------------------------------------------------------------------------- #
# Image processing
# --------------------------------------------------------------------------- #


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> FloatTensor[3, H, W] in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def _resize_shorter(image: Image.Image, resolution: int) -> Image.Image:
    """Resizes so that the shorter side equals ``resolution`` (bilinear, antialiased)."""
    w, h = image.size
    if min(w, h) == resolution:
        return image
    scale = resolution / min(w, h)
    new_w = max(resolution, int(round(w * scale)))
    new_h = max(resolution, int(round(h * scale)))
    # Pillow's convolution-based resize antialiases when it downsamples.
    return image.resize((new_w, new_h), Image.BILINEAR)


def _crop_offset(extent: int, resolution: int, u: float) -> int:
    """Offset of a ``resolution`` window in ``extent`` pixels at relative position u in [0, 1]."""
    room = extent - resolution
    return min(int(u * (room + 1)), room)


# --------------------------------------------------------------------------- #
# Dataset
# --------------------------------------------------------------------------- #


class PreferencePairDataset(Dataset):
    """Preference pairs from a parquet file / shard directory or a JSONL file.

    Items are dicts ``{"image_0": FloatTensor[3, R, R], "image_1": ...,
    "label_0": FloatTensor[] , "caption": str, "original_size": LongTensor[2],
    "crop_top_left": LongTensor[2], "index": int}`` with images in [-1, 1], or ``None`` when
    an image fails to decode and ``on_bad_row="skip"``. Batch them with
    :func:`collate_pairs` (or :meth:`collate`, which knows the resolution).

    Parquet image bytes are read lazily, one parquet row group at a time; each
    process (each DataLoader worker) keeps the last ``CACHED_ROW_GROUPS`` row
    groups, so memory stays bounded whatever the data set's size. Shuffled
    access reads one row group per item: write shards with small row groups
    (a few hundred rows) for fast random access.

    Args:
        path: A ``.parquet`` file, a directory of ``*.parquet`` shards (read in
            sorted name order) or a ``.jsonl`` file (see the module docstring
            for the layouts).
        resolution: Side of the square output images in pixels.
        center_crop: Crop the centre after resizing the shorter side to
            ``resolution``; if False, crop at a random position.
        random_flip: Flip horizontally with probability 0.5.
        on_bad_row: ``"raise"`` raises :class:`BadRowError` on the first bad
            row; ``"skip"`` drops rows with bad metadata (logging a warning)
            and returns ``None`` for rows whose images do not decode.
        seed: Seed of the per-item random crop/flip decisions. Item ``i`` always
            gets the same decisions for a given seed (independent of the epoch
            and of the DataLoader worker that loads it). The crop position
            (relative) and the flip are shared by the two images of a pair.
        allow_outside_paths: JSONL only: accept image paths that are absolute
            or lead out of the JSONL's folder (by default such rows are bad).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: bool = False,
        on_bad_row: Literal["raise", "skip"] = "raise",
        seed: int = 0,
        allow_outside_paths: bool = False,
    ) -> None:
        if on_bad_row not in ("raise", "skip"):
            raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {on_bad_row!r}")
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.path = Path(path)
        self.resolution = int(resolution)
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.on_bad_row = on_bad_row
        self.seed = int(seed)
        self.sources = _list_sources(self.path)

        rows = _Rows()
        problems: list[str] = []
        for idx, source in enumerate(self.sources):
            n_before = len(problems)
            if source.kind == "parquet":
                _scan_parquet(source, idx, rows, problems)
            else:
                _scan_jsonl(source, idx, rows, problems, allow_outside_paths)
            if on_bad_row == "raise" and len(problems) > n_before:
                raise BadRowError(problems[n_before])
        if problems:
            shown = "; ".join(problems[:_MAX_REASONS_IN_WARNING])
            more = len(problems) - _MAX_REASONS_IN_WARNING
            logger.warning(
                "%s: skipped %d of %d rows with bad metadata: %s%s",
                self.path, len(problems), len(problems) + len(rows), shown,
                f"; ... and {more} more" if more > 0 else "",
            )
        if len(rows) == 0:
            files = ", ".join(str(s.path) for s in self.sources)
            raise BadRowError(f"no valid preference pairs in {files}")
        self._rows = rows
        self.skipped_at_setup = len(problems)
        self._indices: np.ndarray | None = None  # set by `view`
        self._tables: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._tables_pid = os.getpid()
        self._starts: dict[int, list[int]] = {}
        self.encodings: EncodingStore | None = None  # set by `use_encodings`

    # -- views ------------------------------------------------------------- #

    def view(self, indices: Sequence[int] | None = None, *, center_crop: bool | None = None,
             random_flip: bool | None = None) -> "PreferencePairDataset":
        """A dataset over a subset of the rows, sharing the metadata (used for splits).

        Args:
            indices: Positions in this dataset to keep (None keeps all).
            center_crop: Overrides ``center_crop`` for the view.
            random_flip: Overrides ``random_flip`` for the view.
        """
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._tables = OrderedDict()
        new._tables_pid = os.getpid()
        new.encodings = None  # another view has other items: it needs its own cache entry
        if indices is not None:
            base = np.arange(len(self)) if self._indices is None else self._indices
            new._indices = np.asarray(base)[np.asarray(indices, dtype=np.int64)]
        if center_crop is not None:
            new.center_crop = center_crop
        if random_flip is not None:
            new.random_flip = random_flip
        return new

    def _row(self, index: int) -> int:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        return index if self._indices is None else int(self._indices[index])

    def __len__(self) -> int:
        return len(self._rows) if self._indices is None else len(self._indices)

    @property
    def captions(self) -> list[str]:
        """Captions of the rows, in dataset order."""
        return [self._rows.captions[self._row(i)] for i in range(len(self))]

    @property
    def labels(self) -> list[float]:
        """``label_0`` of the rows, in dataset order."""
        return [self._rows.labels[self._row(i)] for i in range(len(self))]

    # -- encoding cache (lit_pref.datamodules.encoding_cache, lit_pref.callbacks.EncodingCache) -- #

    def cache_identity(self) -> dict[str, Any]:
        """Everything this view's items depend on, for the encoding cache's key: the input files (path, size,
        modification time; for JSONL also every image file), the rows in view order, and the preprocessing.

        The random crop and flip of a row are drawn from ``(seed, row)`` and are the same in every epoch, so a
        cached item is exactly the augmented pair :meth:`__getitem__` returns; the seed is part of the identity
        only when it changes the pixels (random crop or flip).
        """
        def stat(path: str | Path) -> list:
            st = os.stat(path)
            return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]

        rows = [self._row(i) for i in range(len(self))]
        where = np.array([(self._rows.source_idx[r], self._rows.locator[r]) for r in rows], dtype=np.int64)
        images = hashlib.sha256()
        for r in rows:
            for path in self._rows.image_paths[r] or ():
                images.update(json.dumps(stat(path)).encode())
        augmented = not self.center_crop or self.random_flip
        return {
            "files": [stat(source.path) for source in self.sources],
            "rows": hashlib.sha256(where.tobytes()).hexdigest(),
            "image_files": images.hexdigest(),
            "resolution": self.resolution,
            "center_crop": self.center_crop,
            "random_flip": self.random_flip,
            "seed": self.seed if augmented else None,
        }

    def uncached(self) -> "PreferencePairDataset":
        """This view, decoding images (without the attached encodings)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.encodings = None
        return new

    def use_encodings(self, store: EncodingStore) -> None:
        """Serve items from an encoding-cache entry built for this view: ``latent_dist_0``, ``latent_dist_1``
        and ``text`` instead of ``image_0`` and ``image_1``; no image is decoded."""
        if len(store) != len(self):
            raise ValueError(f"{store.path} holds {len(store)} items, this data set {len(self)}")
        self.encodings = store

    # -- pickling (DataLoader workers): never ship cached tables ------------ #

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tables"] = OrderedDict()
        return state

    # -- image access ------------------------------------------------------- #

    def _row_group(self, source_idx: int, row: int) -> tuple[pa.Table, int]:
        """The image columns of the parquet row group holding ``row``, and the row's offset in it.

        A small LRU cache of row groups per process keeps memory bounded on shuffled access.
        """
        if self._tables_pid != os.getpid():  # forked after the cache was filled
            self._tables = OrderedDict()
            self._tables_pid = os.getpid()
        starts = self._group_starts(source_idx)
        group = bisect.bisect_right(starts, row) - 1
        key = (source_idx, group)
        table = self._tables.get(key)
        if table is None:
            table = pq.ParquetFile(self.sources[source_idx].path).read_row_group(group, columns=["jpg_0", "jpg_1"])
            self._tables[key] = table
            if len(self._tables) > CACHED_ROW_GROUPS:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return table, row - starts[group]

    def _group_starts(self, source_idx: int) -> list[int]:
        starts = self._starts.get(source_idx)
        if starts is None:
            meta = pq.ParquetFile(self.sources[source_idx].path).metadata
            sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            starts = [sum(sizes[:g]) for g in range(len(sizes))]
            self._starts[source_idx] = starts
        return starts

    def _load_image(self, row: int, which: int) -> Image.Image:
        source_idx = self._rows.source_idx[row]
        source = self.sources[source_idx]
        if source.kind == "parquet":
            table, offset = self._row_group(source_idx, self._rows.locator[row])
            data = table.column(f"jpg_{which}")[offset].as_py()
            if data is None:
                raise ValueError("value is null")
            if isinstance(data, str):
                data = data.encode("latin-1")
            image = Image.open(io.BytesIO(data))
        else:
            image = Image.open(self._rows.image_paths[row][which])
        image.load()
        return to_rgb(image)

    def _decode_pair(self, row: int) -> tuple[Image.Image, Image.Image] | None:
        images = []
        for which in (0, 1):
            try:
                images.append(self._load_image(row, which))
            except Exception as e:  # noqa: BLE001 - any decoder failure is a bad row
                source = self.sources[self._rows.source_idx[row]]
                column = f"jpg_{which}" if source.kind == "parquet" else f"image_{which}"
                message = (f"{_where(source, self._rows.locator[row])}: {column} cannot be "
                           f"decoded as an image ({type(e).__name__}: {e})")
                if self.on_bad_row == "raise":
                    raise BadRowError(message) from e
                logger.warning("skipping %s", message)
                return None
        return images[0], images[1]

    def _rng(self, row: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, row])

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        row = self._row(index)
        position = index if index >= 0 else index + len(self)
        if self.encodings is not None:
            item = self.encodings.item(position)
            if item is None:  # its images did not decode when the cache was built (on_bad_row="skip")
                return None
            return {**item, "label_0": torch.tensor(self._rows.labels[row], dtype=torch.float32),
                    "caption": self._rows.captions[row], "index": position}
        pair = self._decode_pair(row)
        if pair is None:
            return None
        rng = self._rng(row)
        u_top, u_left, flip_draw = rng.random(3)
        flip = self.random_flip and flip_draw < 0.5
        if self.center_crop:
            u_top = u_left = 0.5
        R = self.resolution
        outputs, crop_top_left = [], None
        for image in pair:
            resized = _resize_shorter(image, R)
            if flip:
                resized = resized.transpose(Image.FLIP_LEFT_RIGHT)
            w, h = resized.size
            if self.center_crop:
                top, left = int(round((h - R) / 2)), int(round((w - R) / 2))
            else:
                top, left = _crop_offset(h, R, u_top), _crop_offset(w, R, u_left)
            outputs.append(_to_tensor(resized.crop((left, top, left + R, top + R))))
            if crop_top_left is None:  # SDXL conditioning refers to image 0
                crop_top_left = (top, left)
        return {
            "image_0": outputs[0],
            "image_1": outputs[1],
            "label_0": torch.tensor(self._rows.labels[row], dtype=torch.float32),
            "caption": self._rows.captions[row],
            "original_size": torch.tensor([pair[0].height, pair[0].width], dtype=torch.long),
            "crop_top_left": torch.tensor(crop_top_left, dtype=torch.long),
            "index": position,
        }

    def collate(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """:func:`collate_pairs` with this dataset's resolution (for empty batches)."""
        return collate_pairs(items, resolution=self.resolution)


def collate_pairs(items: Sequence[dict[str, Any] | None], resolution: int | None = None) -> dict[str, Any]:
    """Stacks dataset items into the batch dict documented in the module docstring.

    ``None`` items (images that did not decode, ``on_bad_row="skip"``) are
    dropped and counted in ``num_skipped``.

    Args:
        items: Items from :class:`PreferencePairDataset` (dicts or None).
        resolution: Image side, used only to shape the tensors of a batch in
            which every item was dropped (``[0, 3, R, R]``). If None, it is
            taken from the items, and an all-dropped batch has ``R = 0``.
    """
    kept = [item for item in items if item is not None]
    num_skipped = len(items) - len(kept)
    if not kept:
        R = resolution or 0
        return {
            "images_0": torch.zeros(0, 3, R, R),
            "images_1": torch.zeros(0, 3, R, R),
            "label_0": torch.zeros(0),
            "captions": [],
            "original_sizes": torch.zeros(0, 2, dtype=torch.long),
            "crop_top_left": torch.zeros(0, 2, dtype=torch.long),
            "indices": torch.zeros(0, dtype=torch.long),
            "num_skipped": num_skipped,
        }
    if "latent_dist_0" in kept[0]:  # from the encoding cache
        first = {
            "latent_dists_0": torch.stack([item["latent_dist_0"] for item in kept]),
            "latent_dists_1": torch.stack([item["latent_dist_1"] for item in kept]),
            "text": {k: torch.stack([item["text"][k] for item in kept]) for k in kept[0]["text"]},
        }
    else:
        first = {
            "images_0": torch.stack([item["image_0"] for item in kept]),
            "images_1": torch.stack([item["image_1"] for item in kept]),
        }
    return {
        **first,
        "label_0": torch.stack([item["label_0"] for item in kept]).float(),
        "captions": [item["caption"] for item in kept],
        "original_sizes": torch.stack([item["original_size"] for item in kept]).long(),
        "crop_top_left": torch.stack([item["crop_top_left"] for item in kept]).long(),
        "indices": torch.tensor([item["index"] for item in kept], dtype=torch.long),
        "num_skipped": num_skipped,
    }


# --------------------------------------------------------------------------- #
# DataModule
# --------------------------------------------------------------------------- #


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
