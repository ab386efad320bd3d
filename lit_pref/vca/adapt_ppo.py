"""Live co-adaptation with PPO: after each choice, a few clipped-PPO steps of the LoRA on fresh samples of the round's
prompt, rewarded by a scorer (the reward model trained on the person's dialogues: VCA's R_pref)."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_pref.backbone import DiffusionBackbone
from lit_pref.backbone.sampler import trajectory_conditioning, transition_log_prob
from lit_pref.losses import ClippedPPOLoss
from lit_pref.rewards import Scorer
from lit_pref.vca.adapt import SessionAdapter

__all__ = ["LivePPOAdapter"]


class LivePPOAdapter(SessionAdapter):
    """Adapts a backbone's LoRA to one person, round by round, with PPO on a reward (DDPO, Black et al. 2023).

    Each of the ``updates`` steps after a choice samples ``num_images`` chains of the round's prompt from the current
    LoRA (DDIM with ``eta`` > 0, so every step has a log-prob), scores their images with ``scorer``, normalises the
    rewards over the chains into advantages, and makes one AdamW step on the clipped PPO objective
    (:class:`~lit_pref.losses.ClippedPPOLoss`) summed over the first ``early_steps`` (noisiest) transitions. The
    round's own images come from the deterministic sampler (eta 0, no log-probs), so they are not trained on: the
    choice teaches the model through ``scorer`` (the reward model trained on the person's dialogues,
    ``lit_pref.rewards.RewardModelScorer``). Sessions, carry-over and reset are :class:`SessionAdapter`'s.

    Args:
        backbone: The model whose LoRA adapts (in place).
        scorer: The reward of an image for its prompt (higher is better).
        updates: Optimizer steps after each choice, each on fresh chains.
        lr: AdamW learning rate.
        num_images: Chains sampled per step (>= 2: advantages compare them).
        num_inference_steps: DDIM steps of each chain (as the tool samples).
        guidance_scale: Classifier-free guidance scale of each chain (as the tool samples).
        eta: DDIM eta of the chains (> 0).
        early_steps: Train on the first ``early_steps`` (noisiest) transitions only; ``None``: all.
        clip_range: PPO ratio clip.
        adv_clip: Advantage clamp.
        max_grad_norm: Gradient-norm clip of each step.
        seed: Seed of the chains' noise.
        carry_over: A new session keeps the adapted LoRA (the tool goes on learning one person).
    """

    def __init__(self, backbone: DiffusionBackbone, scorer: Scorer, updates: int = 2, lr: float = 5e-4,
                 num_images: int = 32, num_inference_steps: int = 10, guidance_scale: float = 4.0, eta: float = 1.0,
                 early_steps: int | None = 5, clip_range: float = 1e-2, adv_clip: float = 1.0,
                 max_grad_norm: float = 1.0, seed: int = 0, carry_over: bool = False) -> None:
        if num_images < 2:
            raise ValueError(f"num_images must be at least 2 (advantages compare the chains), got {num_images}")
        if not eta > 0:
            raise ValueError(f"eta must be > 0 (a deterministic step has no log-prob), got {eta}")
        if early_steps is not None and early_steps < 1:
            raise ValueError(f"early_steps must be at least 1 or None, got {early_steps}")
        self.scorer = scorer
        self.num_images = num_images
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.eta = eta
        self.early_steps = early_steps
        self.loss = ClippedPPOLoss(clip_range=clip_range, adv_clip=adv_clip)
        super().__init__(backbone, updates, lr, max_grad_norm, seed, carry_over)

    def _steps(self, images: Tensor, chosen: int, prompt: str) -> list[float]:
        backbone = self.backbone
        prompts = [prompt] * self.num_images
        losses = []
        for _ in range(self.updates):
            backbone.eval()
            with torch.no_grad():
                traj = backbone.sample(prompts, self.num_inference_steps, self.guidance_scale, eta=self.eta,
                                       generator=self.generator, return_trajectory=True)
                rewards = self.scorer.score(traj.images.float(), prompts).float().to(backbone.device)
                cond, negative = trajectory_conditioning(backbone, traj)
            advantages = (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6)
            backbone.train()
            num_steps = min(traj.num_steps, self.early_steps or traj.num_steps)
            self.optimizer.zero_grad()
            total = 0.0
            for k in range(num_steps):  # one backward a transition: the gradient of the mean, one graph at a time
                logp = transition_log_prob(backbone, traj, k, cond, negative)
                loss, _ = self.loss(logp, traj.log_probs[:, k], advantages)
                (loss / num_steps).backward()
                total += float(loss.detach()) / num_steps
            self._apply_gradients()
            losses.append(total)
        return losses
