"""Per-prompt reward normalisation for policy-gradient advantages (ddpo-pytorch's ``PerPromptStatTracker``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import torch
from torch import Tensor


class PerPromptStatTracker:
    """Advantages ``(R - mean) / (std + 1e-6)`` from a per-prompt buffer of recent rewards (docs/methods.md §4).

    The semantics of kvablack/ddpo-pytorch's ``stat_tracking.py``: for each prompt of a batch its rewards are
    first appended to the prompt's FIFO buffer (the last ``buffer_size`` rewards); if the buffer then holds at
    least ``min_count`` rewards, mean and std are those of the buffer, otherwise those of the whole batch (all
    prompts). Std is the population std (``ddof = 0``). The advantage clamp belongs to the loss
    (:func:`lit_pref.losses.ppo.ppo_clip_loss`).
    """

    def __init__(self, buffer_size: int = 16, min_count: int = 16) -> None:
        """
        Args:
            buffer_size: Rewards kept per prompt (ddpo: 16).
            min_count: Rewards a prompt's buffer needs before its own statistics replace the batch's (ddpo: 16).
        """
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size} and {min_count}")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffers: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: Tensor) -> Tensor:
        """Add the batch's rewards to the buffers and return their advantages.

        Args:
            prompts: N prompts, one per reward (repeated for the K samples of a prompt).
            rewards: (N,) rewards.

        Returns:
            (N,) float32 advantages on ``rewards``' device.
        """
        if rewards.ndim != 1 or len(prompts) != rewards.shape[0]:
            raise ValueError(f"expected (N,) rewards and N prompts, got {tuple(rewards.shape)} and {len(prompts)}")
        values = rewards.detach().double().cpu()
        batch_mean, batch_std = values.mean(), values.std(unbiased=False)
        advantages = torch.empty_like(values)
        for prompt in dict.fromkeys(prompts):  # unique, in order
            rows = torch.tensor([p == prompt for p in prompts])
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(values[rows].tolist())
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                held = torch.tensor(list(buffer), dtype=torch.float64)
                mean, std = held.mean(), held.std(unbiased=False)
            advantages[rows] = (values[rows] - mean) / (std + 1e-6)
        return advantages.float().to(rewards.device)

    def stats(self) -> dict[str, dict[str, float]]:
        """Per prompt: ``mean``, ``std`` (population) and ``count`` of its buffer."""
        out = {}
        for prompt, buffer in self.buffers.items():
            held = torch.tensor(list(buffer), dtype=torch.float64)
            out[prompt] = {"mean": held.mean().item(), "std": held.std(unbiased=False).item(), "count": len(buffer)}
        return out
