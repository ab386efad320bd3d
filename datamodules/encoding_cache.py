"""An on-disk, memory-mapped cache of what the frozen encoders make of a preference-pair data set.

The VAE and the text encoder(s) are frozen, so their outputs for a given item never change: the cache stores,
per item, the VAE posterior of both images (mean and log-variance, from which each step still draws a fresh
latent exactly as a fresh encoding would) and, per distinct caption, the text embeddings. An entry is keyed by
the model (``DiffusionBackbone.encoder_fingerprint()``: VAE, text encoders, tokenizers, dtypes) and by the data
(the dataset's ``cache_identity()``: files, rows, preprocessing); a change of either selects another entry.

An entry is created empty (its arrays allocated, every item "not yet encoded") and filled item by item:
``lit_pref.callbacks.EncodingCache`` writes each batch's encodings through to it during the first epoch (so the
cache costs no start-up), or :func:`fill` encodes the missing items in one pass. An item's arrays are written
before its state says "encoded", so an interrupted fill leaves a valid entry that the next run completes.

Layout of one entry, ``<cache_dir>/<data key>-<model key>/`` (allocated in a temporary folder, renamed when
allocated)::

    manifest.json                          fingerprints, data identity, array dtypes
    state.npy                              (N,) uint8: 0 not yet encoded, 1 encoded, 2 an image did not decode
    latent_dist_0.npy, latent_dist_1.npy   (N, 2C, h, w) VAE posterior parameters of image 0 / image 1
    text_hidden.npy                        (U, 77, D) per distinct caption (text_pooled.npy (U, P) for SDXL)
    caption_index.npy                      (N,) row of each item's caption in text_*.npy
    original_size.npy, crop_top_left.npy   (N, 2) as the dataset item gives them

bfloat16 arrays are stored as int16 bit patterns (numpy has no bfloat16); the manifest names the real dtype.
Several processes (DataLoader workers, the processes of a distributed run) share an entry through the page
cache: ``cache_dir`` must be on a local file system, or one that keeps shared memory maps coherent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

FORMAT_VERSION = 2
MISSING, ENCODED, BAD = 0, 1, 2  # item states
logger = logging.getLogger(__name__)

_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}
_DTYPES = {str(dtype): dtype for dtype in _STORAGE}


class Encoder(Protocol):
    """What the cache needs from a model (``lit_pref.backbone.DiffusionBackbone`` has it)."""

    def encoder_fingerprint(self) -> str: ...
    def encode_latent_dist(self, images: Tensor) -> Tensor: ...
    def encode_text(self, prompts: Sequence[str]) -> dict[str, Tensor]: ...


class CacheableDataset(Protocol):
    """What the cache needs from a data set (``lit_pref.datamodules.PreferencePairDataset`` has it)."""

    resolution: int
    captions: list[str]

    def __len__(self) -> int: ...
    def cache_identity(self) -> dict[str, Any]: ...
    def uncached(self) -> Dataset: ...


def fingerprint(identity: dict[str, Any]) -> str:
    """SHA-256 of a JSON-serialisable identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def entry_path(cache_dir: str | os.PathLike, dataset: CacheableDataset, model_fingerprint: str) -> Path:
    """Where the entry for this data set and model lives."""
    return Path(cache_dir) / f"{fingerprint(dataset.cache_identity())[:16]}-{model_fingerprint[:16]}"


