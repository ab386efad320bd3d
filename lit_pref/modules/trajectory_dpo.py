"""TrajectoryDPO: Diffusion-DPO on preference pairs, one reward for the whole reverse chain (METHODS.md §1)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_pref.backbone import DiffusionBackbone, repeat_conditioning
from lit_pref.losses import DiffusionDPOLoss, PairLoss
from lit_pref.modules.base import LoRAModule

TiesPolicy = Literal["drop", "keep_first", "raise"]


class TrajectoryDPO(LoRAModule):
    """Diffusion-DPO (Wallace et al. 2023) with LoRA adapters.

    Per pair: one timestep and one noise shared by winner and loser; winner and loser go through the
    policy in one forward, and through the reference (adapters disabled, no grad) in another; the per-sample
    denoising errors go to the injected ``loss`` (Diffusion-DPO by default).

    Batches are those of ``datamodules.PreferencePairDataModule``: ``images_0``, ``images_1`` in [-1, 1],
    ``label_0`` (1: image 0 preferred, 0: image 1, 0.5: tie), ``captions``, and for SDXL
    ``original_sizes`` and ``crop_top_left``.
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        loss: PairLoss = lazy_instance(DiffusionDPOLoss),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        ties: TiesPolicy = "drop",
        proportion_empty_prompts: float = 0.0,
        val_seed: int = 0,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
    ) -> None:
        """
        Args:
            backbone: The diffusion model with LoRA adapters (policy; adapters off = reference).
            loss: The pair loss on per-sample errors; any ``lit_pref.losses.PairLoss`` subclass.
            optimizer: Optimizer factory, called with the LoRA parameters only.
            scheduler: Learning-rate scheduler factory, stepped every optimizer step; ``None`` = constant.
            ties: Pairs with ``label_0 == 0.5``: ``drop`` them (counted as ``train/ties_dropped``, as the
                paper's trainer does), ``keep_first`` (image 0 as winner), or ``raise`` an error.
            proportion_empty_prompts: Probability of replacing a training caption by the empty prompt
                (the paper's runs used 0.2), which keeps classifier-free guidance working.
            val_seed: Seed of the timesteps and noise of validation batches, fixed so that validation
                losses are comparable across epochs.
            num_inference_steps: DDIM steps when the module generates images (``predict``).
            guidance_scale: Classifier-free guidance scale when the module generates images.
        """
        super().__init__(backbone, optimizer, scheduler, num_inference_steps, guidance_scale)
        if not 0.0 <= proportion_empty_prompts <= 1.0:
            raise ValueError(f"proportion_empty_prompts must be in [0, 1], got {proportion_empty_prompts}")
        self.loss = loss
        self.ties = ties
        self.proportion_empty_prompts = proportion_empty_prompts
        self.val_seed = val_seed

    # ------------------------------------------------------------------ pieces subclasses override
    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Training timesteps, one per pair: uniform over ``0 .. T_train - 1``."""
        num_train = self.backbone.noise_scheduler.config.num_train_timesteps
        return torch.randint(0, num_train, (batch_size,), device=self.device, generator=generator)

    # ------------------------------------------------------------------ batch handling
    def winners_and_losers(self, batch: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Order each pair as (winner, loser) by ``label_0`` and apply the ties policy.

        Returns the ordered pairs (``images_w``, ``images_l``, ``captions`` and the SDXL size keys, only
        the kept pairs) and the number of ties dropped.
        """
        label = batch["label_0"].to(self.device)
        tie = label == 0.5
        if self.ties == "raise" and bool(tie.any()):
            raise ValueError(f"batch has {int(tie.sum())} tie(s) (label_0 == 0.5) and ties='raise'")
        keep = ~tie if self.ties == "drop" else torch.ones_like(tie)
        first_wins = (label >= 0.5).view(-1, 1, 1, 1)
        images_0, images_1 = batch["images_0"], batch["images_1"]
        pairs = {
            "images_w": torch.where(first_wins, images_0, images_1)[keep],
            "images_l": torch.where(first_wins, images_1, images_0)[keep],
            "captions": [c for c, k in zip(batch["captions"], keep.tolist()) if k],
        }
        for key in ("original_sizes", "crop_top_left"):
            if key in batch:
                pairs[key] = batch[key].to(self.device)[keep]
        return pairs, int((~keep).sum())

    def denoising_errors(
        self, pairs: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-sample MSEs ``(e_w, e_l, r_w, r_l)`` of policy and reference, sharing t and noise per pair."""
        backbone = self.backbone
        images_w, images_l = pairs["images_w"], pairs["images_l"]
        n = images_w.shape[0]
        latents = backbone.encode_images(torch.cat([images_w, images_l]), generator=generator)
        noise = torch.randn(latents[:n].shape, device=latents.device, dtype=latents.dtype, generator=generator)
        noise = noise.repeat(2, 1, 1, 1)
        timesteps = self.sample_timesteps(n, generator).repeat(2)
        noisy = backbone.noise_scheduler.add_noise(latents, noise, timesteps)
        target = backbone.training_target(latents, noise, timesteps).float()
        cond = backbone.encode_prompts(
            pairs["captions"],
            original_sizes=pairs.get("original_sizes"),
            crop_top_left=pairs.get("crop_top_left"),
            target_size=tuple(images_w.shape[-2:]),
        )
        cond = repeat_conditioning(cond, 2)
        model_err = (backbone.predict(noisy, timesteps, cond).float() - target).pow(2).mean(dim=(1, 2, 3))
        with torch.no_grad(), backbone.reference():
            ref_err = (backbone.predict(noisy, timesteps, cond).float() - target).pow(2).mean(dim=(1, 2, 3))
        return model_err[:n], model_err[n:], ref_err[:n], ref_err[n:]

    def _drop_captions(self, captions: list[str]) -> list[str]:
        if self.proportion_empty_prompts == 0.0:
            return captions
        drop = torch.rand(len(captions)) < self.proportion_empty_prompts
        return ["" if d else c for c, d in zip(captions, drop.tolist())]

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        pairs, dropped = self.winners_and_losers(batch)
        self.log("train/ties_dropped", float(dropped), on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("data/skipped_rows", float(batch.get("num_skipped", 0)), on_step=False, on_epoch=True, reduce_fx="sum")
        self.log_lr()
        n = len(pairs["captions"])
        if n == 0:
            # Nothing to learn from, but every rank must still run backward (DDP would hang otherwise).
            return sum(p.sum() for p in self.trainable_parameters()) * 0.0
        pairs["captions"] = self._drop_captions(pairs["captions"])
        loss, stats = self.loss(*self.denoising_errors(pairs))
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pairs, _ = self.winners_and_losers(batch)
        n = len(pairs["captions"])
        if n == 0:
            return
        generator = torch.Generator(self.device).manual_seed(self.val_seed + batch_idx)
        loss, stats = self.loss(*self.denoising_errors(pairs, generator))
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in stats.items()}, batch_size=n, sync_dist=True)
