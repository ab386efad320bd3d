"""TrajectoryDPO: Diffusion-DPO on preference pairs, one reward for the whole reverse chain (docs/methods.md §1)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_pref.backbone import DiffusionBackbone, repeat_conditioning
from lit_pref.losses import DiffusionDPOLoss, PairLoss
from lit_pref.modules.base import LoRAModule
from lit_pref.modules import collection
from lit_pref.modules.replay import ReplayBuffer, spread_ranks
from lit_pref.rewards import Scorer

TiesPolicy = Literal["drop", "keep_first", "raise"]
Generators = torch.Generator | list[torch.Generator] | None  # one for the batch, or one per pair


@dataclass
class TrajectorySettings:
    """Trajectory mode: off-policy DPO on reverse chains sampled from the policy (Yang, Chen & Zhou 2024).

    Collection and update as in the authors' code: see ``lit_pref.modules.collection``.

    Args:
        collect_every: Re-collect trajectories every this many optimizer updates (paper: 2500 single prompt,
            4000 multi prompt), and at the first update.
        rollouts_per_prompt: Chains sampled per prompt at each collection (paper: 5 / 12).
        kept_per_prompt: Chains kept per prompt, spread over the reward ranks (paper: 5).
        buffer_capacity: Prompt groups the FIFO replay buffer holds (reference: 1000 / 2000).
        pairs_per_step: Comparisons per update (paper: batch 4 / 32).
        num_sampled_steps: K, the chain steps drawn from Categorical(step weights) for each comparison, shared by
            its trajectories (paper: 3 single prompt, 1 multi prompt).
        beta: Scale of the trajectory score (paper: 10 single prompt, 12.5 multi prompt).
        clip: Per-step log-ratio clip (paper: 1e-4 single prompt, 5e-4 multi prompt).
        eta: DDIM eta of the sampled chains (> 0; paper: 1).
        prompts_per_collection: Prompt groups per collection, drawn from the whole prompt set (the datamodule's
            ``prompts``) in shuffled passes (reference ``g_batch_size``: 1000 single prompt, 2000 multi prompt);
            ``None``: the current batch's prompts.
        sample_batch_size: Chains sampled, decoded and scored at a time in a collection (``None``: all at once).
        micro_batch_size: Comparisons per forward/backward inside an update, gradients accumulated over the
            update's ``pairs_per_step`` (``None``: all at once; the reference runs 1).
        num_compared: Trajectories of one group per comparison, ranked by reward: 2 = the DPO pair, more = ListMLE
            (reference ``pl_loss_num_traj``, 2 in both settings); at most ``kept_per_prompt``.
    """

    collect_every: int = 2500
    rollouts_per_prompt: int = 5
    kept_per_prompt: int = 5
    buffer_capacity: int = 1000
    pairs_per_step: int = 4
    num_sampled_steps: int = 3
    beta: float = 10.0
    clip: float = 1e-4
    eta: float = 1.0
    prompts_per_collection: int | None = None
    sample_batch_size: int | None = None
    micro_batch_size: int | None = None
    num_compared: int = 2

    def __post_init__(self) -> None:
        for name in ("collect_every", "rollouts_per_prompt", "kept_per_prompt", "buffer_capacity", "pairs_per_step",
                     "num_sampled_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"trajectory.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("beta", "clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"trajectory.{name} must be > 0, got {getattr(self, name)}")
        if not self.eta > 0:
            raise ValueError(f"trajectory.eta must be > 0 (the chains need log-probs), got {self.eta}")


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

    Offline mode (``mode="offline"``): batches are those of ``lit_pref.datamodules.PreferencePairDataModule``:
    ``images_0``, ``images_1`` in [-1, 1], ``label_0`` (1: image 0 preferred, 0: image 1, 0.5: tie),
    ``captions``, and for SDXL ``original_sizes`` and ``crop_top_left``. The timestep is uniform over the
    training timesteps (``timestep_grid="train"``) or drawn with :meth:`step_weights` over the
    ``num_inference_steps`` timesteps of the DDIM schedule (``"inference"``); ``timestep_range`` narrows the
    former to the noisiest timesteps.

    Trajectory mode (``mode="trajectory"``): batches are prompt batches of ``lit_pref.datamodules.PromptDataModule``.
    Every ``trajectory.collect_every`` updates the batch's prompts (or ``prompts_per_collection`` prompts of the
    whole set) are sampled from the current policy (DDIM, eta > 0, guidance) with per-step log-probs, scored by
    ``scorer``, and the kept chains go to a FIFO replay buffer; every update draws comparisons from the buffer,
    K step indices for each from :meth:`step_weights` (uniform here: the whole chain counts alike), and minimises
    ``-logsigmoid(s(tau_w) - s(tau_l))`` (ListMLE for more than two) with
    ``s = beta * mean_k clamp(logp_theta - logp_init, -clip, clip)`` (``lit_pref.modules.collection``).
    The replay buffer is not checkpointed: a resumed run collects again at its first update.
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
        mode: Literal["offline", "trajectory"] = "offline",
        timestep_grid: Literal["train", "inference"] = "train",
        timestep_range: tuple[float, float] = (0.0, 1.0),
        scorer: Scorer | None = None,
        trajectory: TrajectorySettings = TrajectorySettings(),
        max_nonfinite_steps: int = 10,
        seed: int | None = None,
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
            num_inference_steps: DDIM steps when the module generates images (``predict``, trajectory
                collection) and the size of the ``"inference"`` timestep grid.
            guidance_scale: Classifier-free guidance scale when the module generates images.
            mode: ``"offline"`` (preference pairs of images) or ``"trajectory"`` (sampled chains, see above).
            timestep_grid: Offline mode: ``"train"`` draws t uniformly from 0 .. T_train - 1 (the paper);
                ``"inference"`` draws step k of the N-step DDIM schedule with :meth:`step_weights`.
            timestep_range: Offline mode, ``"train"`` grid: draw t uniformly from ``round(low * T)`` to
                ``round(high * T) - 1`` only (T training timesteps); ``(0.6, 1.0)`` trains on the noisiest 40%,
                where a toy image's layout is decided. ``(0, 1)``: all of them (the paper).
            scorer: Trajectory mode: the preference source, any ``lit_pref.rewards.Scorer`` (a reward model,
                or the toy world's hidden reward). Held as a plain attribute, never a registered submodule.
            trajectory: Trajectory-mode settings.
            max_nonfinite_steps: Optimizer steps with a NaN/inf loss that are skipped (counted as
                ``train/skipped_nonfinite``) before training stops with an error; 0 stops at the first.
            seed: Seed of the per-pair draws in offline training (see above); ``None``: the run's
                ``seed_everything`` seed (``PL_GLOBAL_SEED``), 0 without one.
        """
        super().__init__(backbone, optimizer, scheduler, num_inference_steps, guidance_scale, max_nonfinite_steps)
        if not 0.0 <= proportion_empty_prompts <= 1.0:
            raise ValueError(f"proportion_empty_prompts must be in [0, 1], got {proportion_empty_prompts}")
        for name, value, allowed in (("ties", ties, ("drop", "keep_first", "raise")),
                                     ("mode", mode, ("offline", "trajectory")),
                                     ("timestep_grid", timestep_grid, ("train", "inference"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        if mode == "trajectory":
            if scorer is None:
                raise ValueError("mode='trajectory' needs a scorer (the source of the preferences)")
            spread_ranks(trajectory.rollouts_per_prompt, trajectory.kept_per_prompt)  # validates the counts
            if not 2 <= trajectory.num_compared <= trajectory.kept_per_prompt:
                raise ValueError(f"trajectory.num_compared must be in [2, kept_per_prompt], got {trajectory.num_compared}")
        self.loss = loss
        self.ties = ties
        self.proportion_empty_prompts = proportion_empty_prompts
        self.val_seed = val_seed
        self.mode = mode
        low, high = timestep_range
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"timestep_range must satisfy 0 <= low < high <= 1, got {tuple(timestep_range)}")
        if timestep_grid != "train" and tuple(timestep_range) != (0.0, 1.0):
            raise ValueError("timestep_range applies to timestep_grid='train' only")
        self.timestep_grid = timestep_grid
        self.timestep_range = (float(low), float(high))
        self.scorer = scorer
        self.trajectory = trajectory
        self.buffer = ReplayBuffer(trajectory.buffer_capacity)
        self._collected_at: int | None = None
        self.seed = seed

    # ------------------------------------------------------------------ pieces subclasses override
    def step_weights(self, num_steps: int) -> Tensor:
        """Probability of each step k of an N-step chain (k = 0 the noisiest): uniform, one reward for the
        whole chain. DenseDiscountedDPO discounts it."""
        return torch.full((num_steps,), 1.0 / num_steps)

    def inference_timesteps(self) -> Tensor:
        """The timesteps of the ``num_inference_steps``-step DDIM schedule, k = 0 the noisiest."""
        scheduler = DDIMScheduler.from_config(self.backbone.scheduler_config)
        scheduler.set_timesteps(self.num_inference_steps)
        return scheduler.timesteps

    def sample_timesteps(self, batch_size: int, generator: Generators = None) -> Tensor:
        """Offline-mode timesteps, one per pair, on the ``timestep_grid`` (drawn on the generator's device)."""
        if isinstance(generator, list):
            return torch.cat([self.sample_timesteps(1, g) for g in generator])
        device = generator.device if generator is not None else self.device
        if self.timestep_grid == "train":
            num_train = self.backbone.noise_scheduler.config.num_train_timesteps
            low, high = (round(f * num_train) for f in self.timestep_range)
            if high <= low:
                raise ValueError(f"timestep_range {self.timestep_range} holds no timestep of {num_train}")
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

    # ------------------------------------------------------------------ trajectory mode
    def collect(self, prompts: list[str]) -> dict[str, float]:
        """Sample chains of ``prompts`` (or of ``prompts_per_collection`` prompts from the prompt set) from the
        current policy, score them, and add the kept ones to the replay buffer; returns reward statistics."""
        return collection.collect(self, prompts)

    def trajectory_step(self, batch: dict[str, Any]) -> Tensor:
        settings = self.trajectory
        due = self.global_step % settings.collect_every == 0 or len(self.buffer) == 0  # (a resumed run: empty)
        if due and self._collected_at != self.global_step:
            collection.check_strategy(self)
            stats = self.collect(list(batch["prompts"]))
            self._collected_at = self.global_step
            self.log_dict({"collect/reward_mean": stats["reward_mean"], "collect/reward_std": stats["reward_std"]})
        self.log("train/buffer_size", float(len(self.buffer)))
        loss, stats = collection.update(self)
        if stats["count"]:
            n = stats.pop("count")
            self.log("train/loss", stats.pop("loss"), prog_bar=True, batch_size=n)
            self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=n)
        return loss

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.mode == "trajectory":
            self.log_lr()
            return self.trajectory_step(batch)
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
        if self.mode == "trajectory":
            return  # judged by the reward callbacks on sampled images
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
