"""DenseDiscountedDPO: DPO with a dense, temporally discounted reward over the reverse chain (docs/methods.md §2)."""

from __future__ import annotations

from typing import Any

from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiscountedSteps
from lit_pref.modules.online_trajectory_dpo import OnlineTrajectoryDPO


class DenseDiscountedDPO(OnlineTrajectoryDPO):
    """"A Dense Reward View on Aligning Text-to-Image Diffusion with Preference" (Yang, Chen & Zhou, ICML 2024).

    :class:`OnlineTrajectoryDPO` with the steps of each comparison drawn from the discounted distribution
    ``w_k = gamma^k / sum_j gamma^j`` (k = 0 the noisiest step; ``lit_pref.losses.DiscountedSteps``), which stresses
    the early steps that shape an image's layout, and the dense DPO / ListMLE loss (the default ``loss``).
    ``gamma = 1`` is OnlineTrajectoryDPO with uniform steps, exactly. Every other argument is
    :class:`OnlineTrajectoryDPO`'s. On offline image pairs the same discount is ``TrajectoryDPO`` with
    ``timestep_grid: inference`` and ``step_weights: DiscountedSteps`` (configs/toy/dense_discounted_dpo_offline.yaml).
    """

    def __init__(self, backbone: DiffusionBackbone, gamma: float = 0.9, **kwargs: Any) -> None:
        """
        Args:
            backbone: The diffusion model with LoRA adapters (policy; adapters off = the initial model).
            gamma: Temporal discount in (0, 1] (paper: 0.9); 1 = uniform, near 0 almost all the weight on the
                first step.
            kwargs: The other arguments of :class:`OnlineTrajectoryDPO` (``scorer``, ``loss``, ...), all but
                ``step_weights``.
        """
        super().__init__(backbone, step_weights=DiscountedSteps(gamma), **kwargs)
        self.gamma = gamma
