"""Build or reuse the encoding cache of the training and validation pairs at the start of fit."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_pref.datamodules.encoding_cache import (
    CacheableDataset,
    EncodingStore,
    allocate,
    entry_path,
    fill,
    finalize,
    new_build_dir,
    open_entry,
)


class EncodingCache(Callback):
    """Run the frozen VAE and text encoder(s) once per image and caption instead of at every training step.

    At the start of fit, for the datamodule's ``train_dataset`` and ``val_dataset`` (``PreferencePairDataModule``
    and its subclasses), the callback finds the cache entry for that data and the model's encoders under
    ``cache_dir``, builds it if missing (on the model's device), and attaches it to the data set: its batches then
    carry VAE posteriors and text embeddings instead of images, no image is decoded, and the module's step skips
    both encoders. Training is unchanged: each step still draws a fresh latent from the cached posterior, exactly
    as a fresh encoding would (same values for the same random state).

    Entries are keyed by ``DiffusionBackbone.encoder_fingerprint()`` (VAE, text encoders, tokenizers, dtypes) and
    the data set's ``cache_identity()`` (files, rows, resolution, crop, flip and -- when they are random -- the
    seed), so changing the model or the data builds a new entry; old ones stay on disk until deleted. In a
    distributed run the processes share the encoding work and ``cache_dir`` must be on a file system they share.
    The cache serves ``fit`` (training and validation batches); ``validate`` and ``test`` read images.

    Disk use per item: two posteriors (``2 x 2C x h x w`` values in the VAE's dtype: 128 KiB at 512 px in float32)
    plus, per distinct caption, the text embeddings (``77 x D`` in the model's dtype: 118 KiB for SD1.5 in bf16).
    """

    def __init__(self, cache_dir: str, batch_size: int = 16, num_workers: int = 0) -> None:
        """
        Args:
            cache_dir: Folder of the cache entries (created if missing).
            batch_size: Images (and captions) per encoder call while building an entry.
            num_workers: DataLoader workers decoding images while building an entry.
        """
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ValueError("EncodingCache needs a datamodule: call trainer.fit(model, datamodule=...)")
        datasets = [getattr(datamodule, name, None) for name in ("train_dataset", "val_dataset")]
        datasets = [d for d in datasets if d is not None]
        if not datasets or not all(hasattr(d, "cache_identity") for d in datasets):
            raise TypeError(f"EncodingCache: {type(datamodule).__name__} has no train_dataset / val_dataset that "
                            "supports caching (lit_pref.datamodules.PreferencePairDataModule and its subclasses do)")
        backbone = pl_module.backbone
        model_fingerprint = backbone.encoder_fingerprint()
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # building draws no training randomness
            for dataset in datasets:
                dataset.use_encodings(self._entry(trainer, backbone, model_fingerprint, dataset))

    def _entry(self, trainer: Trainer, backbone, model_fingerprint: str, dataset: CacheableDataset) -> EncodingStore:
        strategy = trainer.strategy
        final = entry_path(self.cache_dir, dataset, model_fingerprint)
        if strategy.broadcast(not (final / "manifest.json").is_file()):
            rank_zero_info(f"EncodingCache: encoding {len(dataset)} pairs into {final}")
            tmp = Path(strategy.broadcast(str(new_build_dir(final)) if trainer.is_global_zero else None))
            try:
                if trainer.is_global_zero:
                    allocate(tmp, dataset, backbone, model_fingerprint)
                strategy.barrier("encoding_cache_allocated")
                fill(tmp, dataset, backbone, trainer.global_rank, trainer.world_size, self.batch_size, self.num_workers)
                strategy.barrier("encoding_cache_filled")
                if trainer.is_global_zero:
                    finalize(tmp, final)
                strategy.barrier("encoding_cache_finalized")
            except BaseException:
                if trainer.is_global_zero:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
        else:
            rank_zero_info(f"EncodingCache: reusing {final}")
        return open_entry(final, dataset, model_fingerprint)
