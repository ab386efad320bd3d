"""OnlineTrajectoryDPO: trajectory-level DPO on reverse chains sampled from the policy, kept in a replay buffer
(Yang, Chen & Zhou 2024; docs/methods.md §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DenseDPOLoss, StepWeights, TrajectoryLoss, UniformSteps
from lit_pref.modules import collection
from lit_pref.modules.base import LoRAModule
from lit_pref.modules.replay import ReplayBuffer, spread_ranks
from lit_pref.rewards import Scorer


@dataclass
class TrajectorySettings:
    """Collection and update of the online trajectory module, as in the authors' code (Yang, Chen & Zhou 2024;
    see ``lit_pref.modules.collection``). The loss's own settings (beta, clip) are the loss's arguments.

    Args:
        collect_every: Re-collect trajectories every this many optimizer updates (paper: 2500 single prompt,
            4000 multi prompt), and at the first update.
        rollouts_per_prompt: Chains sampled per prompt at each collection (paper: 5 / 12).
        kept_per_prompt: Chains kept per prompt, spread over the reward ranks (paper: 5).
        buffer_capacity: Prompt groups the FIFO replay buffer holds (reference: 1000 / 2000).
        pairs_per_step: Comparisons per update (paper: batch 4 / 32).
        num_sampled_steps: K, the chain steps drawn from Categorical(step weights) for each comparison, shared by
            its trajectories (paper: 3 single prompt, 1 multi prompt).
        eta: DDIM eta of the sampled chains (> 0; paper: 1).
        prompts_per_collection: Prompt groups per collection, drawn from the whole prompt set (the datamodule's
            ``prompts``) in shuffled passes (reference ``g_batch_size``: 1000 single prompt, 2000 multi prompt);
            ``None``: the current batch's prompts.
        sample_batch_size: Chains sampled, decoded and scored at a time in a collection (``None``: all at once).
        micro_batch_size: Comparisons per forward/backward inside an update, gradients accumulated over the
            update's ``pairs_per_step`` (``None``: all at once; the reference runs 1).
        num_compared: Trajectories of one group per comparison, ranked by reward: 2 = the DPO pair, more = a
            ranked list (reference ``pl_loss_num_traj``, 2 in both settings); at most ``kept_per_prompt``.
    """

    collect_every: int = 2500
    rollouts_per_prompt: int = 5
    kept_per_prompt: int = 5
    buffer_capacity: int = 1000
    pairs_per_step: int = 4
    num_sampled_steps: int = 3
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
        if not self.eta > 0:
            raise ValueError(f"trajectory.eta must be > 0 (the chains need log-probs), got {self.eta}")
        spread_ranks(self.rollouts_per_prompt, self.kept_per_prompt)  # validates the counts
        if not 2 <= self.num_compared <= self.kept_per_prompt:
            raise ValueError(f"trajectory.num_compared must be in [2, kept_per_prompt], got {self.num_compared}")


class OnlineTrajectoryDPO(LoRAModule):
    """Off-policy DPO on reverse chains sampled from the policy, with a replay buffer.

    Batches are prompt batches of ``lit_pref.datamodules.PromptDataModule``. Every ``trajectory.collect_every``
    updates the batch's prompts (or ``prompts_per_collection`` prompts of the whole set) are sampled from the
    current policy (DDIM, eta > 0, guidance) with per-step log-probs, scored by ``scorer``, and the kept chains go
    to a FIFO replay buffer. Every update draws comparisons from the buffer (``num_compared`` chains of one prompt,
    ranked by reward), K step indices for each from ``step_weights``, the log-probs of those steps under the
    policy and the initial model (adapters off), and minimises the injected ``loss`` on them: by default the dense
    DPO loss ``-logsigmoid(s(tau_w) - s(tau_l))`` (ListMLE for more than two) with
    ``s = beta * mean_k clamp(logp_theta - logp_init, -clip, clip)``. With uniform step weights the whole chain
    counts alike (one reward for the chain); :class:`~lit_pref.modules.DenseDiscountedDPO` discounts them.
    The replay buffer is not checkpointed: a resumed run collects again at its first update.
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        scorer: Scorer,
        loss: TrajectoryLoss | None = None,
        step_weights: StepWeights | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        trajectory: TrajectorySettings = TrajectorySettings(),
        max_nonfinite_steps: int = 10,
        seed: int | None = None,
    ) -> None:
        """
        Args:
            backbone: The diffusion model with LoRA adapters (policy; adapters off = the initial model).
            scorer: The preference source, any ``lit_pref.rewards.Scorer`` (a reward model, or the toy world's
                hidden reward). Held as a plain attribute, never a registered submodule.
            loss: The trajectory loss on the drawn steps' log-probs; any ``lit_pref.losses.TrajectoryLoss``
                (``None``: ``DenseDPOLoss()``).
            step_weights: How likely each step of a chain is drawn; any ``lit_pref.losses.StepWeights``
                (``None``: ``UniformSteps()``, the whole chain alike; ``DiscountedSteps``: the dense reward view).
            optimizer: Optimizer factory, called with the LoRA parameters only.
            scheduler: Learning-rate scheduler factory, stepped every optimizer step; ``None`` = constant.
            num_inference_steps: N, the chain length: DDIM steps of collection and ``predict``.
            guidance_scale: Classifier-free guidance of collection, update and ``predict`` (paper: 7.5).
            trajectory: Collection and update settings (paper values in docs/methods.md §2).
            max_nonfinite_steps: Optimizer steps with a NaN/inf loss that are skipped (counted as
                ``train/skipped_nonfinite``) before training stops with an error; 0 stops at the first.
            seed: Seed of the collected prompts and chains; ``None``: the run's ``seed_everything`` seed
                (``PL_GLOBAL_SEED``), 0 without one.
        """
        super().__init__(backbone, optimizer, scheduler, num_inference_steps, guidance_scale, max_nonfinite_steps)
        self.scorer = scorer
        self.loss = loss if loss is not None else DenseDPOLoss()
        self.step_weights = step_weights if step_weights is not None else UniformSteps()
        self.trajectory = trajectory
        self.buffer = ReplayBuffer(trajectory.buffer_capacity)
        self._collected_at: int | None = None
        self.seed = seed

    def collect(self, prompts: list[str]) -> dict[str, float]:
        """Sample chains of ``prompts`` (or of ``prompts_per_collection`` prompts from the prompt set) from the
        current policy, score them, and add the kept ones to the replay buffer; returns reward statistics."""
        return collection.collect(self, prompts)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        self.log_lr()
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

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Nothing: the policy is judged by the reward callbacks on sampled images."""
