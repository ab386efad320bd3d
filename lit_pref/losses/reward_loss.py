"""Reward-model losses as injectable components: what ``model.loss`` names in a ``RewardModel`` config.

A reward-model loss maps the reward head's scores of the preferred and the rejected images of B pairs to a scalar
loss and a dict of statistics (logged as ``train/<name>``). Write your own by subclassing ``RewardLoss`` in any
importable module and naming it by class path (README, "Add your own loss").
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from lit_pref.losses.bradley_terry import bradley_terry_loss


class RewardLoss(ABC):
    """Interface of losses on a reward model's scores of preference pairs (each a 1-D tensor of length B)."""

    @abstractmethod
    def __call__(self, scores_w: Tensor, scores_l: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(loss, stats)``; ``loss`` is a scalar with gradient through the scores."""


class BradleyTerryLoss(RewardLoss):
    """The Bradley-Terry loss ``mean(-logsigmoid(beta * (s_w - s_l)))`` (VCA's "DPO-trained" reward model)."""

    def __init__(self, beta: float = 1.0) -> None:
        """
        Args:
            beta: Scale of the score difference (> 0; not given by the paper: a linear head absorbs it).

        Raises:
            ValueError: ``beta`` not > 0.
        """
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = float(beta)

    def __call__(self, scores_w: Tensor, scores_l: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return bradley_terry_loss(scores_w, scores_l, self.beta)

    def __repr__(self) -> str:
        return f"BradleyTerryLoss(beta={self.beta})"
