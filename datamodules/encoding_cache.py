"""An on-disk, memory-mapped cache of what the frozen encoders make of a preference-pair data set.

The VAE and the text encoder(s) are frozen, so their outputs for a given item never change: the cache stores,
per item, the VAE posterior of both images (mean and log-variance, from which each step still draws a fresh
latent exactly as a fresh encoding would) and, per distinct caption, the text embeddings. An entry is keyed by
the model (``DiffusionBackbone.encoder_fingerprint()``: VAE, text encoders, tokenizers, dtypes) and by the data
(the dataset's ``cache_identity()``: files, rows, preprocessing); a change of either selects another entry, which
is built on first use. ``lit_pref.callbacks.EncodingCache`` builds and attaches entries at the start of fit.

Layout of one entry, ``<cache_dir>/<data key>-<model key>/`` (written in a temporary folder, renamed when done)::

    manifest.json                          fingerprints, data identity, array dtypes
    latent_dist_0.npy, latent_dist_1.npy   (N, 2C, h, w) VAE posterior parameters of image 0 / image 1
    text_hidden.npy                        (U, 77, D) per distinct caption (text_pooled.npy (U, P) for SDXL)
    caption_index.npy                      (N,) row of each item's caption in text_*.npy
    original_size.npy, crop_top_left.npy   (N, 2) as the dataset item gives them
    valid.npy                              (N,) False where an image did not decode (``on_bad_row="skip"``)

bfloat16 arrays are stored as int16 bit patterns (numpy has no bfloat16); the manifest names the real dtype.
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

FORMAT_VERSION = 1
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
    """A finished cache entry, read through memory maps (opened lazily in each process, so it pickles cheaply
    into DataLoader workers)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest_file = self.path / "manifest.json"
        try:
            self.manifest = json.loads(manifest_file.read_text())
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{manifest_file}: not a finished encoding-cache entry ({e})") from e
        if self.manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{manifest_file}: cache format {self.manifest.get('format')}, expected {FORMAT_VERSION}")
        self._arrays: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.manifest["num_items"])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def _array(self, name: str) -> np.ndarray:
        if self._arrays is None:
            self._arrays = {p.stem: np.load(p, mmap_mode="r") for p in self.path.glob("*.npy")}
        return self._arrays[name]

    def item(self, index: int) -> dict[str, Any] | None:
        """The cached encodings of item ``index`` (``latent_dist_0``, ``latent_dist_1``, ``text``,
        ``original_size``, ``crop_top_left``), or None if its images did not decode when the entry was built."""
        if not bool(self._array("valid")[index]):
            return None
        dtypes = {name: _DTYPES[d] for name, d in self.manifest["dtypes"].items()}
        caption = int(self._array("caption_index")[index])
        text = {key: _to_tensor(self._array(f"text_{key}")[caption], dtypes[f"text_{key}"])
                for key in self.manifest["text_keys"]}
        return {
            "latent_dist_0": _to_tensor(self._array("latent_dist_0")[index], dtypes["latent_dist"]),
            "latent_dist_1": _to_tensor(self._array("latent_dist_1")[index], dtypes["latent_dist"]),
            "text": text,
            "original_size": torch.from_numpy(np.array(self._array("original_size")[index])),
            "crop_top_left": torch.from_numpy(np.array(self._array("crop_top_left")[index])),
        }


def distinct_captions(dataset: CacheableDataset) -> tuple[list[str], np.ndarray]:
    """The sorted distinct captions and each item's index into them."""
    captions = dataset.captions
    distinct = sorted(set(captions))
    position = {c: i for i, c in enumerate(distinct)}
    return distinct, np.array([position[c] for c in captions], dtype=np.int64)


