"""PPO losses as injectable components: what ``model.loss`` names in a DDPO or VCA-PPO config.

A PPO loss maps the log-probs of stored chain steps under the current weights, at collection time and (when it
asks for them) under the reference model, and the samples' advantages, to a scalar loss and a dict of statistics
(averaged over a round and logged as ``train/<name>``). Write your own by subclassing ``PPOLoss`` in any importable
module and naming it by class path (README, "Add your own loss").
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from lit_pref.losses.ppo import ppo_clip_loss


class PPOLoss(ABC):
    """Interface of policy-gradient losses on stored steps of sampled chains."""

    def needs_reference(self) -> bool:
        """Whether the loss reads ``logp_ref``: the module runs the reference model (adapters off) only if so."""
        return False

    @abstractmethod
    def __call__(self, logp_new: Tensor, logp_old: Tensor, advantages: Tensor,
                 logp_ref: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(loss, stats)`` for N samples at one step of their chains.

        Args:
            logp_new: (N,) log-probs under the current weights (with grad).
            logp_old: (N,) the log-probs stored at collection time.
            advantages: (N,) one advantage per sample.
            logp_ref: (N,) log-probs under the reference model when ``needs_reference()``, else ``None``.
        """


class ClippedPPOLoss(PPOLoss):
    """DDPO's clipped PPO objective (kvablack/ddpo-pytorch), optionally with a KL-to-reference penalty
    (formulas in ``lit_pref.losses.ppo``)."""

    def __init__(self, clip_range: float = 1e-4, adv_clip: float = 5.0, kl_coef: float = 0.0) -> None:
        """
        Args:
            clip_range: PPO ratio clip eps_clip (> 0; ddpo: 1e-4).
            adv_clip: Advantage clamp (> 0; ddpo: 5).
            kl_coef: Weight of the KL-to-reference penalty (>= 0; 0: none, and the reference is not run).

        Raises:
            ValueError: ``clip_range`` or ``adv_clip`` not > 0, or ``kl_coef`` < 0.
        """
        for name, value in (("clip_range", clip_range), ("adv_clip", adv_clip)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.clip_range = clip_range
        self.adv_clip = adv_clip
        self.kl_coef = kl_coef

    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    def __call__(self, logp_new: Tensor, logp_old: Tensor, advantages: Tensor,
                 logp_ref: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return ppo_clip_loss(logp_new, logp_old, advantages, self.clip_range, self.adv_clip, logp_ref, self.kl_coef)

    def __repr__(self) -> str:
        return f"ClippedPPOLoss(clip_range={self.clip_range}, adv_clip={self.adv_clip}, kl_coef={self.kl_coef})"
