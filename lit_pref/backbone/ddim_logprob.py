"""The stochastic DDIM transition (eta > 0) with the Gaussian log-density of its result; docs/methods.md §2 and §4.

As in kvablack/ddpo-pytorch (``ddim_with_logprob``), for a step from timestep ``t`` with ``N`` inference
steps out of ``T`` training timesteps::

    prev_t = t - T // N
    a_t    = alphas_cumprod[t]
    a_prev = alphas_cumprod[prev_t] if prev_t >= 0 else final_alpha_cumprod
    epsilon-prediction:  eps = out;                             x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    v-prediction:        eps = sqrt(a_t) out + sqrt(1 - a_t) x_t; x0_hat = sqrt(a_t) x_t - sqrt(1 - a_t) out
    sample-prediction:   x0_hat = out;                          eps = (x_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t)
    (x0_hat is then thresholded or clipped exactly as DDIMScheduler.step does, per the scheduler config)
    sigma  = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    mu     = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps
    x_prev = mu + sigma z,  z ~ N(0, I)
    log_prob = mean over all non-batch elements of
               -(x_prev - mu)^2 / (2 sigma^2) - log(sigma) - log(sqrt(2 pi))      # a MEAN, as in ddpo

``prev_t`` is computed as diffusers' ``DDIMScheduler.step`` computes it (``T // N``, whatever the timestep
spacing), so ``x_prev`` is the same as ``DDIMScheduler.step(..., eta=eta, variance_noise=z).prev_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class Trajectory:
    """A batch of sampled reverse chains (``DiffusionBackbone.sample(..., return_trajectory=True)``).

    Attributes:
        images: (B, 3, H, W) decoded final latents, in [0, 1].
        latents: (B, K + 1, C, h, w): ``latents[:, 0]`` is x_T (the initial noise, times the scheduler's
            ``init_noise_sigma``), ``latents[:, k + 1]`` the result of step k, ``latents[:, -1]`` is x_0. In
            the backbone's weight dtype, exactly the tensors that were fed to the next step.
        log_probs: (B, K) float32 ``log p(latents[:, k + 1] | latents[:, k], c)`` of each step under the
            sampling weights (a mean over latent elements, see :func:`ddim_step_with_logprob`).
        timesteps: (K,) the scheduler's timesteps in order; k = 0 is the first (noisiest) step.
        prompts: the B prompts.
        guidance_scale: the classifier-free guidance scale used (the log-probs are of the guided step).
        eta: the DDIM eta used (> 0).
        negative_prompt: the unconditional prompt of the guidance.
    """

    images: Tensor
    latents: Tensor
    log_probs: Tensor
    timesteps: Tensor
    prompts: list[str]
    guidance_scale: float = 1.0
    eta: float = 1.0
    negative_prompt: str = ""

    @property
    def num_steps(self) -> int:
        """K, the number of denoising steps (transitions) of each chain."""
        return int(self.timesteps.shape[0])


def _per_sample(values: Tensor, batch: int, ndim: int) -> Tensor:
    """(B,) or () -> broadcastable (B, 1, ..., 1) / () against a tensor of ``ndim`` dims."""
    if values.ndim == 0:
        return values
    return values.view(batch, *([1] * (ndim - 1)))


def ddim_step_with_logprob(
    scheduler,
    model_output: Tensor,
    timestep: int | Tensor,
    sample: Tensor,
    eta: float,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> tuple[Tensor, Tensor]:
    """One DDIM step with eta > 0 and the log-density of its result (formulas in the module docstring).

    Args:
        scheduler: A ``diffusers.DDIMScheduler`` on which ``set_timesteps(N)`` was called.
        model_output: (B, ...) the (guided) UNet output at ``sample``: epsilon, v or x0 per the scheduler's
            ``prediction_type``.
        timestep: The current timestep t: a Python int, a 0-d tensor, or a (B,) tensor of per-sample timesteps.
        sample: (B, ...) x_t.
        eta: DDIM eta; must be > 0 (with eta = 0 the step is deterministic and has no density).
        prev_sample: (B, ...) a given x_prev whose log-density is wanted (e.g. a stored transition); ``None``
            draws ``x_prev = mu + sigma z``.
        generator: Generator(s) for z, drawn with diffusers' ``randn_tensor`` in ``model_output``'s dtype and
            shape, exactly as ``DDIMScheduler.step`` draws it (a list gives one generator per sample). Not
            allowed together with ``prev_sample``.

    Returns:
        ``(prev_sample, log_prob)``: x_prev in ``sample``'s dtype (the given one, unchanged, if passed) and the
        (B,) float32 log-density of that x_prev (after any rounding to ``sample``'s dtype, so that recomputing it
        from the stored tensor gives the same value). All arithmetic is float32 whatever the input dtypes.
        Differentiable with respect to ``model_output``.
    """
    if not eta > 0:
        raise ValueError(f"eta must be > 0 for a DDIM step to have a log-probability (the eta = 0 step is "
                         f"deterministic); got eta={eta}")
    if prev_sample is not None and generator is not None:
        raise ValueError("pass either prev_sample (to score a given step) or generator (to draw one), not both")
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ValueError("call scheduler.set_timesteps(num_inference_steps) before ddim_step_with_logprob")
    if not hasattr(scheduler, "final_alpha_cumprod"):
        raise TypeError(f"expected a DDIMScheduler, got {type(scheduler).__name__}")
    config = scheduler.config
    batch, ndim, device = sample.shape[0], sample.ndim, sample.device
    if ndim < 2:
        raise ValueError(f"expected batched samples (B, ...) with at least 2 dims, got shape {tuple(sample.shape)}")
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output {tuple(model_output.shape)} and sample {tuple(sample.shape)} differ in shape")

    t = torch.as_tensor(timestep, device=device).long()
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
        raise ValueError(f"timestep must be an int, a 0-d tensor or a ({batch},) tensor; got shape {tuple(t.shape)}")
    if t.ndim == 1 and t.shape[0] == 1:
        t = t[0]
    prev_t = t - config.num_train_timesteps // scheduler.num_inference_steps
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=device, dtype=torch.float32)
    alpha_t = _per_sample(alphas_cumprod[t], batch, ndim)
    alpha_prev = _per_sample(torch.where(prev_t >= 0, alphas_cumprod[prev_t.clamp(min=0)], final), batch, ndim)
    beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev

    x_t, out = sample.float(), model_output.float()
    # The same expressions, in the same order, as diffusers' DDIMScheduler.step.
    if config.prediction_type == "epsilon":
        x0_hat = (x_t - beta_t ** (0.5) * out) / alpha_t ** (0.5)
        eps = out
    elif config.prediction_type == "sample":
        x0_hat = out
        eps = (x_t - alpha_t ** (0.5) * x0_hat) / beta_t ** (0.5)
    elif config.prediction_type == "v_prediction":
        x0_hat = (alpha_t**0.5) * x_t - (beta_t**0.5) * out
        eps = (alpha_t**0.5) * out + (beta_t**0.5) * x_t
    else:
        raise ValueError(f"unsupported prediction_type {config.prediction_type!r}; "
                         "expected 'epsilon', 'v_prediction' or 'sample'")
    if config.thresholding:
        x0_hat = scheduler._threshold_sample(x0_hat)
    elif config.clip_sample:
        x0_hat = x0_hat.clamp(-config.clip_sample_range, config.clip_sample_range)

    variance = (beta_prev / beta_t) * (1 - alpha_t / alpha_prev)
    sigma = eta * variance ** (0.5)
    if not (sigma > 0).all():
        raise ValueError(f"the DDIM step from timestep {t.tolist()} has zero variance (a_prev = 1, e.g. the last step "
                         "of a scheduler with set_alpha_to_one=True), so its log-probability is undefined")
    mean = alpha_prev ** (0.5) * x0_hat + (1 - alpha_prev - sigma**2) ** (0.5) * eps

    if prev_sample is None:
        noise = randn_tensor(model_output.shape, generator=generator, device=device, dtype=model_output.dtype)
        prev_sample = (mean + sigma * noise.float()).to(sample.dtype)
    elif prev_sample.shape != sample.shape:
        raise ValueError(f"prev_sample {tuple(prev_sample.shape)} and sample {tuple(sample.shape)} differ in shape")

    log_prob = -((prev_sample.float() - mean) ** 2) / (2 * sigma**2) - torch.log(sigma) - LOG_SQRT_2PI
    log_prob = log_prob.mean(dim=tuple(range(1, ndim)))
    return prev_sample, log_prob
