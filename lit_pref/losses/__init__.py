"""Losses: pure tensor functions (no Lightning) and the small components that wrap them."""

from lit_pref.losses.dense import (
    DENSE_DPO_DEFAULTS,
    dense_dpo_loss,
    discount_weights,
    listmle_loss,
    sample_step_indices,
    trajectory_scores,
)
from lit_pref.losses.dpo import diffusion_dpo_loss
from lit_pref.losses.pair_loss import DiffusionDPOLoss, PairLoss

__all__ = [
    "DENSE_DPO_DEFAULTS",
    "DiffusionDPOLoss",
    "PairLoss",
    "dense_dpo_loss",
    "diffusion_dpo_loss",
    "discount_weights",
    "listmle_loss",
    "sample_step_indices",
    "trajectory_scores",
]
