"""DiffusionBackbone: one latent text-to-image model with LoRA adapters, shared by every method.

The model and LoRA part: it holds the components (loaded by ``loading.py``), the adapters, the reference-forward
context and the encoders; sampling (``sampler.py``) and export (``export.py``) are parts it delegates to."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lit_pref.backbone import export, sampler
from lit_pref.backbone.conditioning import Conditioning
from lit_pref.backbone.ddim_logprob import Trajectory
from lit_pref.backbone.loading import (
    DEFAULT_LORA_TARGETS,
    DTYPES,
    TOY_PIPELINE,
    add_lora,
    adapters_enabled,
    load_components,
    lora_parameters,
    make_lora_config,
)

__all__ = ["DiffusionBackbone", "TOY_PIPELINE"]

class DiffusionBackbone(nn.Module):
    """A Stable Diffusion (1.x / 2.x / XL) model whose UNet carries trainable peft LoRA adapters.

    Everything but the LoRA parameters is frozen. The reference model of DPO-style methods is the same
    UNet with the adapters disabled (``with backbone.reference_forward(): ...``), so no second copy is held.
    """

    def __init__(
        self,
        model: str = "tiny",
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        lora_target_modules: list[str] = list(DEFAULT_LORA_TARGETS),
        lora_init: Literal["gaussian", "kaiming"] = "gaussian",
        lora_dropout: float = 0.0,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        vae_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        prediction_type: Literal["epsilon", "v_prediction"] | None = None,
        gradient_checkpointing: bool = False,
        compile_unet: bool = False,
        revision: str | None = None,
        variant: str | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            model: ``"toy"`` (the shipped toy-world model, pre-trained on coloured shapes at 32 px),
                ``"tiny"`` / ``"tiny-sdxl"`` (random weights built from config, for tests), ``"small"`` / ``"sd15"``
                (random-weight benchmark presets: an SD-like 80M-parameter UNet, the SD1.5 architecture), a hub
                id such as ``runwayml/stable-diffusion-v1-5`` or ``stabilityai/stable-diffusion-xl-base-1.0``,
                or a local diffusers pipeline folder (SD1.x, SD2.x or SDXL layout).
            lora_rank: Rank r of the LoRA adapters on the UNet.
            lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r); ``None`` means alpha = r.
            lora_target_modules: Names of the UNet linear layers that get adapters (attention projections
                by default, as in Diffusion-DPO's LoRA variant).
            lora_init: ``"gaussian"``: A ~ N(0, 1/r); ``"kaiming"``: peft's default Kaiming-uniform A.
                B is zero in both, so the policy starts equal to the reference.
            lora_dropout: Dropout on the LoRA branch.
            dtype: Storage dtype of the frozen UNet and text encoders (bf16/fp16 saves memory on GPU).
                LoRA parameters always stay float32.
            vae_dtype: Storage dtype of the VAE; float32 by default (fp16 VAEs produce NaNs).
            prediction_type: Override the scheduler's prediction type (``None``: read it from the model).
                The tiny presets use it to build a v-prediction model.
            gradient_checkpointing: Recompute UNet activations in the backward pass to save memory (the SD recipes
                turn it on; it costs about one more UNet forward per step).
            compile_unet: Compile the UNet with ``torch.compile`` (in place, so parameter names and checkpoints do not
                change). It compiles at the first forward, and once more for the reference (adapters off); worth it
                on a GPU for long runs.
            revision: Hub revision of ``model``.
            variant: Weight variant of ``model`` (e.g. ``"fp16"``).
            seed: Seed of the tiny presets' random weights (ignored for pretrained models).
        """
        super().__init__()
        self.model_name = model
        self.weight_dtype = DTYPES[dtype]
        self.vae_dtype = DTYPES[vae_dtype]
        parts = load_components(model, revision=revision, variant=variant, seed=seed, prediction_type=prediction_type)
        self.vae: AutoencoderKL = parts["vae"]
        self.unet: UNet2DConditionModel = parts["unet"]
        self.text_encoder: CLIPTextModel = parts["text_encoder"]
        self.text_encoder_2: CLIPTextModelWithProjection | None = parts.get("text_encoder_2")
        self.tokenizer: CLIPTokenizer = parts["tokenizer"]
        self.tokenizer_2: CLIPTokenizer | None = parts.get("tokenizer_2")
        self.scheduler_config = dict(parts["scheduler"].config)
        if prediction_type is not None:
            self.scheduler_config["prediction_type"] = prediction_type
        # Training noise (add_noise, velocity) follows DDPM; sampling builds a DDIM scheduler from the same config.
        self.noise_scheduler: DDPMScheduler = DDPMScheduler.from_config(self.scheduler_config)

        for module in self._frozen_modules():
            module.requires_grad_(False)
            module.eval()
        for module in self._frozen_modules():
            dtype = self.vae_dtype if module is self.vae else self.weight_dtype
            if module.dtype != dtype:
                module.to(dtype)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.lora_config = make_lora_config(lora_rank, lora_alpha, lora_target_modules, lora_init, lora_dropout)
        add_lora(self.unet, self.lora_config, seed)
        if compile_unet:
            self.unet.compile()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model: str, **kwargs) -> DiffusionBackbone:
        """Load a hub id or local diffusers folder (SD1.x / 2.x / XL); ``kwargs`` as in ``__init__``."""
        return cls(model=model, **kwargs)

    @classmethod
    def tiny(cls, sdxl: bool = False, **kwargs) -> DiffusionBackbone:
        """The tiny SD-like (or SDXL-like) preset with random weights; ``kwargs`` as in ``__init__``."""
        return cls(model="tiny-sdxl" if sdxl else "tiny", **kwargs)

    def _frozen_modules(self) -> list[nn.Module]:
        return [m for m in (self.vae, self.unet, self.text_encoder, self.text_encoder_2) if m is not None]

    def train(self, mode: bool = True) -> DiffusionBackbone:
        """Only the UNet (its LoRA dropout) follows train/eval; VAE and text encoders stay in eval mode."""
        self.training = mode
        self.unet.train(mode)
        return self

    # ------------------------------------------------------------------ properties
    @property
    def is_sdxl(self) -> bool:
        """Whether the model has SDXL's second text encoder and micro-conditioning."""
        return self.text_encoder_2 is not None

    @property
    def prediction_type(self) -> str:
        """``"epsilon"`` or ``"v_prediction"``, from the scheduler config."""
        return self.noise_scheduler.config.prediction_type

    @property
    def device(self) -> torch.device:
        """The UNet's device (of its first parameter: diffusers' ``unet.device`` walks every submodule looking for
        group-offloading hooks, milliseconds a call, several calls a step)."""
        return next(self.unet.parameters()).device

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        """The resolution (pixels) the UNet was built or trained for."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def lora_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable LoRA parameters (the only parameters with ``requires_grad``)."""
        return lora_parameters(self.unet)

    # ------------------------------------------------------------------ reference model
    @contextmanager
    def reference_forward(self) -> Iterator[None]:
        """The reference (base) model's forward: the UNet with its LoRA adapters disabled, building no autograd graph.

        The one context every method runs the reference in (``with backbone.reference_forward(): ...``). No graph is
        ``torch.inference_mode``, except where DeepSpeed ZeRO-3 partitions the UNet (parameters with a ``ds_id``):
        there it is ``torch.no_grad``, because ZeRO-3 gathers the weights in forward hooks and weights gathered in
        inference mode leave its backward hooks without grad accumulators. Tensors made inside are thus inference
        tensors on every other strategy: a loss that saves one for backward needs a ``.clone()`` of it outside.
        The adapters are enabled again on exit (even after an exception) unless they were already disabled.
        """
        partitioned = any(hasattr(p, "ds_id") for p in self.unet.parameters())
        was_enabled = adapters_enabled(self.unet)
        with torch.no_grad() if partitioned else torch.inference_mode():
            self.unet.disable_adapters()
            try:
                yield
            finally:
                if was_enabled:
                    self.unet.enable_adapters()

    # ------------------------------------------------------------------ encoders
    def _own_precision(self) -> torch.autocast:
        """Frozen encoders run in their storage dtype, not under an outer autocast (the VAE stays float32)."""
        return torch.autocast(self.device.type, enabled=False)

    @torch.no_grad()
    def encode_latent_dist(self, images: Tensor) -> Tensor:
        """The VAE posterior of images in [-1, 1] (B, 3, H, W): its ``parameters`` (B, 2C, h, w), mean and
        log-variance stacked along channels, in the VAE's dtype. What the encoding cache stores."""
        with self._own_precision():
            return self.vae.encode(images.to(self.device, self.vae_dtype)).latent_dist.parameters

    @torch.no_grad()
    def sample_latents(
        self, latent_dist: Tensor, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> Tensor:
        """Scaled latents drawn from a posterior given by :meth:`encode_latent_dist` (the same draw as
        ``vae.encode(x).latent_dist.sample(generator)``; one generator, or one per image)."""
        posterior = DiagonalGaussianDistribution(latent_dist.to(self.device, self.vae_dtype))
        latents = posterior.sample(generator=generator)
        shift = self.vae.config.get("shift_factor") or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).to(self.weight_dtype)

    def encode_images(self, images: Tensor, generator: torch.Generator | list[torch.Generator] | None = None) -> Tensor:
        """VAE-encode images in [-1, 1] (B, 3, H, W) to scaled latents, sampled from the posterior (with one
        generator, or one per image)."""
        return self.sample_latents(self.encode_latent_dist(images), generator=generator)

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Decode scaled latents to images in [0, 1]."""
        shift = self.vae.config.get("shift_factor") or 0.0
        latents = latents.to(self.vae_dtype) / self.vae.config.scaling_factor + shift
        with self._own_precision():
            return (self.vae.decode(latents).sample.float() / 2 + 0.5).clamp(0, 1)

    def _token_ids(self, tokenizer: CLIPTokenizer, prompts: Sequence[str]) -> Tensor:
        return tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """The text encoders' outputs for B prompts, in the weight dtype: ``{"hidden": (B, 77, D)}``, and for SDXL
        also ``"pooled": (B, P)`` (the second encoder's projected text embedding). What the encoding cache stores;
        :meth:`conditioning` turns it into the UNet's conditioning."""
        with self._own_precision():
            if not self.is_sdxl:
                hidden = self.text_encoder(self._token_ids(self.tokenizer, prompts))[0]
                return {"hidden": hidden.to(self.weight_dtype)}
            out1 = self.text_encoder(self._token_ids(self.tokenizer, prompts), output_hidden_states=True)
            out2 = self.text_encoder_2(self._token_ids(self.tokenizer_2, prompts), output_hidden_states=True)
            hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
            return {"hidden": hidden.to(self.weight_dtype), "pooled": out2.text_embeds.to(self.weight_dtype)}

    def conditioning(
        self,
        text: dict[str, Tensor],
        original_sizes: Tensor | None = None,
        crop_top_left: Tensor | None = None,
        target_size: tuple[int, int] | None = None,
    ) -> Conditioning:
        """The UNet's conditioning from :meth:`encode_text`'s output (SDXL: plus the micro-conditioning time ids;
        arguments as in :meth:`encode_prompts`)."""
        hidden = text["hidden"].to(self.device, self.weight_dtype)
        if not self.is_sdxl:
            return {"encoder_hidden_states": hidden}
        batch = hidden.shape[0]
        size = target_size or (self.default_resolution, self.default_resolution)
        target = torch.tensor(size, device=self.device).expand(batch, 2)
        original = target if original_sizes is None else original_sizes.to(self.device)
        crops = torch.zeros_like(target) if crop_top_left is None else crop_top_left.to(self.device)
        time_ids = torch.cat([original, crops, target], dim=1).to(self.weight_dtype)
        pooled = text["pooled"].to(self.device, self.weight_dtype)
        return {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    def encode_prompts(
        self,
        prompts: Sequence[str],
        original_sizes: Tensor | None = None,
        crop_top_left: Tensor | None = None,
        target_size: tuple[int, int] | None = None,
    ) -> Conditioning:
        """Text conditioning for the UNet, as in the diffusers pipelines.

        Args:
            prompts: B prompts (empty string = unconditional).
            original_sizes: SDXL only: (B, 2) height/width of the source images; default ``target_size``.
            crop_top_left: SDXL only: (B, 2) crop offsets; default zeros.
            target_size: SDXL only: (height, width) generated; default the model's resolution.

        Returns:
            ``{"encoder_hidden_states": (B, 77, D)}``; SDXL adds ``"added_cond_kwargs"`` with the pooled
            ``text_embeds`` of the second encoder and the six micro-conditioning ``time_ids``.
        """
        return self.conditioning(self.encode_text(prompts), original_sizes, crop_top_left, target_size)

    def encoder_fingerprint(self) -> str:
        """A SHA-256 of everything the outputs of :meth:`encode_latent_dist` and :meth:`encode_text` depend on:
        the VAE's and text encoders' configs, weights and dtypes, and the tokenizers. The encoding cache is keyed
        by it, so changing any of them invalidates cached latents and embeddings."""
        digest = hashlib.sha256()
        parts = [("vae", self.vae), ("text_encoder", self.text_encoder), ("text_encoder_2", self.text_encoder_2)]
        for name, module in parts:
            if module is None:
                continue
            config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
            digest.update(f"{name}:{json.dumps(config, sort_keys=True, default=str)}".encode())
            for key, tensor in module.state_dict().items():
                tensor = tensor.detach().to("cpu").contiguous()
                digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        for tokenizer in (self.tokenizer, self.tokenizer_2):
            if tokenizer is not None:  # the fast tokenizer's JSON holds vocabulary, merges, normalizer
                digest.update(f"{type(tokenizer).__name__}:{tokenizer.model_max_length}".encode())
                # without padding and truncation: every call sets them (``_token_ids`` passes its own), so they
                # say whether the tokenizer has been called yet, not what it makes
                state = {k: v for k, v in json.loads(tokenizer.backend_tokenizer.to_str()).items()
                         if k not in ("padding", "truncation")}
                digest.update(json.dumps(state, sort_keys=True).encode())
        return digest.hexdigest()

    # ------------------------------------------------------------------ denoiser
    def predict(self, noisy_latents: Tensor, timesteps: Tensor, cond: Conditioning) -> Tensor:
        """The UNet's output (epsilon or v) for noisy latents at integer timesteps."""
        return self.unet(noisy_latents, timesteps, **cond).sample

    def training_target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the UNet regresses: the noise (epsilon-prediction) or the velocity (v-prediction)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    # ------------------------------------------------------------------ sampling (sampler.py)
    def sample(
        self,
        prompts: Sequence[str],
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str = "",
        latents: Tensor | None = None,
        return_trajectory: bool = False,
    ) -> Tensor | Trajectory:
        """Generate images in [0, 1] (B, 3, H, W), or a trajectory with per-step log-probs, with DDIM and
        classifier-free guidance, as the diffusers pipelines do; see :func:`lit_pref.backbone.sampler.sample`
        for the arguments."""
        return sampler.sample(self, prompts, num_inference_steps, guidance_scale, eta, generator, height, width,
                              negative_prompt, latents, return_trajectory)

    def step_log_prob(
        self,
        latents_t: Tensor,
        timesteps: int | Tensor,
        next_latents: Tensor,
        cond: Conditioning | Sequence[str],
        guidance_scale: float,
        eta: float,
        num_inference_steps: int,
        negative_cond: Conditioning | None = None,
        negative_prompt: str = "",
    ) -> Tensor:
        """Recompute ``log p(next_latents | latents_t, c)`` (B,) of stored DDIM transitions under the current weights,
        with grad; see :func:`lit_pref.backbone.sampler.step_log_prob` for the contract and the arguments."""
        return sampler.step_log_prob(self, latents_t, timesteps, next_latents, cond, guidance_scale, eta,
                                     num_inference_steps, negative_cond, negative_prompt)

    # ------------------------------------------------------------------ export (export.py)
    def lora_state_dict(self) -> dict[str, Tensor]:
        """The LoRA weights in the diffusers key format (``unet.``-less), as :meth:`save_lora` writes them."""
        return export.lora_state_dict(self.unet)

    def save_lora(self, directory: str | Path) -> Path:
        """Write the LoRA adapters in the diffusers format, atomically, to the folder ``directory``
        (``StableDiffusionPipeline.load_lora_weights(directory)`` or the XL pipeline reads it)."""
        return export.save_lora(self.unet, directory, sdxl=self.is_sdxl)

    def load_lora(self, directory: str | Path) -> None:
        """Load LoRA weights written by :meth:`save_lora` from the folder ``directory`` (or any diffusers-format UNet
        LoRA of the same rank and target modules). Build the backbone with ``**lora_config(directory)`` to match."""
        export.load_lora(self.unet, self.lora_config, directory)

    def base_unet(self) -> UNet2DConditionModel:
        """A copy of the UNet without adapters (the frozen base weights), for saving the base model."""
        return export.base_unet(self.unet, self.weight_dtype)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Save the frozen base model (no adapters) to the folder ``directory`` as a standard diffusers pipeline
        folder, atomically (the layout of the official SD / SDXL repositories)."""
        return export.save_pretrained(self, directory)
