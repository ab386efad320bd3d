"""The sampling part of the backbone: the DDIM loop with classifier-free guidance, trajectories with per-step
log-probabilities, and the recomputation of a stored step's log-probability (the maths is in ``ddim_logprob.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from lit_pref.backbone.conditioning import Conditioning, cat_conditioning, select_conditioning
from lit_pref.backbone.ddim_logprob import Trajectory, ddim_step_with_logprob

if TYPE_CHECKING:
    from lit_pref.backbone.backbone import DiffusionBackbone


def ddim_scheduler(backbone: DiffusionBackbone, num_inference_steps: int) -> DDIMScheduler:
    """A DDIM scheduler from the backbone's scheduler config, set to ``num_inference_steps`` steps."""
    scheduler = DDIMScheduler.from_config(backbone.scheduler_config)
    scheduler.set_timesteps(num_inference_steps, device=backbone.device)
    return scheduler


def guided_prediction(
    backbone: DiffusionBackbone,
    scheduler: DDIMScheduler,
    latents: Tensor,
    timesteps: Tensor,
    cond: Conditioning,
    guidance_scale: float,
) -> Tensor:
    """The UNet output with classifier-free guidance, as the diffusers pipelines compute it.

    Args:
        backbone: The model, as it is (adapters on or off).
        scheduler: The DDIM scheduler of the chain (it scales the model input).
        latents: (B, C, h, w) the current latents.
        timesteps: A 0-d tensor or one per row of ``latents``.
        cond: With ``guidance_scale > 1``, the unconditional rows first and the conditional rows second
            (``cat_conditioning([negative, positive])``); else the B conditional rows.
        guidance_scale: g; the result is ``uncond + g * (text - uncond)`` when g > 1.
    """
    cfg = guidance_scale > 1.0
    model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, timesteps)
    model_t = torch.cat([timesteps] * 2) if cfg and timesteps.ndim == 1 else timesteps
    pred = backbone.predict(model_in, model_t, cond)
    if not cfg:
        return pred
    pred_uncond, pred_text = pred.chunk(2)
    return pred_uncond + guidance_scale * (pred_text - pred_uncond)


