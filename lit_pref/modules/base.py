"""What every LoRA-training module shares: the backbone, the injected optimizer, LoRA-only checkpoints."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor

from lit_pref.backbone import DiffusionBackbone
from lit_pref.modules.empty_batches import EmptyBatchGuard


class NonFiniteLossError(RuntimeError):
    """Training produced more non-finite (NaN or inf) losses than ``max_nonfinite_steps`` allows."""


class LoRAModule(EmptyBatchGuard, LightningModule):
    """Base of the methods: trains only the backbone's LoRA parameters.

    Checkpoints hold only the trainable parameters (and the optimizer state): the frozen base is loaded
    from ``backbone.model`` again, so a checkpoint of an SD1.5 LoRA run is megabytes, not gigabytes.

    Non-finite guard: when the loss of any micro-batch of an optimizer step is NaN or inf (on any process), the
    step is skipped -- its gradients are dropped before the optimizer runs, so no parameter and no optimizer
    state changes -- and counted in ``train/skipped_nonfinite``. More than ``max_nonfinite_steps`` skipped steps
    stop training with :class:`NonFiniteLossError`. The count restarts when a run is resumed. Under DeepSpeed,
    whose engine owns the gradients and the step, the first non-finite loss stops training.

    Empty-batch guard: an optimizer step none of whose micro-batches had a usable pair changes no weight and is
    counted in ``train/empty_batches`` (see :class:`lit_pref.modules.empty_batches.EmptyBatchGuard`).
    """

    def __init__(
        self,
        backbone: DiffusionBackbone,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        max_nonfinite_steps: int = 10,
    ) -> None:
        """
        Args:
            backbone: The diffusion model with LoRA adapters.
            optimizer: Optimizer factory, called with the trainable (LoRA) parameters only.
            scheduler: Learning-rate scheduler factory, stepped every optimizer step; ``None`` = constant.
            num_inference_steps: DDIM steps when the module generates images (``predict``).
            guidance_scale: Classifier-free guidance scale when the module generates images.
            max_nonfinite_steps: Optimizer steps with a NaN/inf loss that are skipped (and counted) before
                training stops with an error; 0 stops at the first.
        """
        super().__init__()
        if max_nonfinite_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {max_nonfinite_steps}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self.backbone = backbone
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.max_nonfinite_steps = max_nonfinite_steps
        self.strict_loading = False  # checkpoints hold the trainable parameters only (see on_load_checkpoint)
        self._nonfinite_loss = False  # a micro-batch of the current optimizer step had a non-finite loss
        self._skipped_nonfinite = 0

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer(self.trainable_parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "step"}}

    def log_lr(self) -> None:
        """Log ``train/lr`` (the first parameter group's learning rate)."""
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ non-finite guard
    def on_before_backward(self, loss: Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self._nonfinite_loss = True
        super().on_before_backward(loss)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the step when a loss since the last step was non-finite: drop the gradients (an optimizer skips
        parameters without a gradient, so neither the weights nor its state change), count, and stop past the
        limit. Every process reaches this hook together, so they decide together."""
        strategy = self.trainer.strategy
        nonfinite = strategy.reduce_boolean_decision(self._nonfinite_loss, all=False)
        self._nonfinite_loss = False
        if nonfinite:
            self._skipped_nonfinite += 1
            where = f"optimizer step {self.global_step} (epoch {self.current_epoch})"
            if isinstance(strategy, DeepSpeedStrategy):
                raise NonFiniteLossError(f"non-finite loss at {where}; DeepSpeed owns the optimizer step, so it "
                                         "cannot be skipped: lower the learning rate or check the data")
            optimizer.zero_grad(set_to_none=True)
            if self._skipped_nonfinite > self.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"{self._skipped_nonfinite} optimizer steps had a NaN/inf loss (the last at {where}), more than "
                    f"max_nonfinite_steps={self.max_nonfinite_steps}: lower the learning rate, check the data for "
                    "NaN/inf pixels, or use bf16 instead of fp16"
                )
        self.log("train/skipped_nonfinite", float(self._skipped_nonfinite), on_step=True, on_epoch=False)
        super().on_before_optimizer_step(optimizer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # DeepSpeed drops "state_dict" and writes the weights to its own files (the trainable ones only, with
        # exclude_frozen_parameters); the names let on_load_checkpoint check a DeepSpeed checkpoint too.
        checkpoint["trainable_parameters"] = sorted(trainable)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint that lacks some of this model's trainable parameters (another LoRA rank or
        target modules): loading is non-strict because the frozen base is not in it. A DeepSpeed checkpoint
        (a folder) has already been loaded by DeepSpeed, non-strictly; its recorded parameter names are checked."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        saved = checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint.get("trainable_parameters", [])
        missing = sorted(trainable - set(saved))
        if missing:
            raise KeyError(
                f"checkpoint lacks {len(missing)} trainable parameter(s) of this model, e.g. {missing[:3]}; "
                "was it written with another LoRA rank or target_modules?"
            )

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Generate one image per prompt of a ``PromptDataModule`` batch, each with its own seed."""
        generators = [torch.Generator(self.device).manual_seed(int(s)) for s in batch["seeds"]]
        images = self.backbone.sample(
            batch["prompts"],
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=generators,
        )
        return {"images": images.cpu(), "prompts": batch["prompts"], "seeds": batch["seeds"], "indices": batch["indices"]}
