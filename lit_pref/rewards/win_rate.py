"""Win rate of A over B with a bootstrap confidence interval over prompts (docs/methods.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class WinRate:
    """``rate = (wins + ties / 2) / n`` and its bootstrap interval ``[low, high]``."""

    rate: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


def win_rate(
    scores_a: Tensor,
    scores_b: Tensor,
    groups: Sequence[str] | None = None,
    num_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Win rate of A over B on paired samples (same prompt, same initial noise): win if ``s_A > s_B``, a tie
    counts one half. The interval is a percentile bootstrap that resamples whole groups (prompts) with
    replacement, since samples of one prompt are not independent.

    Args:
        scores_a: (N,) scores of A.
        scores_b: (N,) scores of B on the same prompts and noise.
        groups: N group labels (the prompts); ``None`` = every sample its own group.
        num_bootstrap: Bootstrap resamples.
        confidence: Coverage of the interval.
        seed: Seed of the resampling.
    """
    a, b = scores_a.detach().double().cpu().flatten(), scores_b.detach().double().cpu().flatten()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"need two non-empty score vectors of one length, got {tuple(a.shape)} and {tuple(b.shape)}")
    outcome = (a > b).double() + 0.5 * (a == b).double()
    labels = list(range(len(a))) if groups is None else list(groups)
    if len(labels) != len(a):
        raise ValueError(f"{len(labels)} group labels for {len(a)} scores")
    index = {g: i for i, g in enumerate(dict.fromkeys(labels))}
    group = torch.tensor([index[g] for g in labels])
    num_groups = len(index)
    group_sum = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, outcome)
    group_n = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group, torch.ones_like(outcome))
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, num_groups, (num_bootstrap, num_groups), generator=generator)
    rates = group_sum[picks].sum(1) / group_n[picks].sum(1)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(rates, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    wins, ties = int((a > b).sum()), int((a == b).sum())
    return WinRate(outcome.mean().item(), low, high, wins, ties, len(a) - wins - ties)
