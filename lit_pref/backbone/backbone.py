"""DiffusionBackbone: one latent text-to-image model with LoRA adapters, shared by every method."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lit_pref.backbone.ddim_logprob import Trajectory, ddim_step_with_logprob
from lit_pref.backbone.tiny import build_tiny_components
from lit_pref.backbone.tokenizer import write_bpe_files
from lit_pref.io import atomic_dir

PRESETS = {"tiny": "sd", "tiny-sdxl": "sdxl", "small": "small", "sd15": "sd15"}  # built from config
TOY_PIPELINE = Path(__file__).resolve().parents[1] / "assets" / "toy" / "pipeline"  # pre-trained, shipped
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")

Conditioning = dict  # keyword arguments of the UNet: encoder_hidden_states [+ added_cond_kwargs for SDXL]


def repeat_conditioning(cond: Conditioning, repeats: int) -> Conditioning:
    """Repeat every tensor of a conditioning ``repeats`` times along the batch (``[a, b] -> [a, b, a, b]``)."""
    out = {"encoder_hidden_states": cond["encoder_hidden_states"].repeat(repeats, 1, 1)}
    if "added_cond_kwargs" in cond:
        out["added_cond_kwargs"] = {k: v.repeat(repeats, 1) for k, v in cond["added_cond_kwargs"].items()}
    return out


def cat_conditioning(conds: Sequence[Conditioning]) -> Conditioning:
    """Concatenate conditionings along the batch."""
    out = {"encoder_hidden_states": torch.cat([c["encoder_hidden_states"] for c in conds])}
    if "added_cond_kwargs" in conds[0]:
        keys = conds[0]["added_cond_kwargs"]
        out["added_cond_kwargs"] = {k: torch.cat([c["added_cond_kwargs"][k] for c in conds]) for k in keys}
    return out


class DiffusionBackbone(nn.Module):
    """A Stable Diffusion (1.x / 2.x / XL) model whose UNet carries trainable peft LoRA adapters.

    Everything but the LoRA parameters is frozen. The reference model of DPO-style methods is the same
    UNet with the adapters disabled (``with backbone.reference(): ...``), so no second copy is held.
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
        if model == "toy":
            model = str(TOY_PIPELINE)
        self.weight_dtype = DTYPES[dtype]
        self.vae_dtype = DTYPES[vae_dtype]
        if model in PRESETS:
            parts = build_tiny_components(PRESETS[model], seed=seed, prediction_type=prediction_type or "epsilon")
        else:
            parts = _load_components(model, revision=revision, variant=variant)
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
        self.lora_config = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha if lora_alpha is not None else lora_rank,
            lora_dropout=lora_dropout,
            init_lora_weights="gaussian" if lora_init == "gaussian" else True,
            target_modules=list(lora_target_modules),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet.add_adapter(self.lora_config)
        for param in self.lora_parameters():
            param.data = param.data.float()
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
        return (p for n, p in self.unet.named_parameters() if "lora_" in n)

    # ------------------------------------------------------------------ reference model
    @contextmanager
    def reference(self) -> Iterator[None]:
        """Run the UNet with LoRA adapters disabled: the frozen reference / base model."""
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def no_graph(self) -> torch.inference_mode | torch.no_grad:
        """Context for forwards that need no autograd graph (the reference's): ``torch.inference_mode``, or
        ``torch.no_grad`` where DeepSpeed ZeRO-3 partitions the UNet (parameters with a ``ds_id``): it gathers them
        in forward hooks, and weights gathered in inference mode leave its backward hooks without grad accumulators."""
        partitioned = any(hasattr(p, "ds_id") for p in self.unet.parameters())
        return torch.no_grad() if partitioned else torch.inference_mode()

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

    def guided_prediction(
        self, scheduler: DDIMScheduler, latents: Tensor, timesteps: Tensor, cond: Conditioning, guidance_scale: float
    ) -> Tensor:
        """The UNet output with classifier-free guidance, as the diffusers pipelines compute it.

        With ``guidance_scale > 1``, ``cond`` holds the unconditional rows first and the conditional rows second
        (``cat_conditioning([negative, positive])``) and the result is ``uncond + g * (text - uncond)``.
        ``timesteps`` is a 0-d tensor or one per row of ``latents``.
        """
        cfg = guidance_scale > 1.0
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, timesteps)
        model_t = torch.cat([timesteps] * 2) if cfg and timesteps.ndim == 1 else timesteps
        pred = self.predict(model_in, model_t, cond)
        if not cfg:
            return pred
        pred_uncond, pred_text = pred.chunk(2)
        return pred_uncond + guidance_scale * (pred_text - pred_uncond)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
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
        """Generate images in [0, 1] (B, 3, H, W) with DDIM and classifier-free guidance.

        The same arithmetic and random draws as the diffusers pipelines (``StableDiffusionPipeline`` /
        ``StableDiffusionXLPipeline`` with a ``DDIMScheduler`` and ``negative_prompt=""``), so a LoRA
        exported by :meth:`save_lora` gives the same images there for the same generator.

        With ``return_trajectory=True`` (needs ``eta > 0``; the papers use ``eta = 1``) every step is
        :func:`~lit_pref.backbone.ddim_logprob.ddim_step_with_logprob` and a
        :class:`~lit_pref.backbone.ddim_logprob.Trajectory` is returned: the images, every latent x_T .. x_0,
        the float32 log-prob of each (guided) transition under the current weights, and the timesteps. Its
        noise comes from ``generator`` in the same order and dtype as ``DDIMScheduler.step`` draws it, so
        the images equal those of ``return_trajectory=False`` with the same ``eta`` and generator (up to
        float rounding). :meth:`step_log_prob` recomputes the stored log-probs.
        """
        if return_trajectory and not eta > 0:
            raise ValueError(f"return_trajectory=True needs eta > 0 (an eta = 0 DDIM step has no log-probability); "
                             f"got eta={eta}")
        height = height or self.default_resolution
        width = width or self.default_resolution
        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        cfg = guidance_scale > 1.0
        cond = self.encode_prompts(prompts, target_size=(height, width))
        if cfg:
            uncond = self.encode_prompts([negative_prompt] * len(prompts), target_size=(height, width))
            cond = cat_conditioning([uncond, cond])
        shape = (len(prompts), self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.weight_dtype)
        latents = latents * scheduler.init_noise_sigma
        all_latents, log_probs = [latents], []
        for t in scheduler.timesteps:
            pred = self.guided_prediction(scheduler, latents, t, cond, guidance_scale)
            if not return_trajectory:
                latents = scheduler.step(pred, t, latents, eta=eta, generator=generator).prev_sample
                continue
            latents, log_prob = ddim_step_with_logprob(scheduler, pred, t, latents, eta=eta, generator=generator)
            all_latents.append(latents)
            log_probs.append(log_prob)
        images = self.decode_latents(latents)
        if not return_trajectory:
            return images
        return Trajectory(
            images=images,
            latents=torch.stack(all_latents, dim=1),
            log_probs=torch.stack(log_probs, dim=1),
            timesteps=scheduler.timesteps.clone(),
            prompts=list(prompts),
            guidance_scale=float(guidance_scale),
            eta=float(eta),
            negative_prompt=negative_prompt,
        )

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
        """Recompute ``log p(next_latents | latents_t, c)`` of stored DDIM transitions under the current weights.

        The contract, for a :class:`~lit_pref.backbone.ddim_logprob.Trajectory` ``traj`` from
        ``sample(prompts, num_inference_steps=N, guidance_scale=g, eta=eta, return_trajectory=True)`` and a step
        index ``k`` (0 = noisiest)::

            logp = backbone.step_log_prob(traj.latents[:, k], traj.timesteps[k], traj.latents[:, k + 1],
                                          traj.prompts, g, eta, N)        # (B,), float32, with grad
            with backbone.reference():
                logp_init = backbone.step_log_prob(...same arguments...)  # the initial model (adapters off)

        With unchanged weights ``logp`` equals ``traj.log_probs[:, k]`` (same ops; float rounding only). Per-sample
        step indices ``ks`` (B,) work too: pass ``traj.latents[arange(B), ks]``, ``traj.timesteps[ks]`` and
        ``traj.latents[arange(B), ks + 1]``. Rows of different trajectories (winners and losers of many pairs)
        may be concatenated into one batch, with their conditionings concatenated alike.

        Not under ``no_grad``: gradients flow to the LoRA parameters (call it inside ``torch.no_grad()`` for
        the reference). One UNet pass on 2B rows with guidance (``guidance_scale > 1``), on B rows without.

        Args:
            latents_t: (B, C, h, w) x at the start of the step (``traj.latents[:, k]``).
            timesteps: The UNet timestep of the step, ``traj.timesteps[k]``: an int, a 0-d tensor, or (B,) per
                sample. Must be one of the N-step DDIM schedule's timesteps (a step index passed by mistake
                raises ``ValueError``).
            next_latents: (B, C, h, w) the stored result of the step (``traj.latents[:, k + 1]``).
            cond: The conditioning of the B rows, made as :meth:`sample` makes it
                (``encode_prompts(prompts, target_size=(H, W))``), or the B prompts themselves (encoded here with
                the target size ``latents_t``'s size times the VAE scale factor).
            guidance_scale: The classifier-free guidance scale of the sampling (> 1 enables guidance).
            eta: The DDIM eta of the sampling (> 0).
            num_inference_steps: N, the number of steps of the sampled chain (``traj.num_steps``): it fixes the
                previous timestep ``t - T // N``.
            negative_cond: The B-row unconditional conditioning for guidance; ``None`` encodes
                ``negative_prompt`` (pass it to save the text-encoder pass when calling repeatedly).
            negative_prompt: The unconditional prompt used when ``negative_cond`` is ``None``; ``""`` as in
                :meth:`sample`.

        Returns:
            (B,) float32 log-probs (means over latent elements, see ``ddim_step_with_logprob``).
        """
        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        batch = latents_t.shape[0]
        t = torch.as_tensor(timesteps, device=self.device).long()
        if not torch.isin(t, scheduler.timesteps).all():
            raise ValueError(f"timesteps {t.tolist()} are not all in the {num_inference_steps}-step DDIM schedule "
                             f"{scheduler.timesteps.tolist()}; pass traj.timesteps[k], not the step index k")
        size = (latents_t.shape[-2] * self.vae_scale_factor, latents_t.shape[-1] * self.vae_scale_factor)
        if not isinstance(cond, dict):
            if len(cond) != batch:
                raise ValueError(f"got {len(cond)} prompts for {batch} latents")
            cond = self.encode_prompts(list(cond), target_size=size)
        cfg = guidance_scale > 1.0
        latents_t = latents_t.to(self.device, self.weight_dtype)
        if cfg:
            if negative_cond is None:
                negative_cond = self.encode_prompts([negative_prompt] * batch, target_size=size)
            cond = cat_conditioning([negative_cond, cond])
        pred = self.guided_prediction(scheduler, latents_t, t, cond, guidance_scale)
        _, log_prob = ddim_step_with_logprob(scheduler, pred, t, latents_t, eta=eta,
                                             prev_sample=next_latents.to(self.device))
        return log_prob

    # ------------------------------------------------------------------ export
    def lora_state_dict(self) -> dict[str, Tensor]:
        """The LoRA weights in the diffusers key format (``unet.``-less), as ``save_lora`` writes them."""
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))

    def save_lora(self, directory: str | Path) -> Path:
        """Write the LoRA adapters in the diffusers format, atomically.

        ``StableDiffusionPipeline.load_lora_weights(directory)`` (or the XL pipeline) reads the result; the
        adapter's rank and alpha travel in the file's metadata.
        """
        pipeline_cls = StableDiffusionXLPipeline if self.is_sdxl else StableDiffusionPipeline
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.lora_state_dict().items()}
        with atomic_dir(directory) as tmp:
            pipeline_cls.save_lora_weights(
                tmp, unet_lora_layers=state, unet_lora_adapter_metadata=self.unet.peft_config["default"].to_dict()
            )
        return Path(directory)

    def load_lora(self, directory: str | Path) -> None:
        """Load LoRA weights written by :meth:`save_lora` (or any diffusers-format UNet LoRA of the same rank and
        target modules) into the adapters. Build the backbone with ``**lora_config(directory)`` to match them."""
        saved = lora_config(directory)
        mine = {"lora_rank": self.lora_config.r, "lora_alpha": self.lora_config.lora_alpha,
                "lora_target_modules": sorted(self.lora_config.target_modules)}
        if saved and {k: sorted(v) if isinstance(v, list) else v for k, v in saved.items()} != mine:
            raise ValueError(f"{directory} holds a LoRA with {saved}, this backbone's adapters have {mine}; "
                             f"build it with DiffusionBackbone(model=..., **lora_config({str(directory)!r}))")
        state = load_file(Path(directory) / "pytorch_lora_weights.safetensors")
        state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items()})
        result = set_peft_model_state_dict(self.unet, state, adapter_name="default")
        if result.unexpected_keys:
            raise KeyError(f"{directory}: LoRA keys this backbone's adapters do not have: {result.unexpected_keys[:3]}")
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing:
            raise KeyError(f"{directory}: LoRA lacks weights for {len(missing)} adapter tensors, e.g. {missing[:3]}")

    def base_unet(self) -> UNet2DConditionModel:
        """A copy of the UNet without adapters (the frozen base weights), for saving the base model."""
        unet = UNet2DConditionModel.from_config(self.unet.config)
        state = {
            k.replace(".base_layer", ""): v for k, v in self.unet.state_dict().items() if "lora_" not in k
        }
        unet.load_state_dict(state, strict=True)
        return unet.to(self.weight_dtype)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Save the frozen base model (no adapters) as a standard diffusers pipeline folder, atomically.

        The layout is that of the official SD / SDXL repositories (``model_index.json``, ``unet/``, ``vae/``,
        ``text_encoder/``, ``tokenizer/`` with ``vocab.json`` and ``merges.txt``, ``scheduler/``).
        """
        parts = dict(
            vae=self.vae,
            unet=self.base_unet(),
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            scheduler=DDIMScheduler.from_config(self.scheduler_config),
        )
        if self.is_sdxl:
            pipeline = StableDiffusionXLPipeline(
                **parts, text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2
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


def lora_config(directory: str | Path) -> dict:
    """The adapter settings (``lora_rank``, ``lora_alpha``, ``lora_target_modules``) stored in the metadata of a
    LoRA written by :meth:`DiffusionBackbone.save_lora`; empty for a file without them."""
    from safetensors import safe_open

    with safe_open(str(Path(directory) / "pytorch_lora_weights.safetensors"), "pt") as handle:
        metadata = handle.metadata() or {}
    if "lora_adapter_metadata" not in metadata:
        return {}
    config = json.loads(metadata["lora_adapter_metadata"])
    return {"lora_rank": config["unet.r"], "lora_alpha": config["unet.lora_alpha"],
            "lora_target_modules": list(config["unet.target_modules"])}


def _load_components(model: str, revision: str | None, variant: str | None) -> dict:
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
