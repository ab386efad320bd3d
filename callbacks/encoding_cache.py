"""Cache the frozen encoders' outputs for the training and validation pairs, filled during the first epoch."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_pref.datamodules.encoding_cache import EncodingStore, create, encode_into, entry_path, open_entry


class EncodingCache(Callback):
    """Run the frozen VAE and text encoder(s) once per image and caption instead of at every training step.

    At the start of fit, for the datamodule's ``train_dataset`` and ``val_dataset`` (``PreferencePairDataModule``
    and its subclasses), the callback opens the cache entry for that data and the model's encoders under
    ``cache_dir`` (creating it empty if missing: no encoding before the first step) and attaches it to the data set.
    The entry is filled write-through: an item not yet cached is decoded from its images as without a cache, and
    before the step the callback encodes the batch's images and captions once, writes the encodings to the entry
    and hands the step the encodings instead of the images; an item already cached comes as its encodings, no
    image decoded. So the first epoch costs what it costs without a cache, and later epochs (and later runs on the
    same data and model) skip both encoders. Training is unchanged: each step still draws a fresh latent from the
    cached posterior, exactly as a fresh encoding would (same values for the same random state). An interrupted
    fill resumes where it stopped; in a distributed run each process fills the items it trains on.

    Entries are keyed by ``DiffusionBackbone.encoder_fingerprint()`` (VAE, text encoders, tokenizers, dtypes) and
    the data set's ``cache_identity()`` (files, rows, resolution, crop, flip and -- when they are random -- the
    seed), so changing the model or the data selects a new entry; old ones stay on disk until deleted. In a
    distributed run ``cache_dir`` must be on a local file system the processes share (memory maps).
    ``lit_pref.datamodules.encoding_cache.open_or_build`` fills an entry in one pass instead, ahead of training.

    Disk use per item: two posteriors (``2 x 2C x h x w`` values in the VAE's dtype: 128 KiB at 512 px in float32)
    plus, per distinct caption, the text embeddings (``77 x D`` in the model's dtype: 118 KiB for SD1.5 in bf16).
    """

    def __init__(self, cache_dir: str) -> None:
        """
        Args:
            cache_dir: Folder of the cache entries (created if missing).
        """
        self.cache_dir = cache_dir

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
        with torch.random.fork_rng(devices=devices):  # allocating probes the encoders: no training randomness drawn
            for dataset in datasets:
                final = entry_path(self.cache_dir, dataset, model_fingerprint)
                if trainer.is_global_zero and not (final / "manifest.json").is_file():
                    create(final, dataset, backbone, model_fingerprint)
                trainer.strategy.barrier("encoding_cache_created")
                store = open_entry(final, dataset, model_fingerprint)
                missing = len(store.missing())
                rank_zero_info(f"EncodingCache: {final}: {len(store) - missing} of {len(store)} pairs cached"
                               + (", the rest are cached as they are trained on" if missing else ""))
                dataset.use_encodings(store)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._write_through(pl_module, batch, getattr(trainer.datamodule, "train_dataset", None))

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._write_through(pl_module, batch, getattr(trainer.datamodule, "val_dataset", None))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name in ("train_dataset", "val_dataset"):
            store = getattr(getattr(trainer.datamodule, name, None), "encodings", None)
            if store is not None:
                store.flush()

    @staticmethod
    def _write_through(pl_module: LightningModule, batch: Any, dataset: Any) -> None:
        """Encode the batch's items that are not cached yet, store them and put their encodings in the batch (in
        place, for the step) instead of their images; cached items' encodings are already there."""
        store: EncodingStore | None = getattr(dataset, "encodings", None)
        if store is None or not isinstance(batch, dict) or "images_0" not in batch or len(batch["captions"]) == 0:
            return
        cached = batch.pop("cached", None)
        fresh = ~cached if cached is not None else torch.ones(len(batch["captions"]), dtype=torch.bool)
        dist_0, dist_1, text = encode_into(
            store, pl_module.backbone, batch["indices"][fresh.to(batch["indices"].device)].tolist(),
            batch.pop("images_0"), batch.pop("images_1"), [c for c, f in zip(batch["captions"], fresh.tolist()) if f],
            *(batch[key][fresh.to(batch[key].device)] for key in ("original_sizes", "crop_top_left")))
        if cached is None:
            batch.update(latent_dists_0=dist_0, latent_dists_1=dist_1, text=text)
            return
        batch["latent_dists_0"] = _merge(fresh, dist_0, batch["latent_dists_0"])
        batch["latent_dists_1"] = _merge(fresh, dist_1, batch["latent_dists_1"])
        batch["text"] = {key: _merge(fresh, value, batch["text"][key]) for key, value in text.items()}


def _merge(fresh: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Rows in batch order: ``new``'s where ``fresh``, ``old``'s elsewhere."""
    merged = new.new_empty((len(fresh), *new.shape[1:]))
    fresh = fresh.to(new.device)
    merged[fresh] = new
    merged[~fresh] = old.to(new.device, new.dtype)
    return merged
