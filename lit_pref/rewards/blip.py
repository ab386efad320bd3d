"""BLIP's image-grounded text encoder: its ViT (BLIP ``vit.py``) and its BERT with cross-attention to the image
tokens (BLIP ``med.py``), re-implemented with the official module names so BLIP checkpoints load key for key.

Inference only: dropout and stochastic depth (identities in eval mode, no weights) are left out. Self-attention in
the text encoder is bidirectional (BLIP's ``mode="multimodal"`` encoder, ``is_decoder=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BLIP", "BertCrossEncoder", "VisionTransformer"]


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """``[B, N, H * d] -> [B, H, N, d]``."""
    b, n, _ = x.shape
    return x.view(b, n, num_heads, -1).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """``[B, H, N, d] -> [B, N, H * d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


# ----------------------------------------------------------------------------------------------------- vision


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``proj`` is a ``patch_size``-strided convolution."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and an output ``proj``."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class ViTMlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` with exact (erf) GELU."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (LayerNorm eps 1e-6)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = ViTAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = ViTMlp(width, 4 * width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """BLIP's ViT: ``[CLS] + patches``, learned position embeddings, pre-norm blocks, a final LayerNorm over all
    tokens (no pooling, no head).

    Args:
        image_size: Input side in pixels (224 for ImageReward).
        patch_size: Patch side (16 for ViT-L/16).
        width: Token width (1024 for ViT-L).
        layers: Number of blocks (24 for ViT-L).
        num_heads: Attention heads (16 for ViT-L).
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, width: int = 1024, layers: int = 24,
                 num_heads: int = 16) -> None:
        super().__init__()
        if image_size % patch_size or width % num_heads:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size} and width "
                             f"{width} of num_heads {num_heads}")
        self.image_size = image_size
        self.patch_embed = PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, width))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(ViTBlock(width, num_heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``[B, 3, S, S]`` normalised pixels (``S = image_size``) to ``[B, 1 + (S / patch)^2, width]`` tokens."""
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} pixels, got {tuple(pixel_values.shape)}")
        x = self.patch_embed(pixel_values)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ------------------------------------------------------------------------------------------------------- text


class BertEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm (no token-type embeddings in BLIP).

    ``position_ids`` is a persistent buffer, as in BLIP's ``med.py``, so it is part of the state dict.
    """

    def __init__(self, vocab_size: int, width: int, max_positions: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width)
        self.position_embeddings = nn.Embedding(max_positions, width)
        self.LayerNorm = nn.LayerNorm(width, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(max_positions).expand(1, -1))

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class BertSelfAttention(nn.Module):
    """``query`` on the text, ``key``/``value`` on ``context`` (the text itself, or the image tokens of width
    ``context_width`` in cross-attention)."""

    def __init__(self, width: int, num_heads: int, context_width: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(context_width, width)
        self.value = nn.Linear(context_width, width)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        q = _heads(self.query(x), self.num_heads)
        k = _heads(self.key(context), self.num_heads)
        v = _heads(self.value(context), self.num_heads)
        return _merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


class BertAddNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)`` (BERT's ``BertSelfOutput`` / ``BertOutput``)."""

    def __init__(self, in_width: int, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    """Attention (``self``) followed by its output projection, residual and LayerNorm (``output``)."""

    def __init__(self, width: int, num_heads: int, context_width: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(width, num_heads, context_width)
        self.output = BertAddNorm(width, width)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        return self.output(self.self(x, context, mask), x)


class BertIntermediate(nn.Module):
    """``gelu(dense(x))`` with exact (erf) GELU, BERT's ``hidden_act="gelu"``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """Self-attention over the text, cross-attention to the image tokens, feed-forward; each post-norm."""

    def __init__(self, width: int, num_heads: int, intermediate: int, image_width: int) -> None:
        super().__init__()
        self.attention = BertAttention(width, num_heads, width)
        self.crossattention = BertAttention(width, num_heads, image_width)
        self.intermediate = BertIntermediate(width, intermediate)
        self.output = BertAddNorm(intermediate, width)

    def forward(self, x: Tensor, text_mask: Tensor, image_embeds: Tensor) -> Tensor:
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image_embeds, None)  # every image token is attended (BLIP's mask of ones)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    """The stack of :class:`BertLayer` (``layer.N``)."""

    def __init__(self, layers: int, width: int, num_heads: int, intermediate: int, image_width: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(width, num_heads, intermediate, image_width) for _ in range(layers))

    def forward(self, x: Tensor, text_mask: Tensor, image_embeds: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x, text_mask, image_embeds)
        return x


class BertCrossEncoder(nn.Module):
    """BLIP's ``BertModel(add_pooling_layer=False)`` run as the image-grounded text encoder.

    Args:
        vocab_size: Token embeddings (30524 for BLIP: bert-base-uncased's 30522 plus ``[DEC]`` and ``[ENC]``).
        width: Hidden width (768, BERT-base).
        layers: Number of layers (12).
        num_heads: Attention heads (12).
        intermediate: Feed-forward width (3072).
        max_positions: Position embeddings (512).
        image_width: Width of the image tokens the cross-attention reads (1024 for ViT-L).
    """

    def __init__(self, vocab_size: int = 30524, width: int = 768, layers: int = 12, num_heads: int = 12,
                 intermediate: int = 3072, max_positions: int = 512, image_width: int = 1024) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} must be a multiple of num_heads {num_heads}")
        self.embeddings = BertEmbeddings(vocab_size, width, max_positions)
        self.encoder = BertEncoder(layers, width, num_heads, intermediate, image_width)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image_embeds: Tensor) -> Tensor:
        """Last hidden states ``[B, L, width]``.

        Args:
            input_ids: ``[B, L]`` token ids.
            attention_mask: ``[B, L]``, 1 for tokens, 0 for padding (padding is never attended to).
            image_embeds: ``[B, N, image_width]`` image tokens from the ViT.
        """
        text_mask = attention_mask[:, None, None, :].bool()  # [B, 1, 1, L], broadcast over heads and queries
        return self.encoder(self.embeddings(input_ids), text_mask, image_embeds)


class BLIP(nn.Module):
    """The parts of BLIP's ``BLIP_Pretrain`` that ImageReward keeps: ``visual_encoder``, ``text_encoder`` and the
    contrastive projections ``vision_proj`` / ``text_proj``. The projections are not used by the image-grounded
    text features; they are kept because the official checkpoints hold them.

    Args:
        image_size: Input side in pixels.
        patch_size: ViT patch side.
        vision_width: ViT width.
        vision_layers: ViT blocks.
        vision_heads: ViT attention heads.
        vocab_size: Text token embeddings.
        text_width: BERT hidden width.
        text_layers: BERT layers.
        text_heads: BERT attention heads.
        text_intermediate: BERT feed-forward width.
        max_text_positions: BERT position embeddings.
        embed_dim: Output width of the contrastive projections.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, vision_width: int = 1024, vision_layers: int = 24,
                 vision_heads: int = 16, vocab_size: int = 30524, text_width: int = 768, text_layers: int = 12,
                 text_heads: int = 12, text_intermediate: int = 3072, max_text_positions: int = 512,
                 embed_dim: int = 256) -> None:
        super().__init__()
        self.visual_encoder = VisionTransformer(image_size, patch_size, vision_width, vision_layers, vision_heads)
        self.text_encoder = BertCrossEncoder(vocab_size, text_width, text_layers, text_heads, text_intermediate,
                                             max_text_positions, vision_width)
        self.vision_proj = nn.Linear(vision_width, embed_dim)
        self.text_proj = nn.Linear(text_width, embed_dim)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Image-grounded text features: the ``[CLS]`` (position 0) hidden state ``[B, text_width]``.

        Args:
            pixel_values: ``[B, 3, S, S]`` normalised pixels.
            input_ids: ``[B, L]`` token ids.
            attention_mask: ``[B, L]`` text mask.
        """
        image_embeds = self.visual_encoder(pixel_values)
        return self.text_encoder(input_ids, attention_mask, image_embeds)[:, 0]
