"""Human Preference Score v2 / v2.1 (Wu et al. 2023): a fine-tuned open_clip ViT-H-14; the score is the cosine of
the normalised image and text embeddings.

Follows ``hpsv2.score`` / ``hpsv2/evaluation.py`` of tgxs002/HPSv2: ``create_model_and_transforms("ViT-H-14", ...)``,
``model.load_state_dict(torch.load(cp)["state_dict"])`` (strict), ``get_tokenizer("ViT-H-14")`` and
``image_features @ text_features.T`` on the diagonal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Sequence

import open_clip
import torch
from torch import Tensor, nn

from lit_pref.rewards.base import Scorer
from lit_pref.rewards.checkpoint import load_strict, read_state_dict, resolve_file
from lit_pref.rewards.clip_score import score_in_batches

__all__ = ["HPS_FILES", "HPSv2", "build_hps_clip"]

HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}  # files of the hub repo xswu/HPSv2


def build_hps_clip(model: str | dict[str, Any] = "ViT-H-14", device: str | torch.device = "cpu") -> nn.Module:
    """The open_clip CLIP that HPSv2 fine-tunes, with random weights.

    Args:
        model: An open_clip model name (``"ViT-H-14"``, the official architecture) or an open_clip model config
            (``{"embed_dim", "vision_cfg", "text_cfg"}``, e.g. a tiny one for tests).
        device: Where the weights are created (``"meta"`` builds the architecture without memory).
    """
    with torch.device(device):  # weights are created on `device` (create_model alone would build on the CPU first)
        return open_clip.create_model(model, device=device) if isinstance(model, str) else open_clip.CLIP(**model)


class HPSv2(Scorer):
    """HPS v2 / v2.1: ``cos(E_image, E_text)`` per sample, ``[B]``, the raw value ``hpsv2.score`` returns (about
    0.2-0.35 for real images). HPSv2's benchmark tables print 100x this; we return the raw cosine so that values
    compare with ``hpsv2.score`` and with papers that report it (multiply by 100 for the benchmark's scale).

    Preprocessing is HPSv2's ``preprocess_val``: the longer side resized to 224 (bicubic), zero padding to a
    square, the OpenAI CLIP mean/std; on tensors (antialiased), not on 8-bit PIL images. ``ResizeMaxSize`` skips
    the padding when the longer side is already 224; here a non-square image of that size is padded as well.
    The official code runs under CUDA autocast (fp16); this runs in float32.

    Real use: ``HPSv2("xswu/HPSv2", version="v2.1", device="cuda")``, or a local ``HPS_v2.1_compressed.pt``.

    Args:
        checkpoint: ``HPS_v2*_compressed.pt`` as a file (``{"state_dict": ...}``; ``.safetensors`` with a plain
            state dict also works), a folder holding it, a hub repo id (``"xswu/HPSv2"``), or the checkpoint
            object itself (``{"state_dict": ...}`` or the state dict).
        version: ``"v2.0"`` or ``"v2.1"``; picks the file inside a folder or hub repo.
        device: Device the model runs on; scores come back on the images' device.
        model: The architecture: an open_clip model name (``"ViT-H-14"``) or an open_clip model config (tests).
        batch_size: Images (and prompts) encoded per forward pass.
        differentiable: If true, :meth:`score` keeps the autograd graph from the images to the scores (the
            preprocessing is differentiable); the model's weights stay frozen either way.
    """

    def __init__(self, checkpoint: str | Mapping[str, Any] = "xswu/HPSv2", version: Literal["v2.0", "v2.1"] = "v2.1",
                 device: str = "cpu", *, model: str | dict[str, Any] = "ViT-H-14", batch_size: int = 32,
                 differentiable: bool = False) -> None:
        if version not in HPS_FILES:
            raise ValueError(f"version must be one of {sorted(HPS_FILES)}, got {version!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.differentiable = differentiable
        if isinstance(checkpoint, Mapping):
            state, source = checkpoint, "the given checkpoint"
        else:
            path = resolve_file(checkpoint, HPS_FILES[version])
            state, source = read_state_dict(path), str(path)
        if "state_dict" in state:
            state = state["state_dict"]
        self.model = build_hps_clip(model)
        load_strict(self.model, state, source)
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer("ViT-H-14", context_length=self.model.context_length)
        self.preprocess_cfg = {"size": self.model.visual.image_size, "mean": open_clip.OPENAI_DATASET_MEAN,
                               "std": open_clip.OPENAI_DATASET_STD, "interpolation": "bicubic",
                               "resize_mode": "longest"}

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """HPS ``[B]`` (raw cosine) on the images' device.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``, any size.
            prompts: ``B`` prompts, one per image.
        """
        return score_in_batches(images, prompts, self._score_batch, preprocess_cfg=self.preprocess_cfg,
                                batch_size=self.batch_size, device=self.device, differentiable=self.differentiable)

    def _score_batch(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        image = self.model.encode_image(pixels, normalize=True)
        text = self.model.encode_text(tokens, normalize=True)
        return (image * text).sum(-1).float()
