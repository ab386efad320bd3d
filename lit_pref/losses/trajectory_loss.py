"""Trajectory losses as injectable components: what ``model.loss`` names in an online trajectory config.

A trajectory loss maps the per-step log-probs of compared reverse chains, under the policy and under the initial
model (adapters off), to a scalar loss and a dict of statistics (logged as ``train/<name>``). Write your own by
subclassing ``TrajectoryLoss`` in any importable module and naming it by class path (README, "Add your own loss").
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from lit_pref.losses.dense import dense_dpo_loss, listmle_loss, trajectory_scores


class TrajectoryLoss(ABC):
    """Interface of losses on ranked groups of sampled chains."""

    @abstractmethod
    def __call__(self, logp_theta: Tensor, logp_init: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(loss, stats)`` for B comparisons of n >= 2 chains each.

        Args:
            logp_theta: (B, n, K) log-probs of the K drawn steps of each chain under the policy (with grad);
                along dim 1 the chains are ordered by reward, best first.
            logp_init: (B, n, K) the same under the initial model (no grad).

        Returns:
            A scalar loss with gradient through ``logp_theta`` (a mean over the B comparisons: an update's
            micro-batches are weighted by their share of them) and detached statistics.
        """


class DenseDPOLoss(TrajectoryLoss):
    """The dense DPO loss (Yang, Chen & Zhou 2024): scores ``s = beta * mean_k clamp(logp_theta - logp_init,
    -clip, clip)``, then ``-logsigmoid(s_w - s_l)`` for pairs and ListMLE for more chains."""

    def __init__(self, beta: float = 10.0, clip: float = 1e-4) -> None:
        """
        Args:
            beta: Scale of the trajectory score (> 0; paper: 10 single prompt, 12.5 multi prompt).
            clip: Per-step log-ratio clip (> 0; paper: 1e-4 single prompt, 5e-4 multi prompt).

        Raises:
            ValueError: ``beta`` or ``clip`` not > 0.
        """
        for name, value in (("beta", beta), ("clip", clip)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.beta = float(beta)
        self.clip = float(clip)

    def __call__(self, logp_theta: Tensor, logp_init: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        b, n, k = logp_theta.shape
        columns = torch.arange(k, device=logp_theta.device)  # every drawn step of each chain
        scores = trajectory_scores(logp_theta.reshape(b * n, k), logp_init.reshape(b * n, k), columns, self.beta,
                                   self.clip).view(b, n)
        return dense_dpo_loss(scores[:, 0], scores[:, 1]) if n == 2 else listmle_loss(scores)

    def __repr__(self) -> str:
        return f"DenseDPOLoss(beta={self.beta}, clip={self.clip})"
