"""The shared diffusion + LoRA backbone: loading, adapters, reference toggle, encoders, sampling, export."""

from lit_pref.backbone.backbone import (
    Conditioning,
    DiffusionBackbone,
    cat_conditioning,
    lora_config,
    repeat_conditioning,
)
from lit_pref.backbone.ddim_logprob import Trajectory, ddim_step_with_logprob
from lit_pref.backbone.tokenizer import offline_clip_tokenizer

__all__ = [
    "Conditioning",
    "DiffusionBackbone",
    "Trajectory",
    "cat_conditioning",
    "ddim_step_with_logprob",
    "lora_config",
    "offline_clip_tokenizer",
    "repeat_conditioning",
]
