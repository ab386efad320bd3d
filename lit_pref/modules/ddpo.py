"""DDPO: denoising diffusion policy optimization (Black et al. 2023, kvablack/ddpo-pytorch), PPO on a scorer's
reward -- the reward-maximisation baseline of the dense-DPO and VCA papers (docs/methods.md §4)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import PPOLoss
from lit_pref.modules.ppo import PPOModule, PPOSettings
from lit_pref.rewards import Scorer


class DDPO(PPOModule):
    """PPO of the LoRA on any :class:`~lit_pref.rewards.Scorer`'s reward, one round per prompt batch.

    Batches are ``{"prompts": list[str], ...}`` from ``lit_pref.datamodules.PromptDataModule``. Each training step is a
    round: K chains per prompt sampled from the policy with every step's log-prob (DDIM, eta > 0, guidance), the
    scorer's reward of each image, advantages from the per-prompt stat tracker, and the clipped PPO update
    (``ppo.inner_epochs`` passes, one optimizer step per ``ppo.minibatch_size`` chains), shared with
    :class:`~lit_pref.modules.VCAPPO` through :class:`~lit_pref.modules.ppo.PPOModule`.

    Logged once per round: ``train/reward_mean``, ``train/reward_std``, ``train/advantage_abs_mean``,
    ``train/loss``, ``train/policy_loss``, ``train/approx_kl``, ``train/clipfrac``, ``train/ratio_mean``,
    ``train/lr``.
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        scorer: Scorer,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        ppo: PPOSettings = PPOSettings(),
        loss: PPOLoss | None = None,
    ) -> None:
        """
        Args:
            backbone: The diffusion model with LoRA adapters (the policy).
            scorer: The reward of an image for its prompt (higher is better), e.g.
                ``lit_pref.rewards.AestheticScorer`` or ``lit_pref.toy.ToyGroundTruthReward``.
            optimizer: Optimizer factory, called with the LoRA parameters only.
            scheduler: Learning-rate scheduler factory, stepped every optimizer step; ``None`` = constant.
            num_inference_steps: DDIM steps of every sampled chain (ddpo: 50).
            guidance_scale: Classifier-free guidance scale of the sampled chains (ddpo: 5.0).
            ppo: Policy-gradient settings (K = ``ppo.num_images`` chains per prompt of a batch).
            loss: The policy-gradient loss on each stored step; any ``lit_pref.losses.PPOLoss`` (``None``:
                ``ClippedPPOLoss()``, DDPO's clipped PPO objective).
        """
        super().__init__(backbone, optimizer, scheduler, num_inference_steps, guidance_scale, ppo, loss)
        self.scorer = scorer  # a plain attribute, never a registered submodule

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        traj = self.collect(list(batch["prompts"]))
        rewards = self.scorer.score(traj.images, traj.prompts).float()
        advantages = self.tracker.update(traj.prompts, rewards.flatten())
        metrics = {"reward_mean": rewards.mean().item(), "reward_std": rewards.std(unbiased=False).item(),
                   "advantage_abs_mean": advantages.abs().mean().item()}
        metrics.update(self.ppo_update(traj, advantages))
        metrics["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log_dict({f"train/{key}": value for key, value in metrics.items()}, on_step=True, on_epoch=False,
                      batch_size=len(traj.prompts))
