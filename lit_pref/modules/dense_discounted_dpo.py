"""DenseDiscountedDPO: DPO with a dense, temporally discounted reward over the reverse chain (docs/methods.md §2)."""

from __future__ import annotations

from typing import Literal

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiffusionDPOLoss, PairLoss, discount_weights
from lit_pref.modules.trajectory_dpo import TiesPolicy, TrajectoryDPO, TrajectorySettings
from lit_pref.rewards import Scorer


class DenseDiscountedDPO(TrajectoryDPO):
    """"A Dense Reward View on Aligning Text-to-Image Diffusion with Preference" (Yang, Chen & Zhou, ICML 2024).

    TrajectoryDPO with step weights ``w_k = gamma^k / sum_j gamma^j`` (k = 0 the first, noisiest step of the
    ``num_inference_steps``-step chain) instead of uniform ones, which stresses the early steps that shape an
    image's layout:

    * trajectory mode (the paper's setting): the K steps of each update are drawn from Categorical(w);
    * offline mode (image pairs): the Diffusion-DPO loss with the timestep ``t_k`` of the DDIM schedule drawn
      with probability ``w_k``.

    ``gamma = 1`` reproduces TrajectoryDPO (with ``timestep_grid="inference"`` in offline mode) exactly.
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        gamma: float = 0.9,
        loss: PairLoss = lazy_instance(DiffusionDPOLoss),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        ties: TiesPolicy = "drop",
        proportion_empty_prompts: float = 0.0,
        val_seed: int = 0,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        mode: Literal["offline", "trajectory"] = "offline",
        scorer: Scorer | None = None,
        trajectory: TrajectorySettings = TrajectorySettings(),
        max_nonfinite_steps: int = 10,
        seed: int | None = None,
    ) -> None:
        """
        Args:
            backbone: The diffusion model with LoRA adapters (policy; adapters off = the initial model).
            gamma: Temporal discount in (0, 1] (paper: 0.9); 1 = uniform (TrajectoryDPO); near 0, almost all the
                weight on the first step.
            loss: Offline mode: the pair loss on per-sample errors (Diffusion-DPO by default).
            optimizer: Optimizer factory, called with the LoRA parameters only.
            scheduler: Learning-rate scheduler factory, stepped every optimizer step.
            ties: Offline mode: ties policy (see TrajectoryDPO).
            proportion_empty_prompts: Offline mode: probability of training on the empty prompt.
            val_seed: Seed of validation timesteps and noise.
            num_inference_steps: N, the chain length: DDIM steps of sampling and collection, and the grid of
                the discounted timestep distribution.
            guidance_scale: Classifier-free guidance of sampling and collection (paper: 7.5).
            mode: ``"offline"`` (preference pairs of images) or ``"trajectory"`` (sampled chains).
            scorer: Trajectory mode: the preference source (any ``lit_pref.rewards.Scorer``).
            trajectory: Trajectory-mode settings (paper defaults in docs/methods.md §2).
            max_nonfinite_steps: Optimizer steps with a NaN/inf loss that are skipped before training stops.
            seed: Offline mode: seed of the per-pair draws (see TrajectoryDPO); ``None``: the run's
                ``seed_everything`` seed.
        """
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        super().__init__(backbone, loss, optimizer, scheduler, ties, proportion_empty_prompts, val_seed,
                         num_inference_steps, guidance_scale, mode, "inference", scorer=scorer, trajectory=trajectory,
                         max_nonfinite_steps=max_nonfinite_steps, seed=seed)
        self.gamma = gamma

    def step_weights(self, num_steps: int) -> Tensor:
        """``gamma^k / sum_j gamma^j``, k = 0 the noisiest step."""
        return discount_weights(num_steps, self.gamma)
