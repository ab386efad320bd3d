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

Batches: :mod:`lit_pref.datamodules.pair_batches`; the data module: :mod:`lit_pref.datamodules.pair_datamodule`.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset

from .encoding_cache import BAD, ENCODED, EncodingStore
from .image_modes import crop_offset, resize_shorter, image_to_tensor, to_rgb
from .pair_batches import collate_pairs
from .pair_rows import BadRowError, Rows, describe_row, list_sources, scan_jsonl, scan_parquet

CACHED_ROW_GROUPS = 4  # parquet row groups of images kept in memory per process

logger = logging.getLogger(__name__)

# How many reasons a "skip" warning quotes.
_MAX_REASONS_IN_WARNING = 5


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
        self.sources = list_sources(self.path)

        rows = Rows()
        problems: list[str] = []
        for idx, source in enumerate(self.sources):
            n_before = len(problems)
            if source.kind == "parquet":
                scan_parquet(source, idx, rows, problems)
            else:
                scan_jsonl(source, idx, rows, problems, allow_outside_paths)
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
                message = (f"{describe_row(source, self._rows.locator[row])}: {column} cannot be "
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
        state = None if self.encodings is None else self.encodings.state(position)
        if state == ENCODED:
            return {**self.encodings.item(position), "label_0": torch.tensor(self._rows.labels[row], dtype=torch.float32),
                    "caption": self._rows.captions[row], "index": position}
        if state == BAD:  # its images did not decode before (on_bad_row="skip")
            return None
        pair = self._decode_pair(row)
        if pair is None:
            if self.encodings is not None:
                self.encodings.mark_bad(position)
            return None
        rng = self._rng(row)
        u_top, u_left, flip_draw = rng.random(3)
        flip = self.random_flip and flip_draw < 0.5
        if self.center_crop:
            u_top = u_left = 0.5
        R = self.resolution
        outputs, crop_top_left = [], None
        for image in pair:
            resized = resize_shorter(image, R)
            if flip:
                resized = resized.transpose(Image.FLIP_LEFT_RIGHT)
            w, h = resized.size
            if self.center_crop:
                top, left = int(round((h - R) / 2)), int(round((w - R) / 2))
            else:
                top, left = crop_offset(h, R, u_top), crop_offset(w, R, u_left)
            outputs.append(image_to_tensor(resized.crop((left, top, left + R, top + R))))
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

