"""TrajectoryDPO: Diffusion-DPO on offline preference pairs, one reward for the whole reverse chain
(docs/methods.md §1)."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_pref.backbone import DiffusionBackbone, repeat_conditioning
from lit_pref.losses import DiffusionDPOLoss, PairLoss, StepWeights, UniformSteps
from lit_pref.losses.step_weights import check_timestep_range, timestep_bounds
from lit_pref.modules.base import LoRAModule

TiesPolicy = Literal["drop", "keep_first", "raise"]
Generators = torch.Generator | list[torch.Generator] | None  # one for the batch, or one per pair


class TrajectoryDPO(LoRAModule):
    """Diffusion-DPO (Wallace et al. 2023) with LoRA adapters.

    Per pair: one timestep and one noise shared by winner and loser; winner and loser go through the
    policy in one forward, and through the reference (adapters disabled, in inference mode) in another; the
    per-sample denoising errors go to the injected ``loss`` (Diffusion-DPO by default). With the
    ``lit_pref.callbacks.EncodingCache`` callback the batches carry cached VAE posteriors and text embeddings instead of
    images, and the frozen encoders do not run. In training, a pair's random draws (caption dropping, VAE
    posterior samples, noise, timestep) come from its own generator seeded with ``(seed, epoch, the pair's
    dataset index)`` (batches with ``indices``), so the batch size, gradient accumulation, the number of
    processes and a restart from a checkpoint change none of them.

    Batches are those of ``lit_pref.datamodules.PreferencePairDataModule``: ``images_0``, ``images_1`` in
    [-1, 1], ``label_0`` (1: image 0 preferred, 0: image 1, 0.5: tie), ``captions``, and for SDXL
    ``original_sizes`` and ``crop_top_left``. The timestep is uniform over the training timesteps
    (``timestep_grid="train"``; ``timestep_range`` narrows it to the noisiest ones) or step k of the
    ``num_inference_steps``-step DDIM schedule drawn with probability ``step_weights(N)[k]`` (``"inference"``;
    ``DiscountedSteps`` there is DenseDiscountedDPO's discounted timestep distribution on offline pairs).
    Sampled chains instead of pairs: :class:`~lit_pref.modules.OnlineTrajectoryDPO`.
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        loss: PairLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        ties: TiesPolicy = "drop",
        proportion_empty_prompts: float = 0.0,
        val_seed: int = 0,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        timestep_grid: Literal["train", "inference"] = "train",
        timestep_range: tuple[float, float] = (0.0, 1.0),
        step_weights: StepWeights | None = None,
        max_nonfinite_steps: int = 10,
        seed: int | None = None,
    ) -> None:
        """
        Args:
            backbone: The diffusion model with LoRA adapters (policy; adapters off = reference).
            loss: The pair loss on per-sample errors; any ``lit_pref.losses.PairLoss`` subclass (``None``:
                ``DiffusionDPOLoss()``).
            optimizer: Optimizer factory, called with the LoRA parameters only.
            scheduler: Learning-rate scheduler factory, stepped every optimizer step; ``None`` = constant.
            ties: Pairs with ``label_0 == 0.5``: ``drop`` them (counted as ``train/ties_dropped``, as the
                paper's trainer does), ``keep_first`` (image 0 as winner), or ``raise`` an error.
            proportion_empty_prompts: Probability of replacing a training caption by the empty prompt
                (the paper's runs used 0.2), which keeps classifier-free guidance working.
            val_seed: Seed of the timesteps and noise of validation batches, fixed so that validation
                losses are comparable across epochs.
            num_inference_steps: DDIM steps when the module generates images (``predict``) and the size of the
                ``"inference"`` timestep grid.
            guidance_scale: Classifier-free guidance scale when the module generates images.
            timestep_grid: ``"train"`` draws t uniformly from 0 .. T_train - 1 (the paper); ``"inference"``
                draws step k of the N-step DDIM schedule with ``step_weights``.
            timestep_range: ``"train"`` grid: draw t uniformly from ``round(low * T)`` to
                ``round(high * T) - 1`` only (T training timesteps); ``(0.6, 1.0)`` trains on the noisiest 40%,
                where a toy image's layout is decided. ``(0, 1)``: all of them (the paper).
            step_weights: ``"inference"`` grid: the probability of each DDIM step, any
                ``lit_pref.losses.StepWeights`` (``None``: ``UniformSteps()``; ``DiscountedSteps``: the dense reward view).
            max_nonfinite_steps: Optimizer steps with a NaN/inf loss that are skipped (counted as
                ``train/skipped_nonfinite``) before training stops with an error; 0 stops at the first.
            seed: Seed of the per-pair draws in training (see above); ``None``: the run's
                ``seed_everything`` seed (``PL_GLOBAL_SEED``), 0 without one.
        """
        super().__init__(backbone, optimizer, scheduler, num_inference_steps, guidance_scale, max_nonfinite_steps)
        if not 0.0 <= proportion_empty_prompts <= 1.0:
            raise ValueError(f"proportion_empty_prompts must be in [0, 1], got {proportion_empty_prompts}")
        for name, value, allowed in (("ties", ties, ("drop", "keep_first", "raise")),
                                     ("timestep_grid", timestep_grid, ("train", "inference"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        self.loss = loss if loss is not None else DiffusionDPOLoss()
        self.ties = ties
        self.proportion_empty_prompts = proportion_empty_prompts
        self.val_seed = val_seed
        timestep_range = check_timestep_range(timestep_range)
        if timestep_grid != "train" and tuple(timestep_range) != (0.0, 1.0):
            raise ValueError("timestep_range applies to timestep_grid='train' only")
        step_weights = step_weights if step_weights is not None else UniformSteps()
        if timestep_grid == "train" and not isinstance(step_weights, UniformSteps):
            raise ValueError(f"step_weights ({step_weights!r}) applies to timestep_grid='inference' only")
        self.timestep_grid = timestep_grid
        self.timestep_range = timestep_range
        self.step_weights = step_weights
        self.seed = seed

    # ------------------------------------------------------------------ timesteps and generators
    def inference_timesteps(self) -> Tensor:
        """The timesteps of the ``num_inference_steps``-step DDIM schedule, k = 0 the noisiest."""
        scheduler = DDIMScheduler.from_config(self.backbone.scheduler_config)
        scheduler.set_timesteps(self.num_inference_steps)
        return scheduler.timesteps

    def sample_timesteps(self, batch_size: int, generator: Generators = None) -> Tensor:
        """Training timesteps, one per pair, on the ``timestep_grid`` (drawn on the generator's device)."""
        if isinstance(generator, list):
            return torch.cat([self.sample_timesteps(1, g) for g in generator])
        device = generator.device if generator is not None else self.device
        if self.timestep_grid == "train":
            num_train = self.backbone.noise_scheduler.config.num_train_timesteps
            low, high = timestep_bounds(self.timestep_range, num_train)
            steps = torch.randint(low, high, (batch_size,), device=device, generator=generator)
            return steps.to(self.device)
        weights = self.step_weights(self.num_inference_steps).to(device)
        steps = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        return self.inference_timesteps().to(self.device)[steps.to(self.device)]

    def pair_generators(self, indices: Tensor) -> list[torch.Generator]:
        """One CPU generator per pair, seeded with ``(seed, epoch, index)``: a pair draws the same numbers in
        whatever batch, process or restart it is trained."""
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        return [
            torch.Generator().manual_seed(int(np.random.SeedSequence([seed, self.current_epoch, i]).generate_state(1)[0]))
            for i in indices.tolist()
        ]

    # ------------------------------------------------------------------ batch handling
    def winners_and_losers(self, batch: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """Order each pair as (winner, loser) by ``label_0`` and apply the ties policy.

        Returns the ordered pairs (``images_w``, ``images_l`` -- or ``latent_dists_w``, ``latent_dists_l`` and
        ``text`` for a batch from the encoding cache -- ``captions`` and the SDXL size keys, only the kept pairs)
        and the number of ties dropped.
        """
        label = batch["label_0"].to(self.device)
        tie = label == 0.5
        if self.ties == "raise" and bool(tie.any()):
            raise ValueError(f"batch has {int(tie.sum())} tie(s) (label_0 == 0.5) and ties='raise'")
        keep = ~tie if self.ties == "drop" else torch.ones_like(tie)
        first_wins = label >= 0.5
        pairs: dict[str, Any] = {"captions": [c for c, k in zip(batch["captions"], keep.tolist()) if k]}
        for name in ("images", "latent_dists"):
            if f"{name}_0" in batch:
                first, second = batch[f"{name}_0"].to(self.device), batch[f"{name}_1"].to(self.device)
                wins = first_wins.view(-1, *[1] * (first.ndim - 1))
                pairs[f"{name}_w"] = torch.where(wins, first, second)[keep]
                pairs[f"{name}_l"] = torch.where(wins, second, first)[keep]
        if "text" in batch:
            pairs["text"] = {k: v.to(self.device)[keep] for k, v in batch["text"].items()}
        for key in ("original_sizes", "crop_top_left", "indices"):
            if key in batch:
                pairs[key] = batch[key].to(self.device)[keep]
        return pairs, int((~keep).sum())

    def denoising_errors(
        self, pairs: dict[str, Any], generator: Generators = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-sample MSEs ``(e_w, e_l, r_w, r_l)`` of policy and reference, sharing t and noise per pair.

        Latents and text come from the encoding cache when the pairs carry them (``latent_dists_*``, ``text``),
        else from the frozen VAE and text encoder; a cached posterior is sampled exactly as a fresh encoding is.
        ``generator``: one for the batch, one per pair (pair i: winner's posterior sample, loser's, noise,
        timestep, in that order), or ``None`` for the global RNG.
        """
        backbone = self.backbone
        per_image = generator + generator if isinstance(generator, list) else generator
        if "latent_dists_w" in pairs:
            latents = backbone.sample_latents(torch.cat([pairs["latent_dists_w"], pairs["latent_dists_l"]]), per_image)
        else:
            latents = backbone.encode_images(torch.cat([pairs["images_w"], pairs["images_l"]]), generator=per_image)
        n = latents.shape[0] // 2
        noise = randn_tensor(latents[:n].shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noise = noise.repeat(2, 1, 1, 1)
        timesteps = self.sample_timesteps(n, generator).repeat(2)
        noisy = backbone.noise_scheduler.add_noise(latents, noise, timesteps)
        target = backbone.training_target(latents, noise, timesteps).float()
        text = pairs["text"] if "text" in pairs else backbone.encode_text(pairs["captions"])
        cond = backbone.conditioning(
            text,
            original_sizes=pairs.get("original_sizes"),
            crop_top_left=pairs.get("crop_top_left"),
            target_size=tuple(s * backbone.vae_scale_factor for s in latents.shape[-2:]),
        )
        cond = repeat_conditioning(cond, 2)
        model_err = (backbone.predict(noisy, timesteps, cond).float() - target).pow(2).mean(dim=(1, 2, 3))
        # The reference needs no graph (inference mode, where no strategy forbids it); the clone outside it makes a
        # normal tensor, so any loss may save it for backward (an inference tensor cannot be).
        with backbone.reference_forward():
            ref_err = (backbone.predict(noisy, timesteps, cond).float() - target).pow(2).mean(dim=(1, 2, 3))
        ref_err = ref_err.clone()
        return model_err[:n], model_err[n:], ref_err[:n], ref_err[n:]

    def _drop_captions(self, captions: list[str], generators: list[torch.Generator] | None = None) -> list[str]:
        if self.proportion_empty_prompts == 0.0:
            return captions
        if generators is None:
            draws = torch.rand(len(captions))
        else:
            draws = torch.cat([torch.rand(1, generator=g) for g in generators])
        drop = draws < self.proportion_empty_prompts
        return ["" if d else c for c, d in zip(captions, drop.tolist())]

    def _drop_cached_text(self, text: dict[str, Tensor], captions: list[str]) -> dict[str, Tensor]:
        """Cached text embeddings with the rows of empty captions replaced by the empty prompt's embedding."""
        empty = torch.tensor([c == "" for c in captions], device=self.device)
        if not bool(empty.any()):
            return text
        blank = self.backbone.encode_text([""])
        return {k: torch.where(empty.view(-1, *[1] * (v.ndim - 1)), blank[k].to(v.dtype), v) for k, v in text.items()}

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        pairs, dropped = self.winners_and_losers(batch)
        # epoch totals over all processes (synchronised once, at the epoch's end)
        self.log("train/ties_dropped", float(dropped), on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True)
        self.log("data/skipped_rows", float(batch.get("num_skipped", 0)), on_step=False, on_epoch=True, reduce_fx="sum",
                 sync_dist=True)
        self.log_lr()
        n = len(pairs["captions"])
        if n == 0:  # nothing to learn from: a zero loss that still runs backward, and the step is skipped
            return self.empty_batch_loss(self.trainable_parameters())
        generators = self.pair_generators(pairs["indices"]) if "indices" in pairs else None
        pairs["captions"] = self._drop_captions(pairs["captions"], generators)
        if "text" in pairs:
            pairs["text"] = self._drop_cached_text(pairs["text"], pairs["captions"])
        loss, stats = self.loss(*self.denoising_errors(pairs, generators))
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        """The training loss on held-out pairs with fixed timesteps and noise, logged as ``<stage>/*``."""
        pairs, _ = self.winners_and_losers(batch)
        n = len(pairs["captions"])
        if n == 0:
            return
        generator = torch.Generator(self.device).manual_seed(self.val_seed + batch_idx)
        loss, stats = self.loss(*self.denoising_errors(pairs, generator))
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log_dict({f"{stage}/{k}": v for k, v in stats.items()}, batch_size=n, sync_dist=True)
