"""What the policy-gradient methods (DDPO, VCA-PPO) share: chains sampled with log-probs from the policy, and
the clipped PPO update of the LoRA on them (kvablack/ddpo-pytorch's ``train.py``; docs/methods.md §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_pref.backbone import Conditioning, DiffusionBackbone
from lit_pref.backbone.ddim_logprob import Trajectory
from lit_pref.backbone.sampler import trajectory_conditioning, transition_log_prob
from lit_pref.losses import ClippedPPOLoss, PPOLoss
from lit_pref.modules.base import LoRAModule
from lit_pref.rewards.stat_tracking import PerPromptStatTracker


@dataclass
class PPOSettings:
    """The policy-gradient settings (DDPO, kvablack/ddpo-pytorch; docs/methods.md §4); the loss's own (clip range,
    advantage clip, KL weight) are the injected loss's arguments.

    Args:
        num_images: K, images sampled per prompt and round.
        eta: DDIM eta of the sampled chains (> 0; ddpo: 1.0).
        inner_epochs: Passes over a round's samples (ddpo: 1).
        minibatch_size: Samples per optimizer step (the samples of a round are shuffled, then split).
        micro_batch_size: Samples per forward pass within a minibatch (gradients accumulated; ddpo's
            ``train.batch_size``); ``None``: the whole minibatch at once.
        sample_batch_size: Chains sampled per forward pass when collecting (ddpo's ``sample.batch_size``);
            ``None``: all of a round's chains at once.
        early_steps: Train on the first ``early_steps`` (noisiest) transitions of each chain only; ``None``: all
            (ddpo). The gradient of a step's log-prob scales with 1 / sigma_t, so the least noisy steps dominate
            the summed gradient, while a layout (the toy world's taste) is decided in the noisiest ones.
        step_fraction: Share of the trained steps used per minibatch, drawn at random (ddpo's
            ``timestep_fraction``: 1.0); the steps' gradients are accumulated into one optimizer step.
        max_grad_norm: Gradient-norm clip of each optimizer step (ddpo: 1.0).
        buffer_size: Rewards kept per prompt by the advantage tracker (ddpo: 16).
        min_count: Rewards a prompt needs before its own statistics replace the batch's (ddpo: 16).
    """

    num_images: int = 4
    eta: float = 1.0
    inner_epochs: int = 1
    minibatch_size: int = 4
    micro_batch_size: int | None = None
    sample_batch_size: int | None = None
    early_steps: int | None = None
    step_fraction: float = 1.0
    max_grad_norm: float = 1.0
    buffer_size: int = 16
    min_count: int = 16

    def __post_init__(self) -> None:
        if self.num_images < 2:
            raise ValueError(f"ppo.num_images must be >= 2 (advantages and choices compare a prompt's images), "
                             f"got {self.num_images}")
        for name in ("inner_epochs", "minibatch_size", "buffer_size", "min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"ppo.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("micro_batch_size", "sample_batch_size", "early_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"ppo.{name} must be >= 1 or None, got {getattr(self, name)}")
        for name in ("eta", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ppo.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.step_fraction <= 1:
            raise ValueError(f"ppo.step_fraction must be in (0, 1], got {self.step_fraction}")


class PPOModule(LoRAModule):
    """Base of the policy-gradient methods: samples K chains per prompt with every step's log-prob
    (:meth:`collect`), turns rewards into per-prompt advantages (``self.tracker``, a
    :class:`~lit_pref.rewards.stat_tracking.PerPromptStatTracker`), and runs the clipped PPO update
    (:meth:`ppo_update`) with the injected ``loss`` (:class:`~lit_pref.losses.ClippedPPOLoss` by default). Uses
    manual optimization; the stat tracker is not checkpointed. Subclasses decide where prompts and rewards come
    from."""

    def __init__(
        self,
        backbone: DiffusionBackbone,
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
            optimizer: Optimizer factory, called with the LoRA parameters only.
            scheduler: Learning-rate scheduler factory, stepped every optimizer step; ``None`` = constant.
            num_inference_steps: DDIM steps of every sampled chain (ddpo: 50).
            guidance_scale: Classifier-free guidance scale of the sampled chains (ddpo: 5.0).
            ppo: Policy-gradient settings.
            loss: The policy-gradient loss on each stored step; any ``lit_pref.losses.PPOLoss``
                (``None``: ``ClippedPPOLoss()``, DDPO's clipped objective).
        """
        super().__init__(backbone, optimizer, scheduler, num_inference_steps, guidance_scale)
        self.automatic_optimization = False
        self.ppo = ppo
        self.loss = loss if loss is not None else ClippedPPOLoss()
        self.tracker = PerPromptStatTracker(ppo.buffer_size, ppo.min_count)

    # ------------------------------------------------------------------ sampling and log-probs
    @torch.no_grad()
    def collect(self, prompts: list[str]) -> Trajectory:
        """K chains per prompt from the current policy (eval mode), image ``g * K + k`` of prompt ``g``."""
        was_training = self.backbone.training
        self.backbone.eval()
        texts = [p for p in prompts for _ in range(self.ppo.num_images)]
        chunk = self.ppo.sample_batch_size or len(texts)
        parts = [self.backbone.sample(texts[i:i + chunk], num_inference_steps=self.num_inference_steps,
                                      guidance_scale=self.guidance_scale, eta=self.ppo.eta, return_trajectory=True)
                 for i in range(0, len(texts), chunk)]
        self.backbone.train(was_training)
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return Trajectory(images=torch.cat([p.images for p in parts]), latents=torch.cat([p.latents for p in parts]),
                          log_probs=torch.cat([p.log_probs for p in parts]), timesteps=first.timesteps,
                          prompts=texts, guidance_scale=first.guidance_scale, eta=first.eta,
                          negative_prompt=first.negative_prompt)

    def conditioning(self, traj: Trajectory) -> tuple[Conditioning, Conditioning]:
        """The text conditioning and unconditional conditioning of a trajectory's rows, as sampling made them."""
        return trajectory_conditioning(self.backbone, traj)

    def step_log_probs(self, traj: Trajectory, rows: Tensor, step: int, cond: Conditioning,
                       negative: Conditioning) -> Tensor:
        """Log-probs (with grad) of step ``step`` of the chains ``rows`` under the current weights."""
        return transition_log_prob(self.backbone, traj, step, cond, negative, rows)

    # ------------------------------------------------------------------ PPO
    def ppo_update(self, traj: Trajectory, advantages: Tensor) -> dict[str, float]:
        """``inner_epochs`` passes of clipped PPO over a round's chains, one optimizer step per minibatch (its
        micro-batches' and steps' gradients accumulated: the gradient of the mean loss); the mean statistics of
        every (micro-batch, step)."""
        settings = self.ppo
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        cond, negative = self.conditioning(traj)
        n, num_steps = traj.log_probs.shape
        num_steps = min(num_steps, settings.early_steps or num_steps)
        steps_per_batch = max(1, math.ceil(settings.step_fraction * num_steps))
        advantages = advantages.to(self.device)
        totals: dict[str, float] = {}
        count = 0
        for _ in range(settings.inner_epochs):
            for rows in torch.randperm(n, device=self.device).split(settings.minibatch_size):
                steps = torch.randperm(num_steps)[:steps_per_batch].sort().values.tolist()
                for micro in rows.split(settings.micro_batch_size or len(rows)):
                    weight = len(micro) / len(rows) / len(steps)
                    for k in steps:
                        logp_new = self.step_log_probs(traj, micro, k, cond, negative)
                        logp_ref = None
                        if self.loss.needs_reference():
                            with self.backbone.reference_forward():
                                logp_ref = self.step_log_probs(traj, micro, k, cond, negative)
                        loss, stats = self.loss(logp_new, traj.log_probs[micro, k], advantages[micro], logp_ref)
                        self.manual_backward(loss * weight)
                        totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
                        for key, value in stats.items():
                            totals[key] = totals.get(key, 0.0) + float(value)
                        count += 1
                self.clip_gradients(optimizer, gradient_clip_val=settings.max_grad_norm,
                                    gradient_clip_algorithm="norm")
                optimizer.step()
                optimizer.zero_grad()
                if scheduler is not None:
                    scheduler.step()
        return {key: value / count for key, value in totals.items()}
