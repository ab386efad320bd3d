"""Evaluation on sampled images: reward means per scorer, and the policy's win rate against the reference."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from lit_pref.rewards import Scorer, win_rate


class _Evaluation(Callback):
    """Shared by the evaluation callbacks: fixed prompts, fixed seeds, evaluated at the end of each validation
    and, with ``every_n_steps``, every that many optimizer steps (for runs without validation data)."""

    def __init__(
        self,
        scorers: dict[str, Scorer],
        prompts: list[str],
        num_images_per_prompt: int = 4,
        num_inference_steps: int = 20,
        guidance_scale: float = 5.0,
        seed: int = 0,
        every_n_steps: int | None = None,
    ) -> None:
        """
        Args:
            scorers: Name -> scorer (any ``lit_pref.rewards.Scorer``); the name goes into the metric name.
            prompts: Evaluation prompts (held-out ones, ideally); win-rate intervals resample them.
            num_images_per_prompt: Samples per prompt, each with its own fixed seed (shared by policy and base).
            num_inference_steps: DDIM steps.
            guidance_scale: Classifier-free guidance scale.
            seed: Seed of the first sample's noise; the others follow.
            every_n_steps: Also evaluate every this many optimizer steps (``None``: only after validation).
        """
        if not scorers or not prompts:
            raise ValueError("need at least one scorer and one prompt")
        self.scorers = scorers  # held here, never registered on the LightningModule
        self.texts = [p for p in prompts for _ in range(num_images_per_prompt)]
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.every_n_steps = every_n_steps
        self._last_step: int | None = None

    @torch.no_grad()
    def sample(self, pl_module: LightningModule) -> Tensor:
        """Images in [0, 1] for every (prompt, repeat); image i always starts from the noise of seed + i."""
        backbone = pl_module.backbone
        generators = [torch.Generator(backbone.device).manual_seed(self.seed + i) for i in range(len(self.texts))]
        return backbone.sample(self.texts, num_inference_steps=self.num_inference_steps,
                               guidance_scale=self.guidance_scale, generator=generators)

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and self._last_step != step:
            self._last_step = step
            self.evaluate(trainer, pl_module)


class RewardMetrics(_Evaluation):
    """Log ``eval/<name>`` (mean) and ``eval/<name>_std`` of every scorer on fixed-seed samples of the policy.

    The same names for every method, so runs overlay in TensorBoard.
    """

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        images = self.sample(pl_module)
        for name, scorer in self.scorers.items():
            scores = scorer.score(images, self.texts).float()
            pl_module.log(f"eval/{name}", scores.mean(), sync_dist=True)
            pl_module.log(f"eval/{name}_std", scores.std() if len(scores) > 1 else 0.0, sync_dist=True)


class WinRate(_Evaluation):
    """Log ``eval/win_rate_vs_base/<name>`` and its bootstrap 95% interval (``.../<name>_low``, ``_high``): the policy
    against the reference (adapters off) on the same prompts and initial noise, ties counting 0.5."""

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        policy = self.sample(pl_module)
        with pl_module.backbone.reference():
            base = self.sample(pl_module)
        for name, scorer in self.scorers.items():
            result = win_rate(scorer.score(policy, self.texts), scorer.score(base, self.texts), groups=self.texts)
            pl_module.log(f"eval/win_rate_vs_base/{name}", result.rate)
            pl_module.log(f"eval/win_rate_vs_base/{name}_low", result.low)
            pl_module.log(f"eval/win_rate_vs_base/{name}_high", result.high)
