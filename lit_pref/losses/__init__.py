"""Losses: pure tensor functions (no Lightning) and the small components that wrap them."""

from lit_pref.losses.bradley_terry import bradley_terry_loss
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
from lit_pref.losses.ppo import ppo_clip_loss

__all__ = [
    "DENSE_DPO_DEFAULTS",
    "DiffusionDPOLoss",
    "PairLoss",
    "bradley_terry_loss",
    "dense_dpo_loss",
    "diffusion_dpo_loss",
    "discount_weights",
    "listmle_loss",
    "ppo_clip_loss",
    "sample_step_indices",
    "trajectory_scores",
]
