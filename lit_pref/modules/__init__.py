"""LightningModules, one per method; each composes a DiffusionBackbone and takes its collaborators injected."""

from lit_pref.modules.base import LoRAModule
from lit_pref.modules.dense_discounted_dpo import DenseDiscountedDPO
from lit_pref.modules.rich_preference_dpo import RichPreferenceDPO
from lit_pref.modules.trajectory_dpo import TrajectoryDPO, TrajectorySettings

__all__ = ["DenseDiscountedDPO", "LoRAModule", "RichPreferenceDPO", "TrajectoryDPO", "TrajectorySettings"]
