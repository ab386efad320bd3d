"""LightningModules, one per method; each composes a DiffusionBackbone and takes its collaborators injected."""

from lit_pref.modules.base import LoRAModule
from lit_pref.modules.ddpo import DDPO
from lit_pref.modules.dense_discounted_dpo import DenseDiscountedDPO
from lit_pref.modules.rich_preference_dpo import RichPreferenceDPO
from lit_pref.modules.reward_model import RewardModel
from lit_pref.modules.online_trajectory_dpo import OnlineTrajectoryDPO, TrajectorySettings
from lit_pref.modules.trajectory_dpo import TrajectoryDPO
from lit_pref.modules.ppo import PPOModule, PPOSettings
from lit_pref.modules.vca_ppo import VCAPPO

__all__ = ["DDPO", "DenseDiscountedDPO", "LoRAModule", "OnlineTrajectoryDPO", "PPOModule", "PPOSettings", "RewardModel",
           "RichPreferenceDPO", "TrajectoryDPO", "TrajectorySettings", "VCAPPO"]
