"""Losses: pure tensor functions (no Lightning) and the small components that wrap them."""

from lit_pref.losses.dpo import diffusion_dpo_loss
from lit_pref.losses.pair_loss import DiffusionDPOLoss, PairLoss

__all__ = ["DiffusionDPOLoss", "PairLoss", "diffusion_dpo_loss"]
