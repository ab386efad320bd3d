"""DenseDiscountedDPO (Yang, Chen & Zhou, ICML 2024): discounted step weights and the dense DPO / ListMLE losses.

docs/methods.md §2. A reverse chain of N DDIM steps has step index k = 0 for the first (noisiest) step. Steps are
drawn from the discounted distribution ``w_k = gamma^k / sum_j gamma^j``; a trajectory's implicit reward is
the clamped mean per-step log-ratio of policy and initial model at the drawn steps, times beta; pairs are
compared with the Bradley-Terry (DPO) loss and lists of more than two trajectories with ListMLE.

Paper defaults (``DENSE_DPO_DEFAULTS``): single prompt beta 10, K = 3 sampled steps, clip 1e-4; multi prompt
beta 12.5, K = 1, clip 5e-4; gamma 0.9 in both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

DENSE_DPO_DEFAULTS = {
    "single_prompt": {"beta": 10.0, "num_sampled_steps": 3, "clip": 1e-4, "gamma": 0.9},
    "multi_prompt": {"beta": 12.5, "num_sampled_steps": 1, "clip": 5e-4, "gamma": 0.9},
}


def discount_weights(num_steps: int, gamma: float = 0.9, dtype: torch.dtype = torch.float32) -> Tensor:
    """The discounted distribution over the steps of a reverse chain: ``w_k = gamma^k / sum_j gamma^j``.

    k = 0 is the first (noisiest) step, so gamma < 1 puts more weight on the early steps that shape the
    image's layout. gamma = 1 is uniform (the trajectory-level, bandit objective); gamma -> 0 puts all the
    mass on k = 0, and gamma = 0 gives exactly ``[1, 0, ..., 0]`` (``0^0 = 1``).

    Args:
        num_steps: N >= 1, the number of denoising steps of the chain.
        gamma: The discount, 0 <= gamma <= 1 (paper default 0.9).
        dtype: The dtype of the result (computed in float64).

    Returns:
        (N,) weights summing to 1.
    """
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    powers = torch.tensor([gamma**k for k in range(int(num_steps))], dtype=torch.float64)
    return (powers / powers.sum()).to(dtype)


def sample_step_indices(weights: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``num_samples`` step indices from ``Categorical(weights)``, with replacement.

    On sampled chains the same indices ``k_1..k_K`` are used for every trajectory of a comparison (K = 3
    single prompt, 1 multi prompt). On offline pairs the timestep of step k is ``scheduler.timesteps[k]``.

    Args:
        weights: (N,) non-negative weights (e.g. :func:`discount_weights`); need not be normalised.
        num_samples: How many indices to draw (>= 1).
        generator: Optional generator (on ``weights``' device) for reproducible draws.

    Returns:
        (num_samples,) int64 indices in [0, N); zero-weight steps are never drawn.
    """
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(f"weights must be a non-empty 1-D tensor, got shape {tuple(weights.shape)}")
    if (weights < 0).any() or not torch.isfinite(weights).all() or weights.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    return torch.multinomial(weights.double(), int(num_samples), replacement=True, generator=generator)


def trajectory_scores(
    logp_theta: Tensor,
    logp_init: Tensor,
    step_indices: Tensor,
    beta: float,
    clip: float,
) -> Tensor:
    """The implicit reward of each trajectory at the drawn steps:
    ``s = beta * mean_i clamp(logp_theta[:, k_i] - logp_init[:, k_i], -clip, clip)``.

    The clamp bounds each per-step log-ratio (and stops its gradient outside [-clip, clip]), a trust region
    around the initial model. Paper defaults: beta 10 / clip 1e-4 (single prompt), beta 12.5 / clip 5e-4
    (multi prompt); the log-probs are means over latent elements (ddpo style), hence the small clips.

    Args:
        logp_theta: (B, N) per-step log-probs ``log p_theta(x_{k+1} | x_k, c)`` of B trajectories under the
            policy (only the columns in ``step_indices`` are read).
        logp_init: (B, N) the same under the initial model (adapters disabled; no gradient needed).
        step_indices: (S,) int64 step indices (:func:`sample_step_indices`), shared by all trajectories;
            repeats count repeatedly.
        beta: The KL-regularisation strength (> 0; float or int).
        clip: The clamp bound on each log-ratio (> 0; ``float("inf")`` disables it).

    Returns:
        (B,) scores.
    """
    if logp_theta.ndim != 2 or logp_theta.shape != logp_init.shape:
        raise ValueError(f"expected two (B, N) log-prob tensors of one shape, got {tuple(logp_theta.shape)} "
                         f"and {tuple(logp_init.shape)}")
    if step_indices.ndim != 1 or step_indices.numel() == 0 or step_indices.dtype.is_floating_point:
        raise ValueError(f"step_indices must be a non-empty 1-D integer tensor, got {step_indices}")
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    idx = step_indices.to(logp_theta.device)
    ratios = (logp_theta[:, idx] - logp_init[:, idx]).clamp(-float(clip), float(clip))
    return float(beta) * ratios.mean(dim=1)


def dense_dpo_loss(score_w: Tensor, score_l: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The Bradley-Terry / DPO loss on trajectory scores: ``mean_batch(-logsigmoid(score_w - score_l))``.

    A mean of per-pair losses, never a loss of batch means. beta is already inside the scores
    (:func:`trajectory_scores`). At initialisation (policy == initial model) the loss is ln 2.

    Args:
        score_w: (B,) scores of the preferred trajectories.
        score_l: (B,) scores of the other trajectories.

    Returns:
        The scalar loss and detached statistics: ``implicit_acc`` (fraction with score_w > score_l, ties
        0.5) and ``margin`` (mean of score_w - score_l).
    """
    if score_w.ndim != 1 or score_w.shape != score_l.shape:
        raise ValueError(f"expected two 1-D score tensors of one shape, got {tuple(score_w.shape)} and "
                         f"{tuple(score_l.shape)}")
    inside = score_w - score_l
    loss = -F.logsigmoid(inside).mean()
    with torch.no_grad():
        stats = {
            "implicit_acc": ((inside > 0).float() + 0.5 * (inside == 0).float()).mean(),
            "margin": inside.mean(),
        }
    return loss, stats


def listmle_loss(scores: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """ListMLE (Plackett-Luce) loss for ranked lists of trajectories, best first along dim 1.

    ``loss = mean_batch( -sum_{i=1..N} (s_i - logsumexp(s_i, ..., s_N)) )`` (the i = N term is 0). For
    N = 2 it is ``-logsigmoid(s_1 - s_2)``, i.e. :func:`dense_dpo_loss`.

    Args:
        scores: (B, N) scores, N >= 2, ordered from most to least preferred in each row.

    Returns:
        The scalar loss and detached statistics over all ordered pairs i < j of each list:
        ``implicit_acc`` (fraction with s_i > s_j, ties 0.5) and ``margin`` (mean of s_i - s_j). For N = 2
        both equal those of :func:`dense_dpo_loss`.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"expected (B, N) scores with N >= 2, got shape {tuple(scores.shape)}")
    tail_lse = torch.logcumsumexp(scores.flip(1), dim=1).flip(1)  # logsumexp(s_i..s_N)
    loss = -(scores - tail_lse).sum(dim=1).mean()
    with torch.no_grad():
        n = scores.shape[1]
        i, j = torch.triu_indices(n, n, offset=1, device=scores.device)
        diff = scores[:, i] - scores[:, j]
        stats = {
            "implicit_acc": ((diff > 0).float() + 0.5 * (diff == 0).float()).mean(),
            "margin": diff.mean(),
        }
    return loss, stats
