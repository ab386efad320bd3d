"""Pair losses as injectable components: what ``model.loss`` names in a config.

A pair loss maps the per-sample denoising errors of policy and reference on winners and losers to a
scalar loss and a dict of statistics (logged as ``train/<name>``). Write your own by subclassing
``PairLoss`` in any importable module and naming it by class path (see README, "Add your own loss").
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from lit_pref.losses.dpo import LossType, check_dpo_settings, diffusion_dpo_loss


class PairLoss(ABC):
    """Interface of losses on preference pairs of per-sample errors (each a 1-D tensor of length B)."""

    @abstractmethod
    def __call__(
        self, model_err_w: Tensor, model_err_l: Tensor, ref_err_w: Tensor, ref_err_l: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(loss, stats)``; ``loss`` is a scalar with gradient through the ``model_err_*``."""


class DiffusionDPOLoss(PairLoss):
    """Diffusion-DPO (Wallace et al. 2023): ``-logsigmoid(-beta/2 * ((e_w - e_l) - (r_w - r_l)))``."""

    def __init__(self, beta: float = 5000.0, loss_type: LossType = "sigmoid") -> None:
        """
        Args:
            beta: KL-regularisation strength (> 0; paper: 5000; diffusers' script's ``beta_dpo=2500`` is beta/2).
            loss_type: ``"sigmoid"`` (paper), ``"hinge"`` or ``"ipo"``.

        Raises:
            ValueError: ``beta`` not finite and > 0, or an unknown ``loss_type``.
        """
        check_dpo_settings(beta, loss_type)
        self.beta = float(beta)
        self.loss_type = loss_type

    def __call__(self, model_err_w, model_err_l, ref_err_w, ref_err_l):
        return diffusion_dpo_loss(model_err_w, model_err_l, ref_err_w, ref_err_l, self.beta, self.loss_type)

    def __repr__(self) -> str:
        return f"DiffusionDPOLoss(beta={self.beta}, loss_type={self.loss_type!r})"
