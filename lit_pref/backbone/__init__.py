"""The shared diffusion + LoRA backbone: ``DiffusionBackbone`` (the model and LoRA, the reference-forward context,
the encoders) and its parts: loading, sampling with per-step log-probs, export."""

from lit_pref.backbone.backbone import DiffusionBackbone
from lit_pref.backbone.conditioning import Conditioning, cat_conditioning, repeat_conditioning
from lit_pref.backbone.ddim_logprob import Trajectory, ddim_step_with_logprob
from lit_pref.backbone.export import lora_config
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
