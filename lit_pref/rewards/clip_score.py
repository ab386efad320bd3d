"""CLIP score with open_clip: ``100 * max(cos(image, text), 0)`` per sample, and tensor preprocessing for CLIP towers."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_pref.rewards.base import Scorer

__all__ = ["CLIPScore", "clip_preprocess", "load_open_clip", "score_in_batches"]


def load_open_clip(model: str | nn.Module, pretrained: str | None, device: str | torch.device) -> tuple[nn.Module, dict]:
    """Builds an open_clip model in eval mode and returns it with its preprocess config.

    Args:
        model: An open_clip model name (``"ViT-L-14"``), ``"local-dir:/path"`` (a folder with
            ``open_clip_config.json`` + weights), ``"hf-hub:org/repo"``, or an already-built open_clip
            ``CLIP`` module (used as is; its ``visual.preprocess_cfg`` must be set or the OpenAI defaults apply).
        pretrained: A pretrained tag (``"openai"``) or a local checkpoint path; ``None`` for the weights that
            ``local-dir:``/``hf-hub:`` folders carry, or random weights for a bare name.
        device: Device the model is moved to.

    Returns:
        ``(model, preprocess_cfg)`` where ``preprocess_cfg`` has ``size``, ``mean``, ``std``,
        ``interpolation`` and ``resize_mode``.
    """
    if isinstance(model, str):
        model, _, _ = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
    model = model.to(device).eval().requires_grad_(False)
    cfg = dict(getattr(model.visual, "preprocess_cfg", None) or {})
    cfg.setdefault("size", model.visual.image_size)
    cfg.setdefault("mean", open_clip.OPENAI_DATASET_MEAN)
    cfg.setdefault("std", open_clip.OPENAI_DATASET_STD)
    cfg.setdefault("interpolation", "bicubic")
    cfg.setdefault("resize_mode", "shortest")
    return model, cfg


def score_in_batches(
    images: Tensor,
    prompts: Sequence[str],
    score_batch: Callable[[Tensor, list[str]], Tensor],
    *,
    preprocess_cfg: dict[str, Any],
    batch_size: int,
    device: str | torch.device,
    differentiable: bool,
) -> Tensor:
    """The loop of the image-text scorers: checks the shapes, preprocesses ``batch_size`` images at a time on
    ``device`` (:func:`clip_preprocess`) and scores them with their prompts.

    Args:
        images: ``[B, 3, H, W]`` float in ``[0, 1]``, any size.
        prompts: ``B`` prompts, one per image.
        score_batch: ``(pixels, prompts) -> [b]`` scores of one preprocessed batch.
        preprocess_cfg: The scorer's preprocess config (:func:`clip_preprocess`).
        batch_size: Images per call of ``score_batch``.
        device: The scorer's device.
        differentiable: Keep the autograd graph from the images to the scores (else run without gradients).

    Returns:
        ``[B]`` on the images' device.
    """
    if images.ndim != 4 or len(prompts) != images.shape[0]:
        raise ValueError(f"expected [B,3,H,W] images and B prompts, got {tuple(images.shape)} and {len(prompts)}")
    prompts = list(prompts)
    out = []
    with contextlib.nullcontext() if differentiable else torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            pixels = clip_preprocess(images[i:i + batch_size].to(device), preprocess_cfg)
            out.append(score_batch(pixels, prompts[i:i + batch_size]))
    return torch.cat(out).to(images.device)


def clip_preprocess(images: Tensor, cfg: dict[str, Any]) -> Tensor:
    """open_clip's eval transform on tensors, batched: resize, centre crop (or pad), normalise. Differentiable.

    Args:
        images: ``[B, 3, H, W]`` float in ``[0, 1]``.
        cfg: A preprocess config as returned by :func:`load_open_clip` (``size`` int or ``(h, w)``,
            ``mean``, ``std``, ``interpolation`` in ``{"bicubic", "bilinear"}``, ``resize_mode`` in
            ``{"shortest", "squash", "longest"}``: shorter side to ``size`` then centre crop; both sides to
            ``size``; or longer side to ``size`` then zero padding (black) centred to ``size``, HPSv2's
            ``ResizeMaxSize``), ``crop_offset`` in ``{"round", "floor"}``: the centre crop starts at
            ``round((H - h) / 2)`` as torchvision's ``CenterCrop`` does (open_clip, ImageReward; the default) or at
            ``floor((H - h) / 2)`` as transformers' CLIP image processor does (PickScore).

    Returns:
        ``[B, 3, h, w]`` normalised pixels, float32.
    """
    size = cfg["size"]
    th, tw = (size, size) if isinstance(size, int) else tuple(size)
    mode = cfg.get("interpolation", "bicubic")
    resize_mode = cfg.get("resize_mode", "shortest")
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"unsupported interpolation {mode!r}")
    x = images.float()
    h, w = x.shape[-2:]
    if resize_mode == "squash":
        new = (th, tw)
    elif resize_mode == "shortest":
        # torchvision Resize(int): the shorter side becomes `size`, the longer one is truncated proportionally.
        short, long = (h, w) if h <= w else (w, h)
        side = max(th, tw)
        new_long = int(side * long / short)
        new = (side, new_long) if h <= w else (new_long, side)
    elif resize_mode == "longest":
        # HPSv2's ResizeMaxSize: the longer side becomes `size`, the other one is rounded proportionally.
        scale = min(th / h, tw / w)
        new = (round(h * scale), round(w * scale))
    else:
        raise ValueError(f"unsupported resize_mode {resize_mode!r}")
    if (h, w) != tuple(new):
        # No clamp: same as open_clip's own transform (torchvision Resize) applied to a float tensor.
        x = F.interpolate(x, size=new, mode=mode, align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    if resize_mode == "longest" and (h, w) != (th, tw):
        # Zeros before normalisation, the smaller half of the padding left/top (ResizeMaxSize's F.pad).
        x = F.pad(x, ((tw - w) // 2, tw - w - (tw - w) // 2, (th - h) // 2, th - h - (th - h) // 2))
        h, w = th, tw
    if cfg.get("crop_offset", "round") == "floor":
        top, left = (h - th) // 2, (w - tw) // 2
    else:
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    x = x[..., top:top + th, left:left + tw]
    mean = torch.tensor(cfg["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def embed_images(model: torch.nn.Module, preprocess_cfg: dict, images: Tensor, device: torch.device | str,
                 batch_size: int) -> Tensor:
    """L2-normalised open_clip image embeddings ``[B, D]`` (float32, on ``device``) of images in ``[0, 1]``,
    preprocessed with :func:`clip_preprocess` in chunks of ``batch_size``."""
    out = []
    for chunk in images.split(batch_size):
        x = clip_preprocess(chunk.to(device), preprocess_cfg)
        out.append(model.encode_image(x, normalize=True).float())
    return torch.cat(out)


class CLIPScore(Scorer):
    """CLIP score (Hessel et al. 2021) with an open_clip model: ``100 * max(cos(E_image, E_text), 0)`` per sample.

    The clamp is per sample; ``torchmetrics.multimodal.CLIPScore`` instead clamps the batch mean and loads
    transformers CLIP weights (see tests/test_scorers.py).

    Args:
        model: An open_clip model name, ``"local-dir:/path"`` (e.g. the toy CLIP:
            ``CLIPScore("local-dir:lit_pref/assets/toy/clip", pretrained=None)``), ``"hf-hub:org/repo"``, or an
            already-built open_clip ``CLIP`` module (then the standard CLIP BPE tokenizer is used).
        pretrained: Pretrained tag (``"openai"``) or local checkpoint path; ``None`` for ``local-dir:``/``hf-hub:``.
        device: Device the CLIP runs on; scores come back on the images' device.
        batch_size: Images (and prompts) encoded per forward pass.
    """

    def __init__(self, model: str | nn.Module = "ViT-L-14", pretrained: str | None = "openai", device: str = "cpu",
                 *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model, self.preprocess_cfg = load_open_clip(model, pretrained, self.device)
        self.tokenizer = open_clip.get_tokenizer(model if isinstance(model, str) else "ViT-B-32")

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings ``[B, D]`` (float32, on the scorer's device).

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``.
        """
        return embed_images(self.model, self.preprocess_cfg, images, self.device, self.batch_size)

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings ``[B, D]`` (float32, on the scorer's device).

        Args:
            prompts: ``B`` strings.
        """
        prompts = list(prompts)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(prompts[i:i + self.batch_size]).to(self.device)
            out.append(self.model.encode_text(tokens, normalize=True).float())
        return torch.cat(out)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """``100 * max(cos, 0)`` per sample, ``[B]`` on the images' device.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``.
            prompts: ``B`` prompts, one per image.
        """
        if images.ndim != 4 or len(prompts) != images.shape[0]:
            raise ValueError(f"expected [B,3,H,W] images and B prompts, got {tuple(images.shape)} and {len(prompts)}")
        cos = (self.embed_images(images) * self.embed_texts(prompts)).sum(-1)
        return (100 * cos.clamp(min=0)).to(images.device)
