"""Tiny random-weight builds of ImageReward, HPSv2 and PickScore, saved in the official file layouts (tests and
benchmarks). Same classes and key names as the real models; small widths, 32-pixel inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lit_pref.backbone.tokenizer import offline_clip_tokenizer
from lit_pref.rewards.hpsv2 import HPS_FILES, build_hps_clip
from lit_pref.rewards.image_reward import ImageRewardConfig, ImageRewardModel

__all__ = ["BERT_SPECIAL_TOKENS", "TINY_HPS_CLIP", "TINY_WORDS", "save_tiny_hpsv2", "save_tiny_image_reward",
           "save_tiny_pickscore", "tiny_clip_config", "tiny_image_reward_config", "write_bert_vocab"]

TINY_WORDS = ("a", "small", "large", "red", "green", "blue", "yellow", "magenta", "cyan", "circle", "square",
              "triangle", "on", "white", "black", "background", "##s")
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# An open_clip CLIP config of the ViT-H-14 family (ViT image tower, causal text transformer), 32 pixels.
TINY_HPS_CLIP: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_bert_vocab(folder: str | Path, words: tuple[str, ...] = TINY_WORDS) -> Path:
    """Write ``folder/vocab.txt``: BERT's special tokens, then ``words``; returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(BERT_SPECIAL_TOKENS + tuple(words)) + "\n")
    return folder


def tiny_image_reward_config(vocab_size: int = len(BERT_SPECIAL_TOKENS) + len(TINY_WORDS) + 2) -> ImageRewardConfig:
    """A 32-pixel ImageReward architecture; the default vocabulary fits :func:`write_bert_vocab` plus ``[DEC]``,
    ``[ENC]``."""
    return ImageRewardConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                             vocab_size=vocab_size, text_width=32, text_layers=2, text_heads=2, text_intermediate=64,
                             max_text_positions=40, embed_dim=16)


def tiny_clip_config() -> dict[str, Any]:
    """``CLIPConfig`` keyword arguments of a 32-pixel CLIP with the full CLIP vocabulary."""
    return {"projection_dim": 16,
            "text_config": {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "gelu"},
            "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 2, "num_attention_heads": 2, "hidden_act": "gelu"}}


def save_tiny_image_reward(folder: str | Path, seed: int = 0) -> dict[str, Any]:
    """Write ``folder/ImageReward.pt`` (a plain state dict, like the official file) and a BERT tokenizer folder
    ``folder/tokenizer``; returns the keyword arguments of :class:`~lit_pref.rewards.ImageReward` for them."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageRewardModel(tiny_image_reward_config())
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "ImageReward.pt")
    return {"checkpoint": str(folder / "ImageReward.pt"), "tokenizer": str(write_bert_vocab(folder / "tokenizer")),
            "config": model.config}


def save_tiny_hpsv2(folder: str | Path, seed: int = 0, version: str = "v2.1") -> dict[str, Any]:
    """Write ``folder/HPS_v2*_compressed.pt`` holding ``{"state_dict": ...}`` like the official files; returns the
    keyword arguments of :class:`~lit_pref.rewards.HPSv2` for it."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_hps_clip(TINY_HPS_CLIP)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, folder / HPS_FILES[version])
    return {"checkpoint": str(folder), "version": version, "model": TINY_HPS_CLIP}


def save_tiny_pickscore(folder: str | Path, seed: int = 0) -> dict[str, Any]:
    """Write a model folder ``folder/model`` (``config.json`` + ``model.safetensors``, as ``PickScore_v1``) and a
    processor folder ``folder/processor`` (the CLIP tokenizer, built offline, and a 32-pixel image processor);
    returns the keyword arguments of :class:`~lit_pref.rewards.PickScore` for them."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(**tiny_clip_config()))
    model.save_pretrained(folder / "model")
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=offline_clip_tokenizer()).save_pretrained(folder / "processor")
    return {"model": str(folder / "model"), "processor": str(folder / "processor")}
