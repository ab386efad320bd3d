"""The export part of the backbone: LoRA adapters in the diffusers format and the base model as a diffusers
pipeline folder, both loadable by stock diffusers, and the LoRA's settings read back from its file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from lit_pref.backbone.tokenizer import write_bpe_files
from lit_pref.io import atomic_dir

if TYPE_CHECKING:
    from lit_pref.backbone.backbone import DiffusionBackbone

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights / load_lora_weights use


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, Tensor]:
    """The UNet's LoRA weights in the diffusers key format (``unet.``-less), as :func:`save_lora` writes them."""
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_lora(unet: UNet2DConditionModel, directory: str | Path, sdxl: bool) -> Path:
    """Write the UNet's LoRA adapters in the diffusers format, atomically.

    ``StableDiffusionPipeline.load_lora_weights(directory)`` (or the XL pipeline) reads the result; the
    adapter's rank and alpha travel in the file's metadata.

    Args:
        unet: The UNet with its peft adapter ``"default"``.
        directory: The folder to write (replaced whole).
        sdxl: Write it as the SDXL pipeline does.
    """
    pipeline_cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in lora_state_dict(unet).items()}
    metadata = unet.peft_config["default"].to_dict()
    if isinstance(metadata["target_modules"], set):  # peft's set: listed in the order of the process's hash seed
        metadata["target_modules"] = sorted(metadata["target_modules"])
    with atomic_dir(directory) as tmp:
        pipeline_cls.save_lora_weights(tmp, unet_lora_layers=state, unet_lora_adapter_metadata=metadata)
        sort_metadata(tmp / LORA_FILE)
    return Path(directory)


def sort_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its ``__metadata__`` keys sorted, in place, so that equal exports are
    equal files: safetensors writes them in a random order (a Rust ``HashMap``; safetensors issue #584).

    Args:
        path: The ``.safetensors`` file; its header keeps its length, the tensors' bytes are untouched.
    """
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > size:
        raise ValueError(f"{path}: the re-serialised safetensors header ({len(text)} bytes) outgrew the original ({size})")
    path.write_bytes(data[:8] + text.ljust(size) + data[8 + size:])


def load_lora(unet: UNet2DConditionModel, config: LoraConfig, directory: str | Path) -> None:
    """Load LoRA weights written by :func:`save_lora` (or any diffusers-format UNet LoRA of the same rank and
    target modules) into the UNet's adapters.

    Args:
        unet: The UNet with its peft adapter ``"default"``.
        config: That adapter's config; a file whose metadata says otherwise is refused.
        directory: The folder holding ``pytorch_lora_weights.safetensors``.
    """
    saved = lora_config(directory)
    mine = {"lora_rank": config.r, "lora_alpha": config.lora_alpha,
            "lora_target_modules": sorted(config.target_modules)}
    if saved and {k: sorted(v) if isinstance(v, list) else v for k, v in saved.items()} != mine:
        raise ValueError(f"{directory} holds a LoRA with {saved}, this backbone's adapters have {mine}; "
                         f"build it with DiffusionBackbone(model=..., **lora_config({str(directory)!r}))")
    state = load_file(Path(directory) / LORA_FILE)
    state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items()})
    result = set_peft_model_state_dict(unet, state, adapter_name="default")
    if result.unexpected_keys:
        raise KeyError(f"{directory}: LoRA keys this backbone's adapters do not have: {result.unexpected_keys[:3]}")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise KeyError(f"{directory}: LoRA lacks weights for {len(missing)} adapter tensors, e.g. {missing[:3]}")


def lora_config(directory: str | Path) -> dict:
    """The adapter settings (``lora_rank``, ``lora_alpha``, ``lora_target_modules``) stored in the metadata of a
    LoRA written by :func:`save_lora`; empty for a file without them.

    Args:
        directory: The folder holding ``pytorch_lora_weights.safetensors``.
    """
    with safe_open(str(Path(directory) / LORA_FILE), "pt") as handle:
        metadata = handle.metadata() or {}
    if "lora_adapter_metadata" not in metadata:
        return {}
    config = json.loads(metadata["lora_adapter_metadata"])
    return {"lora_rank": config["unet.r"], "lora_alpha": config["unet.lora_alpha"],
            "lora_target_modules": list(config["unet.target_modules"])}


def base_unet(unet: UNet2DConditionModel, dtype: torch.dtype) -> UNet2DConditionModel:
    """A copy of the UNet without adapters (the frozen base weights) in ``dtype``, for saving the base model.

    Args:
        unet: The UNet with adapters.
        dtype: The copy's dtype.
    """
    copy = UNet2DConditionModel.from_config(unet.config)
    state = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}
    copy.load_state_dict(state, strict=True)
    return copy.to(dtype)


def save_pretrained(backbone: DiffusionBackbone, directory: str | Path) -> Path:
    """Save the frozen base model (no adapters) as a standard diffusers pipeline folder, atomically.

    The layout is that of the official SD / SDXL repositories (``model_index.json``, ``unet/``, ``vae/``,
    ``text_encoder/``, ``tokenizer/`` with ``vocab.json`` and ``merges.txt``, ``scheduler/``).

    Args:
        backbone: The model whose base weights to save.
        directory: The folder to write (replaced whole).
    """
    parts = dict(
        vae=backbone.vae,
        unet=base_unet(backbone.unet, backbone.weight_dtype),
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        scheduler=DDIMScheduler.from_config(backbone.scheduler_config),
    )
    if backbone.is_sdxl:
        pipeline = StableDiffusionXLPipeline(
            **parts, text_encoder_2=backbone.text_encoder_2, tokenizer_2=backbone.tokenizer_2
        )
    else:
        pipeline = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    with atomic_dir(directory) as tmp:
        pipeline.save_pretrained(tmp)
        for name in ("tokenizer", "tokenizer_2"):
            if (tmp / name).is_dir():
                write_bpe_files(tmp / name)
    return Path(directory)
