"""Batches of preference pairs: the items of :class:`~lit_pref.datamodules.preference_pairs.PreferencePairDataset`
stacked into one dict.

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

While an encoding cache is being filled, a batch may mix cached items and items decoded from their images: it then
carries ``images_0``/``images_1`` of the decoded items, ``latent_dists_*``/``text`` of the cached ones and
``cached`` (BoolTensor[B], True for a cached item); ``EncodingCache`` encodes the images before the step and hands
the step a batch of encodings only.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


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
    cached = ["latent_dist_0" in item for item in kept]  # from the encoding cache
    hits = [item for item, c in zip(kept, cached) if c]
    misses = [item for item, c in zip(kept, cached) if not c]
    first: dict[str, Any] = {}
    if hits:
        first.update(latent_dists_0=torch.stack([item["latent_dist_0"] for item in hits]),
                     latent_dists_1=torch.stack([item["latent_dist_1"] for item in hits]),
                     text={k: torch.stack([item["text"][k] for item in hits]) for k in hits[0]["text"]})
    if misses:
        first.update(images_0=torch.stack([item["image_0"] for item in misses]),
                     images_1=torch.stack([item["image_1"] for item in misses]))
    if hits and misses:
        first["cached"] = torch.tensor(cached)
    return {
        **first,
        "label_0": torch.stack([item["label_0"] for item in kept]).float(),
        "captions": [item["caption"] for item in kept],
        "original_sizes": torch.stack([item["original_size"] for item in kept]).long(),
        "crop_top_left": torch.stack([item["crop_top_left"] for item in kept]).long(),
        "indices": torch.tensor([item["index"] for item in kept], dtype=torch.long),
        "num_skipped": num_skipped,
    }
