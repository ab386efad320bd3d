"""ImageReward (Xu et al. 2023): an MLP on BLIP's image-grounded text features, normalised by the official constants.

Re-implemented from THUDM/ImageReward (``ImageReward/ImageReward.py``, ``models/BLIP/{blip,blip_pretrain,vit,med}.py``)
so that the official ``ImageReward.pt`` (a plain state dict: ``blip.visual_encoder.*``, ``blip.text_encoder.*``
including ``embeddings.position_ids``, ``blip.vision_proj.*``, ``blip.text_proj.*``, ``mlp.layers.*``) loads with a
strict key and shape check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from lit_pref.rewards.aesthetic import AestheticMLP
from lit_pref.rewards.base import Scorer
from lit_pref.rewards.blip import BLIP
from lit_pref.rewards.checkpoint import load_strict, read_state_dict, resolve_file
from lit_pref.rewards.clip_score import score_in_batches

__all__ = ["IMAGE_REWARD_MEAN", "IMAGE_REWARD_STD", "ImageReward", "ImageRewardConfig", "ImageRewardModel"]

# ImageReward.py: `self.mean`, `self.std`, the raw MLP output's statistics; scores are (mlp - mean) / std.
IMAGE_REWARD_MEAN = 0.16717362830052426
IMAGE_REWARD_STD = 1.0333394966054072
TEXT_MAX_LENGTH = 35  # ImageReward.score: tokenizer(prompt, padding="max_length", truncation=True, max_length=35)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # ImageReward's Normalize (the OpenAI CLIP statistics)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageRewardConfig:
    """Architecture of ImageReward; the defaults are the official model (BLIP ViT-L/16 at 224 px, BERT-base with
    cross-attention, ``BLIP_Pretrain(image_size=224, vit="large")`` with BLIP's ``med_config.json``).

    Args:
        image_size: Input side in pixels.
        patch_size: ViT patch side.
        vision_width: ViT width.
        vision_layers: ViT blocks.
        vision_heads: ViT attention heads.
        vocab_size: Text token embeddings (bert-base-uncased's 30522 plus ``[DEC]`` and ``[ENC]``).
        text_width: BERT hidden width, also the MLP head's input width.
        text_layers: BERT layers.
        text_heads: BERT attention heads.
        text_intermediate: BERT feed-forward width.
        max_text_positions: BERT position embeddings.
        embed_dim: Width of BLIP's (unused) contrastive projections.
    """

    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vocab_size: int = 30524
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    max_text_positions: int = 512
    embed_dim: int = 256


class ImageRewardModel(nn.Module):
    """``blip`` (:class:`~lit_pref.rewards.blip.BLIP`) and ``mlp`` (768-1024-128-64-16-1 with dropouts and no
    activations: the same head as :class:`~lit_pref.rewards.aesthetic.AestheticMLP`).

    Args:
        config: The architecture (default: the official one).
    """

    def __init__(self, config: ImageRewardConfig = ImageRewardConfig()) -> None:
        super().__init__()
        self.config = config
        self.blip = BLIP(**asdict(config))
        self.mlp = AestheticMLP(config.text_width)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(mlp(h_cls) - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD``, ``[B]``.

        Args:
            pixel_values: ``[B, 3, S, S]`` normalised pixels.
            input_ids: ``[B, L]`` BERT token ids (``[CLS]`` first).
            attention_mask: ``[B, L]`` text mask.
        """
        features = self.blip(pixel_values, input_ids, attention_mask).float()
        return ((self.mlp(features) - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD).squeeze(-1)


def blip_tokenizer(name_or_path: str | Path):
    """BLIP's tokenizer: ``BertTokenizer`` plus ``[DEC]`` as the BOS token and ``[ENC]`` as an additional special
    token (``blip.init_tokenizer``), so bert-base-uncased grows from 30522 to 30524 tokens.

    Args:
        name_or_path: A folder with ``vocab.txt`` (and optionally tokenizer configs) or a hub id
            (``"bert-base-uncased"``).
    """
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(name_or_path))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward(Scorer):
    """ImageReward v1.0 scores ``[B]``, about -2 to 2 (normalised by the constants the authors measured).

    Matches ``ImageReward.score(prompt, image)``: the prompt is tokenized with padding to and truncation at 35
    tokens, ``[CLS]`` stays in position 0 (the official ``score`` does not swap in BLIP's ``[ENC]``); the image is
    resized (bicubic, shorter side to 224), centre-cropped to 224 and normalised with the CLIP mean/std. Here the
    resize runs on tensors (antialiased, as torchvision on tensors) instead of on 8-bit PIL images, so scores differ
    slightly from the official PIL path: PIL rounds the resized pixels to 8 bits and clamps bicubic's overshoot to
    0..255, the tensor path neither rounds nor clamps.

    Real use: ``ImageReward("THUDM/ImageReward", tokenizer="bert-base-uncased", device="cuda")``.

    Args:
        checkpoint: ``ImageReward.pt`` as a file (``.pt``/``.pth``/``.bin``, or ``.safetensors``), a folder holding
            it, a hub repo id (``"THUDM/ImageReward"``), or the state dict itself.
        tokenizer: BERT tokenizer folder (``vocab.txt``) or hub id; ``[DEC]`` and ``[ENC]`` are added as in BLIP.
        device: Device the model runs on; scores come back on the images' device.
        config: Architecture; the default is the official model (smaller ones for tests).
        batch_size: Images scored per forward pass.
        differentiable: If true, :meth:`score` keeps the autograd graph from the images to the scores (the
            preprocessing is differentiable); the model's weights stay frozen either way.
    """

    def __init__(self, checkpoint: str | Mapping[str, Tensor] = "THUDM/ImageReward",
                 tokenizer: str = "bert-base-uncased", device: str = "cpu", *,
                 config: ImageRewardConfig = ImageRewardConfig(), batch_size: int = 32,
                 differentiable: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.differentiable = differentiable
        self.tokenizer = blip_tokenizer(tokenizer)
        if len(self.tokenizer) > config.vocab_size:
            raise ValueError(f"tokenizer {tokenizer} has {len(self.tokenizer)} tokens (with [DEC], [ENC]) but the "
                             f"model embeds only {config.vocab_size}")
        if config.max_text_positions < TEXT_MAX_LENGTH:
            raise ValueError(f"max_text_positions must be >= {TEXT_MAX_LENGTH}, got {config.max_text_positions}")
        if isinstance(checkpoint, Mapping):
            state, source = checkpoint, "the given state dict"
        else:
            path = resolve_file(checkpoint, "ImageReward.pt")
            state, source = read_state_dict(path), str(path)
        self.model = ImageRewardModel(config)
        load_strict(self.model, state, source)
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.preprocess_cfg = {"size": config.image_size, "mean": CLIP_MEAN, "std": CLIP_STD,
                               "interpolation": "bicubic", "resize_mode": "shortest"}

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """ImageReward scores ``[B]`` on the images' device.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``, any size (resized and centre-cropped).
            prompts: ``B`` prompts, one per image.
        """
        return score_in_batches(images, prompts, self._score_batch, preprocess_cfg=self.preprocess_cfg,
                                batch_size=self.batch_size, device=self.device, differentiable=self.differentiable)

    def _score_batch(self, pixels: Tensor, prompts: list[str]) -> Tensor:
        text = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                              return_tensors="pt").to(self.device)
        return self.model(pixels, text.input_ids, text.attention_mask)