def allocate(path: Path, dataset: CacheableDataset, encoder: Encoder, model_fingerprint: str) -> None:
    """Create the entry's arrays in folder ``path`` (shapes probed with one blank image and the empty prompt)."""
    probe_latent = encoder.encode_latent_dist(torch.zeros(1, 3, dataset.resolution, dataset.resolution))
    probe_text = encoder.encode_text([""])
    distinct, caption_index = distinct_captions(dataset)
    n = len(dataset)
    shapes = {
        "latent_dist_0": ((n, *probe_latent.shape[1:]), probe_latent.dtype),
        "latent_dist_1": ((n, *probe_latent.shape[1:]), probe_latent.dtype),
        **{f"text_{k}": ((len(distinct), *v.shape[1:]), v.dtype) for k, v in probe_text.items()},
    }
    for name, (shape, dtype) in shapes.items():
        np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=_STORAGE[dtype], shape=shape).flush()
    for name in ("original_size", "crop_top_left"):
        np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=np.int64, shape=(n, 2)).flush()
    np.lib.format.open_memmap(path / "valid.npy", mode="w+", dtype=np.bool_, shape=(n,)).flush()
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
    (path / "manifest.pending.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


class _Indexed(Dataset):
    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return self.indices[i], self.dataset[self.indices[i]]


def fill(path: Path, dataset: CacheableDataset, encoder: Encoder, rank: int = 0, world_size: int = 1,
         batch_size: int = 16, num_workers: int = 0) -> None:
    """Encode this process's share (every ``world_size``-th item and distinct caption from ``rank``) into the
    arrays made by :func:`allocate`."""
    arrays = {p.stem: np.load(p, mmap_mode="r+") for p in path.glob("*.npy") if p.stem != "caption_index"}
    n = len(dataset)
    loader = DataLoader(_Indexed(dataset.uncached(), range(rank, n, world_size)), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=list)
    done = 0
    for batch in loader:
        kept = [(i, item) for i, item in batch if item is not None]
        for i, item in batch:
            arrays["valid"][i] = item is not None
        if kept:
            rows = [i for i, _ in kept]
            for which in (0, 1):
                images = torch.stack([item[f"image_{which}"] for _, item in kept])
                arrays[f"latent_dist_{which}"][rows] = _to_numpy(encoder.encode_latent_dist(images))
            arrays["original_size"][rows] = np.stack([item["original_size"].numpy() for _, item in kept])
            arrays["crop_top_left"][rows] = np.stack([item["crop_top_left"].numpy() for _, item in kept])
        done += len(batch)
        if done % (50 * batch_size) < batch_size:
            logger.info("encoding cache %s: %d of %d items (process %d)", path.name, done, len(loader.dataset), rank)
    distinct, _ = distinct_captions(dataset)
    mine = list(range(rank, len(distinct), world_size))
    for start in range(0, len(mine), batch_size):
        rows = mine[start:start + batch_size]
        for key, value in encoder.encode_text([distinct[r] for r in rows]).items():
            arrays[f"text_{key}"][rows] = _to_numpy(value)
    for array in arrays.values():
        array.flush()


def finalize(path: Path, final: Path) -> None:
    """Write the manifest and move the finished entry into place."""
    os.replace(path / "manifest.pending.json", path / "manifest.json")
    if final.exists():  # another run finished the same entry meanwhile: identical content, keep theirs
        shutil.rmtree(path, ignore_errors=True)
        return
    os.replace(path, final)


def new_build_dir(final: Path) -> Path:
    """A fresh temporary folder beside ``final`` to build it in."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))


def open_entry(final: Path, dataset: CacheableDataset, model_fingerprint: str) -> EncodingStore:
    """Open a finished entry, checking that it was made from this data set and model (not just a prefix match)."""
    store = EncodingStore(final)
    if store.manifest["model_fingerprint"] != model_fingerprint or store.manifest["data_identity"] != dataset.cache_identity():
        raise ValueError(f"{final}: the entry's fingerprints differ from the data set's and model's; delete the folder")
    return store


def open_or_build(cache_dir: str | os.PathLike, dataset: CacheableDataset, encoder: Encoder,
                  batch_size: int = 16, num_workers: int = 0) -> EncodingStore:
    """The entry for ``dataset`` and ``encoder`` in ``cache_dir``, built first if missing (in one process;
    ``lit_pref.callbacks.EncodingCache`` shares the work between the processes of a distributed run)."""
    model_fingerprint = encoder.encoder_fingerprint()
    final = entry_path(cache_dir, dataset, model_fingerprint)
    if not (final / "manifest.json").is_file():
        tmp = new_build_dir(final)
        try:
            allocate(tmp, dataset, encoder, model_fingerprint)
            fill(tmp, dataset, encoder, batch_size=batch_size, num_workers=num_workers)
            finalize(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return open_entry(final, dataset, model_fingerprint)