@torch.no_grad()
def sample(
    backbone: DiffusionBackbone,
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
    exported by ``DiffusionBackbone.save_lora`` gives the same images there for the same generator.

    With ``return_trajectory=True`` (needs ``eta > 0``; the papers use ``eta = 1``) every step is
    :func:`~lit_pref.backbone.ddim_logprob.ddim_step_with_logprob` and a
    :class:`~lit_pref.backbone.ddim_logprob.Trajectory` is returned: the images, every latent x_T .. x_0,
    the float32 log-prob of each (guided) transition under the current weights, and the timesteps. Its
    noise comes from ``generator`` in the same order and dtype as ``DDIMScheduler.step`` draws it, so
    the images equal those of ``return_trajectory=False`` with the same ``eta`` and generator (up to
    float rounding). :func:`step_log_prob` recomputes the stored log-probs.

    Args:
        backbone: The model, as it is (inside ``backbone.reference_forward()`` for the base model).
        prompts: B prompts.
        num_inference_steps: DDIM steps.
        guidance_scale: Classifier-free guidance scale (> 1 enables guidance).
        eta: DDIM eta (0: deterministic DDIM; 1: DDPM-like ancestral steps).
        generator: One generator, or one per image, for the initial noise and the steps' noise.
        height: Image height in pixels (default: the model's resolution).
        width: Image width in pixels (default: the model's resolution).
        negative_prompt: The unconditional prompt of guidance.
        latents: (B, C, h, w) initial noise instead of drawing it from ``generator``.
        return_trajectory: Return a :class:`~lit_pref.backbone.ddim_logprob.Trajectory` instead of the images.
    """
    if return_trajectory and not eta > 0:
        raise ValueError(f"return_trajectory=True needs eta > 0 (an eta = 0 DDIM step has no log-probability); "
                         f"got eta={eta}")
    height = height or backbone.default_resolution
    width = width or backbone.default_resolution
    scheduler = ddim_scheduler(backbone, num_inference_steps)
    cfg = guidance_scale > 1.0
    cond = backbone.encode_prompts(prompts, target_size=(height, width))
    if cfg:
        uncond = backbone.encode_prompts([negative_prompt] * len(prompts), target_size=(height, width))
        cond = cat_conditioning([uncond, cond])
    scale = backbone.vae_scale_factor
    shape = (len(prompts), backbone.unet.config.in_channels, height // scale, width // scale)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=backbone.device, dtype=backbone.weight_dtype)
    latents = latents * scheduler.init_noise_sigma
    all_latents, log_probs = [latents], []
    for t in scheduler.timesteps:
        pred = guided_prediction(backbone, scheduler, latents, t, cond, guidance_scale)
        if not return_trajectory:
            latents = scheduler.step(pred, t, latents, eta=eta, generator=generator).prev_sample
            continue
        latents, log_prob = ddim_step_with_logprob(scheduler, pred, t, latents, eta=eta, generator=generator)
        all_latents.append(latents)
        log_probs.append(log_prob)
    images = backbone.decode_latents(latents)
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
    backbone: DiffusionBackbone,
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
    ``backbone.sample(prompts, num_inference_steps=N, guidance_scale=g, eta=eta, return_trajectory=True)`` and a
    step index ``k`` (0 = noisiest)::

        logp = backbone.step_log_prob(traj.latents[:, k], traj.timesteps[k], traj.latents[:, k + 1],
                                      traj.prompts, g, eta, N)        # (B,), float32, with grad
        with backbone.reference_forward():
            logp_init = backbone.step_log_prob(...same arguments...)  # the initial model (adapters off)

    With unchanged weights ``logp`` equals ``traj.log_probs[:, k]`` (same ops; float rounding only). Per-sample
    step indices ``ks`` (B,) work too: pass ``traj.latents[arange(B), ks]``, ``traj.timesteps[ks]`` and
    ``traj.latents[arange(B), ks + 1]``. Rows of different trajectories (winners and losers of many pairs)
    may be concatenated into one batch, with their conditionings concatenated alike.

    Not under ``no_grad``: gradients flow to the LoRA parameters. One UNet pass on 2B rows with guidance
    (``guidance_scale > 1``), on B rows without.

    Args:
        backbone: The model, as it is (inside ``backbone.reference_forward()`` for the reference).
        latents_t: (B, C, h, w) x at the start of the step (``traj.latents[:, k]``).
        timesteps: The UNet timestep of the step, ``traj.timesteps[k]``: an int, a 0-d tensor, or (B,) per
            sample. Must be one of the N-step DDIM schedule's timesteps (a step index passed by mistake
            raises ``ValueError``).
        next_latents: (B, C, h, w) the stored result of the step (``traj.latents[:, k + 1]``).
        cond: The conditioning of the B rows, made as :func:`sample` makes it
            (``encode_prompts(prompts, target_size=(H, W))``), or the B prompts themselves (encoded here with
            the target size ``latents_t``'s size times the VAE scale factor).
        guidance_scale: The classifier-free guidance scale of the sampling (> 1 enables guidance).
        eta: The DDIM eta of the sampling (> 0).
        num_inference_steps: N, the number of steps of the sampled chain (``traj.num_steps``): it fixes the
            previous timestep ``t - T // N``.
        negative_cond: The B-row unconditional conditioning for guidance; ``None`` encodes
            ``negative_prompt`` (pass it to save the text-encoder pass when calling repeatedly).
        negative_prompt: The unconditional prompt used when ``negative_cond`` is ``None``; ``""`` as in
            :func:`sample`.

    Returns:
        (B,) float32 log-probs (means over latent elements, see ``ddim_step_with_logprob``).
    """
    scheduler = ddim_scheduler(backbone, num_inference_steps)
    batch = latents_t.shape[0]
    t = torch.as_tensor(timesteps, device=backbone.device).long()
    if not torch.isin(t, scheduler.timesteps).all():
        raise ValueError(f"timesteps {t.tolist()} are not all in the {num_inference_steps}-step DDIM schedule "
                         f"{scheduler.timesteps.tolist()}; pass traj.timesteps[k], not the step index k")
    size = (latents_t.shape[-2] * backbone.vae_scale_factor, latents_t.shape[-1] * backbone.vae_scale_factor)
    if not isinstance(cond, dict):
        if len(cond) != batch:
            raise ValueError(f"got {len(cond)} prompts for {batch} latents")
        cond = backbone.encode_prompts(list(cond), target_size=size)
    cfg = guidance_scale > 1.0
    latents_t = latents_t.to(backbone.device, backbone.weight_dtype)
    if cfg:
        if negative_cond is None:
            negative_cond = backbone.encode_prompts([negative_prompt] * batch, target_size=size)
        cond = cat_conditioning([negative_cond, cond])
    pred = guided_prediction(backbone, scheduler, latents_t, t, cond, guidance_scale)
    _, log_prob = ddim_step_with_logprob(scheduler, pred, t, latents_t, eta=eta,
                                         prev_sample=next_latents.to(backbone.device))
    return log_prob


def trajectory_conditioning(backbone: DiffusionBackbone, traj: Trajectory) -> tuple[Conditioning, Conditioning]:
    """The text conditioning of a trajectory's prompts and the unconditional one of its negative prompt, made as
    :func:`sample` made them (the target size is the images' size), for :func:`transition_log_prob`."""
    size = (traj.images.shape[-2], traj.images.shape[-1])
    cond = backbone.encode_prompts(traj.prompts, target_size=size)
    negative = backbone.encode_prompts([traj.negative_prompt] * len(traj.prompts), target_size=size)
    return cond, negative


def transition_log_prob(
    backbone: DiffusionBackbone,
    traj: Trajectory,
    step: int,
    cond: Conditioning,
    negative: Conditioning,
    rows: Tensor | None = None,
) -> Tensor:
    """:func:`step_log_prob` of the stored transition ``step`` (0 = noisiest) of a trajectory's chains, with the
    trajectory's own guidance scale, eta and number of steps.

    Args:
        backbone: The model, as it is (inside ``backbone.reference_forward()`` for the reference).
        traj: The sampled chains.
        step: The transition's index k, from ``traj.latents[:, k]`` to ``traj.latents[:, k + 1]``.
        cond: The conditioning of all the trajectory's rows (:func:`trajectory_conditioning`).
        negative: The unconditional conditioning of all its rows (:func:`trajectory_conditioning`).
        rows: A 1-d index tensor of the chains to score; ``None``: all of them.

    Returns:
        (len(rows),) float32 log-probs, with grad.
    """
    if rows is None:
        rows = torch.arange(traj.latents.shape[0], device=traj.latents.device)
    return step_log_prob(backbone, traj.latents[rows, step], traj.timesteps[step], traj.latents[rows, step + 1],
                         select_conditioning(cond, rows), traj.guidance_scale, traj.eta, traj.num_steps,
                         negative_cond=select_conditioning(negative, rows))
