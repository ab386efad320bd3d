"""Tiny Stable-Diffusion-like components built from config with fixed seeds (tests, demo, benchmarks).

Shapes follow SD1.x (``tiny``) and SDXL (``tiny-sdxl``) exactly in structure -- VAE, UNet with
cross-attention, CLIP text encoder(s), scaled-linear noise schedule -- at a size that trains on a
laptop CPU. Cross-attention is left out of the highest-resolution block: attention there dominates
the step time of a model this small.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from lit_pref.backbone.tokenizer import CLIP_VOCAB_SIZE, offline_clip_tokenizer

TINY_RESOLUTION = 32  # pixels; the tiny VAE downsamples 2x, so latents are 16 x 16 x 4


def sd_noise_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """The noise schedule of Stable Diffusion 1.x/2.x/XL (scaled-linear betas, 1000 steps, final alpha not 1)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _text_config(projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
    )


def build_tiny_components(kind: str = "sd", seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """Build the components of a tiny pipeline, deterministic in ``seed``; the global RNG is untouched.

    Args:
        kind: ``"sd"`` for an SD1.x-like model, ``"sdxl"`` for an SDXL-like one (two text encoders,
            pooled text embeddings and micro-conditioning time ids).
        seed: Seed of the random weights.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``, written into the scheduler config.

    Returns:
        A dict with the keyword arguments of ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``
        (without the safety checker).
    """
    if kind not in ("sd", "sdxl"):
        raise ValueError(f"unknown tiny preset kind {kind!r}; expected 'sd' or 'sdxl'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _tiny_vae()
        torch.manual_seed(seed + 1)
        text_encoder = CLIPTextModel(_text_config())
        unet_kwargs = dict(
            sample_size=TINY_RESOLUTION // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8,
            norm_num_groups=8,
        )
        components = dict(vae=vae, text_encoder=text_encoder, tokenizer=offline_clip_tokenizer())
        if kind == "sdxl":
            torch.manual_seed(seed + 2)
            components["text_encoder_2"] = CLIPTextModelWithProjection(_text_config(projection_dim=32))
            components["tokenizer_2"] = offline_clip_tokenizer(pad_token="!")
            time_embed_dim = 8
            unet_kwargs.update(
                cross_attention_dim=32 + 32,  # hidden sizes of both text encoders, concatenated
                addition_embed_type="text_time",
                addition_time_embed_dim=time_embed_dim,
                projection_class_embeddings_input_dim=6 * time_embed_dim + 32,  # 6 time ids + pooled text
                use_linear_projection=True,
            )
        else:
            unet_kwargs.update(cross_attention_dim=32)
        torch.manual_seed(seed + 3)
        components["unet"] = UNet2DConditionModel(**unet_kwargs)
    components["scheduler"] = sd_noise_scheduler(prediction_type)
    return components
