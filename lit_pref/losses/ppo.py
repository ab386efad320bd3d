"""The clipped PPO objective on per-step log-probs of sampled reverse chains (DDPO-style); docs/methods.md §4.

As in kvablack/ddpo-pytorch (``train.py``), for log-probs of stored DDIM transitions under the current weights
(``logp_new``) and at collection time (``logp_old``)::

    A     = clamp(advantages, -adv_clip, adv_clip)
    ratio = exp(logp_new - logp_old)
    loss  = mean( max(-A * ratio, -A * clamp(ratio, 1 - clip_range, 1 + clip_range)) )
    approx_kl = 0.5 * mean((logp_new - logp_old)^2),   clipfrac = mean(|ratio - 1| > clip_range)

plus, optionally, ``kl_coef * mean(0.5 * (logp_new - logp_ref)^2)``: a penalty towards the reference model
(adapters disabled). On transitions sampled from the policy its gradient is the score-function gradient of
KL(policy || reference) (the "k2" estimator); with ddpo's log-probs (means over latent elements) it is that KL
per latent element.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ppo_clip_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    clip_range: float = 1e-4,
    adv_clip: float = 5.0,
    logp_ref: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped PPO loss (formulas in the module docstring).

    Args:
        logp_new: (N, ...) log-probs of the stored transitions under the current weights (with grad), e.g.
            (N,) one step per sample or (N, S) S steps per sample.
        logp_old: Same shape: the log-probs stored at collection time (no grad).
        advantages: (N,) one advantage per sample (broadcast over the trailing step dims) or ``logp_new``'s
            shape.
        clip_range: eps_clip of the ratio (ddpo's default 1e-4).
        adv_clip: Advantages are clamped to ``[-adv_clip, adv_clip]`` (ddpo's default 5).
        logp_ref: Log-probs of the same transitions under the reference model (no grad); needed when
            ``kl_coef > 0``.
        kl_coef: Weight of the KL-to-reference penalty (default 0: none).

    Returns:
        The scalar loss and detached statistics: ``policy_loss``, ``approx_kl``, ``clipfrac``, ``ratio_mean``,
        ``advantage_mean`` (after the clamp), and ``kl_ref`` (the penalty's mean, when ``logp_ref`` is given).
    """
    if logp_old.shape != logp_new.shape:
        raise ValueError(f"logp_new {tuple(logp_new.shape)} and logp_old {tuple(logp_old.shape)} differ in shape")
    if advantages.shape != logp_new.shape[: advantages.ndim]:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be (N,) or the log-probs' shape "
                         f"{tuple(logp_new.shape)}")
    if not clip_range > 0 or not adv_clip > 0:
        raise ValueError(f"clip_range and adv_clip must be > 0, got {clip_range} and {adv_clip}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0 and logp_ref is None:
        raise ValueError("kl_coef > 0 needs logp_ref (the reference model's log-probs)")
    adv = advantages.clamp(-adv_clip, adv_clip)
    adv = adv.reshape(adv.shape + (1,) * (logp_new.ndim - adv.ndim)).to(logp_new.dtype)
    delta = logp_new - logp_old
    ratio = torch.exp(delta)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    policy_loss = torch.maximum(unclipped, clipped).mean()
    loss = policy_loss
    stats = {}
    if logp_ref is not None:
        if logp_ref.shape != logp_new.shape:
            raise ValueError(f"logp_ref {tuple(logp_ref.shape)} and logp_new {tuple(logp_new.shape)} differ in shape")
        kl_ref = (0.5 * (logp_new - logp_ref) ** 2).mean()
        if kl_coef > 0:
            loss = loss + kl_coef * kl_ref
        stats["kl_ref"] = kl_ref.detach()
    with torch.no_grad():
        stats.update({
            "policy_loss": policy_loss.detach(),
            "approx_kl": 0.5 * (delta**2).mean(),
            "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "ratio_mean": ratio.mean(),
            "advantage_mean": adv.mean(),
        })
    return loss, stats
