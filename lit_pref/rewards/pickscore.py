"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic; the score is ``logit_scale.exp() * cos``.

Follows the model card of ``yuvalkirstain/PickScore_v1``: ``AutoModel.from_pretrained("yuvalkirstain/PickScore_v1")``,
``AutoProcessor.from_pretrained("laion/CLIP-ViT-H-14-laion2B-s32B-b79K")``, text with ``padding=True,
truncation=True, max_length=77``, normalised ``get_image_features`` / ``get_text_features`` and
``model.logit_scale.exp() * text_embs @ image_embs.T``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoProcessor, CLIPConfig, CLIPModel

from lit_pref.rewards.base import Scorer
from lit_pref.rewards.checkpoint import load_strict, read_state_dict
from lit_pref.rewards.clip_score import score_in_batches

__all__ = ["CLIP_H_CONFIG", "PickScore", "load_clip_strict"]

# The architecture of PickScore_v1 (CLIP ViT-H/14, as laion/CLIP-ViT-H-14-laion2B-s32B-b79K, exact GELU), used for
# checkpoints that come without a config.json (a bare weights file or state dict).
CLIP_H_CONFIG: dict[str, Any] = {
    "projection_dim": 1024,
    "text_config": {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
                    "layer_norm_eps": 1e-5},
    "vision_config": {"image_size": 224, "patch_size": 14, "hidden_size": 1280, "intermediate_size": 5120,
                      "num_hidden_layers": 32, "num_attention_heads": 16, "hidden_act": "gelu",
                      "layer_norm_eps": 1e-5},
}
# Position-id buffers that transformers < 4.31 saved in checkpoints; now non-persistent, always arange(n).
LEGACY_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def load_clip_strict(model: str | Path | Mapping[str, Tensor], config: dict[str, Any] | None = None) -> CLIPModel:
    """A transformers ``CLIPModel`` whose every weight comes from the checkpoint.

    Args:
        model: A model folder or hub id (``config.json`` + weights; loaded with ``from_pretrained``), a bare
            weights file (``.safetensors``, or ``.bin``/``.pt`` read with ``weights_only=True``) or a state dict.
        config: ``CLIPConfig`` keyword arguments for bare weights files and state dicts (default
            :data:`CLIP_H_CONFIG`); folders and hub ids bring their own ``config.json``.

    Raises:
        ValueError: naming the checkpoint and the missing, unexpected or mis-shaped keys.
    """
    if isinstance(model, Mapping) or Path(model).is_file():
        state = model if isinstance(model, Mapping) else read_state_dict(model)
        source = "the given state dict" if isinstance(model, Mapping) else str(model)
        state = {k: v for k, v in state.items() if k not in LEGACY_BUFFERS}
        clip = CLIPModel(CLIPConfig(**(config or CLIP_H_CONFIG)))
        load_strict(clip, state, source)
        return clip
    clip, info = CLIPModel.from_pretrained(str(model), output_loading_info=True)
    problems = {k: sorted(info[k]) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
    if problems or info.get("error_msgs"):
        raise ValueError(f"{model} does not fit CLIPModel: {problems} {info.get('error_msgs') or ''}".rstrip())
    return clip


class PickScore(Scorer):
    """PickScore ``[B]``: ``logit_scale.exp() * cos(E_image, E_text)`` (about 15-25 with the real weights, whose
    ``logit_scale.exp()`` is about 100).

    Images are preprocessed as the CLIP processor does (shorter side to 224 with bicubic resampling, centre crop
    at ``floor((H - 224) / 2)``, the processor's mean/std) but on tensors (antialiased, not clamped,
    differentiable) instead of on 8-bit PIL images.

    Real use: ``PickScore("yuvalkirstain/PickScore_v1", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", device="cuda")``.

    Args:
        model: The model: a folder or hub id (``config.json`` + weights), a bare weights file, or a state dict.
        processor: Folder or hub id of the CLIP processor (tokenizer and image preprocessing config).
        device: Device the model runs on; scores come back on the images' device.
        config: ``CLIPConfig`` keyword arguments for bare weights files and state dicts (default: CLIP-H).
        batch_size: Images (and prompts) encoded per forward pass.
        differentiable: If true, :meth:`score` keeps the autograd graph from the images to the scores (the
            preprocessing is differentiable); the model's weights stay frozen either way.
    """

    def __init__(self, model: str | Mapping[str, Tensor] = "yuvalkirstain/PickScore_v1",
                 processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", device: str = "cpu", *,
                 config: dict[str, Any] | None = None, batch_size: int = 32, differentiable: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.differentiable = differentiable
        self.model = load_clip_strict(model, config).to(self.device).eval().requires_grad_(False)
        loaded = AutoProcessor.from_pretrained(str(processor))
        self.tokenizer = loaded.tokenizer
        images = loaded.image_processor
        crop = (images.crop_size["height"], images.crop_size["width"])
        bicubic = images.resample == 3 or "bicubic" in str(images.resample).lower()  # PIL's BICUBIC is 3
        if images.size["shortest_edge"] != max(crop) or not bicubic:
            raise ValueError(f"{processor}: only shortest-edge resize to the crop size with bicubic resampling is "
                             f"supported, got size {images.size}, crop {crop}, resample {images.resample}")
        self.preprocess_cfg = {"size": crop, "mean": tuple(images.image_mean), "std": tuple(images.image_std),
                               "interpolation": "bicubic", "resize_mode": "shortest",
                               "crop_offset": "floor"}  # transformers' center_crop: (H - h) // 2, not torchvision's round

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """PickScore ``[B]`` on the images' device.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``, any size.
            prompts: ``B`` prompts, one per image.
        """
        return score_in_batches(images, prompts, self._score_batch, preprocess_cfg=self.preprocess_cfg,
                                batch_size=self.batch_size, device=self.device, differentiable=self.differentiable)

    def _score_batch(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        model = self.model
        text = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        # The projections of the pooled outputs (= get_*_features, whose return type changed in transformers 5).
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(input_ids=text.input_ids,
                                                      attention_mask=text.attention_mask).pooler_output)
        cos = (F.normalize(image, dim=-1) * F.normalize(text, dim=-1)).sum(-1)
        return (model.logit_scale.exp() * cos).float()
