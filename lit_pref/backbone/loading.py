"""The model and LoRA part of the backbone: its components loaded from a preset, the shipped toy folder, a hub id or a
local diffusers folder, and peft LoRA adapters injected into the UNet."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lit_pref.backbone.tiny import build_tiny_components

PRESETS = {"tiny": "sd", "tiny-sdxl": "sdxl", "small": "small", "sd15": "sd15"}  # built from config
TOY_PIPELINE = Path(__file__).resolve().parents[1] / "assets" / "toy" / "pipeline"  # pre-trained, shipped
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def load_components(
    model: str,
    revision: str | None = None,
    variant: str | None = None,
    seed: int = 0,
    prediction_type: str | None = None,
) -> dict:
    """The components (``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``; SDXL adds
    ``text_encoder_2`` and ``tokenizer_2``) of ``model``, as ``DiffusionBackbone`` documents it: ``"toy"``, a preset
    name, a hub id or a local diffusers pipeline folder.

    Args:
        model: ``"toy"``, one of :data:`PRESETS`, a hub id or a local folder.
        revision: Hub revision (pretrained models only).
        variant: Weight variant such as ``"fp16"`` (pretrained models only).
        seed: Seed of a preset's random weights.
        prediction_type: A preset's prediction type (``None``: epsilon); pretrained models keep theirs.
    """
    if model == "toy":
        model = str(TOY_PIPELINE)
    if model in PRESETS:
        return build_tiny_components(PRESETS[model], seed=seed, prediction_type=prediction_type or "epsilon")
    return _load_pretrained(model, revision=revision, variant=variant)


def _load_pretrained(model: str, revision: str | None, variant: str | None) -> dict:
    """Load the components of a diffusers SD / SDXL pipeline from a hub id or a local folder."""
    folder = Path(model)
    if folder.exists() and not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers pipeline folder: it has no model_index.json")
    kw = dict(revision=revision)
    parts = {
        "vae": AutoencoderKL.from_pretrained(model, subfolder="vae", variant=variant, **kw),
        "unet": UNet2DConditionModel.from_pretrained(model, subfolder="unet", variant=variant, **kw),
        "text_encoder": CLIPTextModel.from_pretrained(model, subfolder="text_encoder", variant=variant, **kw),
        "tokenizer": CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw),
        "scheduler": DDIMScheduler.from_pretrained(model, subfolder="scheduler", **kw),
    }
    index = StableDiffusionPipeline.load_config(model, **kw)
    if index.get("text_encoder_2") and index["text_encoder_2"][0] is not None:
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            model, subfolder="text_encoder_2", variant=variant, **kw
        )
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2", **kw)
    return parts


def make_lora_config(
    rank: int,
    alpha: float | None,
    target_modules: Sequence[str],
    init: Literal["gaussian", "kaiming"],
    dropout: float,
) -> LoraConfig:
    """The peft ``LoraConfig`` of the UNet's adapters (arguments as ``DiffusionBackbone``'s ``lora_*``)."""
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        init_lora_weights="gaussian" if init == "gaussian" else True,
        target_modules=list(target_modules),
    )


def add_lora(unet: UNet2DConditionModel, config: LoraConfig, seed: int) -> None:
    """Inject the adapters into ``unet`` in place, drawing their initial weights from ``seed`` (the global random
    state is left as it was), and keep the LoRA parameters float32 whatever the UNet's dtype."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config)
    for param in lora_parameters(unet):
        param.data = param.data.float()


def lora_parameters(unet: UNet2DConditionModel) -> Iterator[nn.Parameter]:
    """The UNet's LoRA parameters."""
    return (p for n, p in unet.named_parameters() if "lora_" in n)


def adapters_enabled(unet: UNet2DConditionModel) -> bool:
    """Whether the UNet's LoRA adapters are on (``unet.disable_adapters()`` turns them off)."""
    return any(not layer.disable_adapters for layer in unet.modules() if isinstance(layer, BaseTunerLayer))
