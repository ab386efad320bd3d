"""Optimizer steps with nothing to learn from change no weight (a LightningModule mixin)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor


class EmptyBatchGuard:
    """Mix into a LightningModule (before ``LightningModule`` in the bases) whose ``training_step`` can find no
    usable pair in a batch (all ties dropped, every row skipped): it returns :meth:`empty_batch_loss` then.

    That loss is zero with a graph through every trainable parameter, so every process still runs backward and
    DDP's gradient all-reduce stays in step. When every micro-batch of an optimizer step, on every process, was
    empty, the step is skipped: the gradients are dropped before the optimizer runs (an optimizer leaves
    parameters without a gradient alone: no weight, no Adam moment, no step count changes) and the learning-rate
    scheduler is not stepped. Such steps are counted in ``train/empty_batches``. Under DeepSpeed, whose engine
    owns the gradients and the step, the step cannot be skipped: it is counted and a warning says so.
    """

    _microbatches: int = 0
    _empty_microbatches: int = 0
    _skip_scheduler: bool = False
    _empty_steps: int = 0

    def empty_batch_loss(self, parameters: Iterable[torch.nn.Parameter]) -> Tensor:
        """The loss of a micro-batch without a usable pair: ``0 * sum(parameters)`` (see the class)."""
        self._empty_microbatches += 1
        return sum(p.sum() for p in parameters) * 0.0

    def on_before_backward(self, loss: Tensor) -> None:
        self._microbatches += 1
        super().on_before_backward(loss)  # type: ignore[misc]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Decide, together with every process, whether the step had any pair; drop its gradients if not."""
        strategy = self.trainer.strategy  # type: ignore[attr-defined]
        local_empty = self._microbatches > 0 and self._empty_microbatches == self._microbatches
        self._microbatches = self._empty_microbatches = 0
        self._skip_scheduler = strategy.reduce_boolean_decision(local_empty, all=True)
        if self._skip_scheduler:
            self._empty_steps += 1
            if isinstance(strategy, DeepSpeedStrategy):
                self._skip_scheduler = False
                rank_zero_warn("an optimizer step had no usable pair on any process; DeepSpeed owns the step and "
                               "applies it with zero gradients (its optimizer's moments still move the weights)")
            else:
                optimizer.zero_grad(set_to_none=True)
        self.log("train/empty_batches", float(self._empty_steps), on_step=True, on_epoch=False)  # type: ignore[attr-defined]
        super().on_before_optimizer_step(optimizer)  # type: ignore[misc]

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        """Step the scheduler unless the optimizer step was skipped for having no pair."""
        if not self._skip_scheduler:
            super().lr_scheduler_step(scheduler, metric)  # type: ignore[misc]
