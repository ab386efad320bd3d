"""LightningModules, one per method; each composes a DiffusionBackbone and takes its collaborators injected."""

from lit_pref.modules.base import LoRAModule
from lit_pref.modules.trajectory_dpo import TrajectoryDPO

__all__ = ["LoRAModule", "TrajectoryDPO"]