def _to_numpy(tensor: Tensor) -> np.ndarray:
    tensor = tensor.detach().to("cpu").contiguous()
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _to_tensor(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    tensor = torch.from_numpy(np.array(array))  # copy out of the memory map
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


class EncodingStore:
    """A cache entry, read and written through memory maps (opened lazily in each process, so it pickles cheaply
    into DataLoader workers)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest_file = self.path / "manifest.json"
        try:
            self.manifest = json.loads(manifest_file.read_text())
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{manifest_file}: not an encoding-cache entry ({e})") from e
        if self.manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{manifest_file}: cache format {self.manifest.get('format')}, expected "
                             f"{FORMAT_VERSION}; delete the folder")
        self._dtypes = {name: _DTYPES[d] for name, d in self.manifest["dtypes"].items()}
        self._maps: dict[str, dict[str, np.ndarray]] = {"r": {}, "r+": {}}

    def __len__(self) -> int:
        return int(self.manifest["num_items"])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {"r": {}, "r+": {}}}

    def _array(self, name: str, mode: str = "r") -> np.ndarray:
        maps = self._maps[mode]
        if name not in maps:
            maps[name] = np.load(self.path / f"{name}.npy", mmap_mode=mode)
        return maps[name]

    def state(self, index: int) -> int:
        """:data:`MISSING`, :data:`ENCODED` or :data:`BAD` (its images did not decode)."""
        return int(self._array("state")[index])

    def missing(self) -> np.ndarray:
        """Indices of the items not yet encoded."""
        return np.flatnonzero(self._array("state") == MISSING)

    def item(self, index: int) -> dict[str, Any]:
        """The cached encodings of encoded item ``index`` (``latent_dist_0``, ``latent_dist_1``, ``text``,
        ``original_size``, ``crop_top_left``)."""
        caption = int(self._array("caption_index")[index])
        text = {key: _to_tensor(self._array(f"text_{key}")[caption], self._dtypes[f"text_{key}"])
                for key in self.manifest["text_keys"]}
        return {
            "latent_dist_0": _to_tensor(self._array("latent_dist_0")[index], self._dtypes["latent_dist"]),
            "latent_dist_1": _to_tensor(self._array("latent_dist_1")[index], self._dtypes["latent_dist"]),
            "text": text,
            "original_size": torch.from_numpy(np.array(self._array("original_size")[index])),
            "crop_top_left": torch.from_numpy(np.array(self._array("crop_top_left")[index])),
        }

    def write(self, indices: Sequence[int], latent_dist_0: Tensor, latent_dist_1: Tensor, text: dict[str, Tensor],
              original_size: Tensor, crop_top_left: Tensor) -> None:
        """Store the encodings of items ``indices`` (first dimension of every tensor), then mark them encoded."""
        rows = np.asarray(indices, dtype=np.int64)
        if rows.size == 0:
            return
        self._array("latent_dist_0", "r+")[rows] = _to_numpy(latent_dist_0)
        self._array("latent_dist_1", "r+")[rows] = _to_numpy(latent_dist_1)
        captions = self._array("caption_index")[rows]
        for key, value in text.items():
            self._array(f"text_{key}", "r+")[captions] = _to_numpy(value)
        self._array("original_size", "r+")[rows] = _to_numpy(original_size)
        self._array("crop_top_left", "r+")[rows] = _to_numpy(crop_top_left)
        self._array("state", "r+")[rows] = ENCODED  # last: a reader never sees an item half written

    def mark_bad(self, index: int) -> None:
        """Record that item ``index``'s images did not decode (``on_bad_row="skip"``): it is skipped from now on."""
        self._array("state", "r+")[index] = BAD

    def flush(self) -> None:
        """Write this process's changes to disk (the page cache already shares them with other processes)."""
        for array in self._maps["r+"].values():
            array.flush()


def distinct_captions(dataset: CacheableDataset) -> tuple[list[str], np.ndarray]:
    """The sorted distinct captions and each item's index into them."""
    captions = dataset.captions
    distinct = sorted(set(captions))
    position = {c: i for i, c in enumerate(distinct)}
    return distinct, np.array([position[c] for c in captions], dtype=np.int64)


def allocate(path: Path, dataset: CacheableDataset, encoder: Encoder, model_fingerprint: str) -> None:
    """Create an empty entry in folder ``path`` (shapes probed with one blank image and the empty prompt)."""
    probe_latent = encoder.encode_latent_dist(torch.zeros(1, 3, dataset.resolution, dataset.resolution))
    probe_text = encoder.encode_text([""])
    distinct, caption_index = distinct_captions(dataset)
    n = len(dataset)
    shapes = {
        "latent_dist_0": ((n, *probe_latent.shape[1:]), _STORAGE[probe_latent.dtype]),
        "latent_dist_1": ((n, *probe_latent.shape[1:]), _STORAGE[probe_latent.dtype]),
        **{f"text_{k}": ((len(distinct), *v.shape[1:]), _STORAGE[v.dtype]) for k, v in probe_text.items()},
        "original_size": ((n, 2), np.int64),
        "crop_top_left": ((n, 2), np.int64),
        "state": ((n,), np.uint8),
    }
    for name, (shape, dtype) in shapes.items():  # sparse files: zeros cost no disk until written
        np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()
    np.save(path / "caption_index.npy", caption_index)
    manifest = {
        "format": FORMAT_VERSION,
        "num_items": n,
        "num_captions": len(distinct),
        "text_keys": sorted(probe_text),
        "dtypes": {"latent_dist": str(probe_latent.dtype), **{f"text_{k}": str(v.dtype) for k, v in probe_text.items()}},
        "model_fingerprint": model_fingerprint,
        "data_identity": dataset.cache_identity(),
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def create(final: Path, dataset: CacheableDataset, encoder: Encoder, model_fingerprint: str) -> None:
    """Allocate the entry ``final`` in a temporary folder beside it and move it into place (unless another run
    did meanwhile), so a half-allocated entry is never seen."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.allocating-", dir=final.parent))
    try:
        allocate(tmp, dataset, encoder, model_fingerprint)
        if not final.exists():
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_entry(final: Path, dataset: CacheableDataset, model_fingerprint: str) -> EncodingStore:
    """Open an entry, checking that it was made from this data set and model (not just a prefix match)."""
    store = EncodingStore(final)
    if store.manifest["model_fingerprint"] != model_fingerprint or store.manifest["data_identity"] != dataset.cache_identity():
        raise ValueError(f"{final}: the entry's fingerprints differ from the data set's and model's; delete the folder")
    return store


class _Indexed(Dataset):
    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return self.indices[i], self.dataset[self.indices[i]]


def encode_into(store: EncodingStore, encoder: Encoder, indices: Sequence[int], images_0: Tensor, images_1: Tensor,
                captions: Sequence[str], original_sizes: Tensor, crops: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Encode a group of items (both images' VAE posteriors, then the captions), write them to ``store`` as items
    ``indices`` and return the encodings (``latent_dist_0``, ``latent_dist_1``, ``text``) in the group's order.

    ``images_*`` are (B, 3, H, W) in [-1, 1], ``captions`` B strings and ``original_sizes`` / ``crops`` (B, 2), as
    the data set's items give them. What both the write-through callback and :func:`fill` do with a batch."""
    with torch.no_grad():
        latent_dist_0 = encoder.encode_latent_dist(images_0)
        latent_dist_1 = encoder.encode_latent_dist(images_1)
        text = encoder.encode_text(list(captions))
    store.write(indices, latent_dist_0, latent_dist_1, text, original_sizes, crops)
    return latent_dist_0, latent_dist_1, text


def fill(store: EncodingStore, dataset: CacheableDataset, encoder: Encoder, rank: int = 0, world_size: int = 1,
         batch_size: int = 16, num_workers: int = 0) -> None:
    """Encode this process's share (every ``world_size``-th) of the items ``store`` is missing, in one pass."""
    missing = store.missing()
    missing = missing[missing % world_size == rank]  # by index: shares stay disjoint whatever the others have done
    loader = DataLoader(_Indexed(dataset.uncached(), missing), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=list)
    for done, batch in enumerate(loader, start=1):
        for i, item in batch:
            if item is None:
                store.mark_bad(i)
        kept = [(i, item) for i, item in batch if item is not None]
        if kept:
            items = [item for _, item in kept]
            encode_into(store, encoder, [i for i, _ in kept],
                        *(torch.stack([item[key] for item in items]) for key in ("image_0", "image_1")),
                        [item["caption"] for item in items],
                        *(torch.stack([item[key] for item in items]) for key in ("original_size", "crop_top_left")))
        if done % 50 == 0:
            logger.info("encoding cache %s: %d of %d items (process %d)", store.path.name,
                        min(done * batch_size, len(missing)), len(missing), rank)
    store.flush()


def open_or_create(cache_dir: str | os.PathLike, dataset: CacheableDataset, encoder: Encoder) -> EncodingStore:
    """The entry for ``dataset`` and ``encoder`` in ``cache_dir``, created empty if missing (in one process;
    ``lit_pref.callbacks.EncodingCache`` does it for a distributed run)."""
    model_fingerprint = encoder.encoder_fingerprint()
    final = entry_path(cache_dir, dataset, model_fingerprint)
    if not (final / "manifest.json").is_file():
        create(final, dataset, encoder, model_fingerprint)
    return open_entry(final, dataset, model_fingerprint)


def open_or_build(cache_dir: str | os.PathLike, dataset: CacheableDataset, encoder: Encoder,
                  batch_size: int = 16, num_workers: int = 0) -> EncodingStore:
    """The entry for ``dataset`` and ``encoder`` in ``cache_dir`` with every item encoded: the missing ones are
    encoded now, in one pass (the callback instead fills an entry during the first epoch)."""
    store = open_or_create(cache_dir, dataset, encoder)
    fill(store, dataset, encoder, batch_size=batch_size, num_workers=num_workers)
    return store
