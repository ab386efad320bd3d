"""Stable-Diffusion-like components built from config with fixed seeds (tests, demo, benchmarks).

Shapes follow SD1.x (``tiny``) and SDXL (``tiny-sdxl``) exactly in structure -- VAE, UNet with
cross-attention, CLIP text encoder(s), scaled-linear noise schedule -- at a size that trains on a
laptop CPU. Cross-attention is left out of the highest-resolution block: attention there dominates
the step time of a model this small.

Two larger presets exist for benchmarks (random weights, nothing downloaded):

* ``small``: an SD1.x-shaped model at about a tenth of the size -- UNet with SD1.5's block layout and
  channels (96, 192, 384, 384) (79.6M parameters), an SD-shaped VAE with 8x downsampling and channels
  (64, 128, 256, 256) (20.9M), a 6-layer CLIP text encoder of width 512 (44.3M); 256 px.
* ``sd15``: the Stable Diffusion 1.5 architecture exactly -- UNet 859.5M, VAE 83.7M, CLIP ViT-L/14
  text encoder 123.1M parameters (the counts of ``runwayml/stable-diffusion-v1-5``); 512 px.

Build them under ``with torch.device("meta"):`` to inspect shapes without allocating memory.
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


def _clip_text_config(width: int, layers: int, heads: int) -> CLIPTextConfig:
    """An SD1.x text encoder (CLIP ViT-L/14's text tower at width 768, 12 layers, 12 heads)."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=width,
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


def _sd_vae(channels: tuple[int, ...], resolution: int) -> AutoencoderKL:
    """SD1.x's VAE layout (4 blocks, 8x downsampling, 2 layers per block, scaling factor 0.18215)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=channels,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=resolution,
        scaling_factor=0.18215,
    )


def _sd_unet(channels: tuple[int, ...], cross_attention_dim: int, resolution: int) -> UNet2DConditionModel:
    """SD1.5's UNet layout (``runwayml/stable-diffusion-v1-5/unet/config.json``) with the given channels."""
    return UNet2DConditionModel(
        sample_size=resolution // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,  # SD1.5's config value (it is the number of heads)
        norm_num_groups=32,
    )


# kind -> (UNet channels, VAE channels, text width, text layers, text heads, resolution in pixels)
SD_LIKE = {
    "small": ((96, 192, 384, 384), (64, 128, 256, 256), 512, 6, 8, 256),
    "sd15": ((320, 640, 1280, 1280), (128, 256, 512, 512), 768, 12, 12, 512),
}
KINDS = ("sd", "sdxl", *SD_LIKE)


def build_tiny_components(kind: str = "sd", seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """Build the components of a preset pipeline, deterministic in ``seed``; the global RNG is untouched.

    Args:
        kind: ``"sd"`` for a tiny SD1.x-like model, ``"sdxl"`` for a tiny SDXL-like one (two text encoders,
            pooled text embeddings and micro-conditioning time ids), ``"small"`` or ``"sd15"`` for the
            benchmark presets described in the module docstring.
        seed: Seed of the random weights.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``, written into the scheduler config.

    Returns:
        A dict with the keyword arguments of ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``
        (without the safety checker).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown preset kind {kind!r}; expected one of {KINDS}")
    if kind in SD_LIKE:
        return _build_sd_like(kind, seed, prediction_type)
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


def _build_sd_like(kind: str, seed: int, prediction_type: str) -> dict:
    unet_channels, vae_channels, width, layers, heads, resolution = SD_LIKE[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _sd_vae(vae_channels, resolution)
        torch.manual_seed(seed + 1)
        text_encoder = CLIPTextModel(_clip_text_config(width, layers, heads))
        torch.manual_seed(seed + 3)
        unet = _sd_unet(unet_channels, width, resolution)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=offline_clip_tokenizer(), unet=unet,
                scheduler=sd_noise_scheduler(prediction_type))
