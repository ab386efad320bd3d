"""Losses: pure tensor functions (no Lightning) and the small components that wrap them.

Each loss family has a small interface that configs name by ``class_path``: ``PairLoss`` (offline preference
pairs), ``TrajectoryLoss`` (online sampled chains), ``PPOLoss`` (DDPO, VCA-PPO), ``RewardLoss`` (reward models);
``StepWeights`` says how much each step of a chain counts.
"""

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
from lit_pref.losses.ppo_loss import ClippedPPOLoss, PPOLoss
from lit_pref.losses.reward_loss import BradleyTerryLoss, RewardLoss
from lit_pref.losses.step_weights import DiscountedSteps, StepWeights, UniformSteps
from lit_pref.losses.trajectory_loss import DenseDPOLoss, TrajectoryLoss

__all__ = [
    "DENSE_DPO_DEFAULTS",
    "BradleyTerryLoss",
    "ClippedPPOLoss",
    "DenseDPOLoss",
    "DiffusionDPOLoss",
    "DiscountedSteps",
    "PPOLoss",
    "PairLoss",
    "RewardLoss",
    "StepWeights",
    "TrajectoryLoss",
    "UniformSteps",
    "bradley_terry_loss",
    "dense_dpo_loss",
    "diffusion_dpo_loss",
    "discount_weights",
    "listmle_loss",
    "ppo_clip_loss",
    "sample_step_indices",
    "trajectory_scores",
]
