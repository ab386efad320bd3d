"""The Bradley-Terry loss of a reward model on preference pairs (the "DPO-trained" reward model, docs/methods.md §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(scores_w: Tensor, scores_l: Tensor, beta: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """``mean_batch( -logsigmoid(beta * (s_w - s_l)) )``: a mean of per-pair losses.

    Args:
        scores_w: (B,) the reward model's scores of the preferred images.
        scores_l: (B,) its scores of the rejected images.
        beta: Scale of the score difference (> 0).

    Returns:
        The scalar loss and detached statistics: ``accuracy`` (fraction of pairs with s_w > s_l, equal scores
        counting 0.5) and ``margin`` (mean of s_w - s_l).
    """
    if scores_w.ndim != 1 or scores_w.shape != scores_l.shape:
        raise ValueError(f"expected two (B,) score tensors, got {tuple(scores_w.shape)} and {tuple(scores_l.shape)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    diff = scores_w - scores_l
    loss = -F.logsigmoid(float(beta) * diff).mean()
    with torch.no_grad():
        stats = {"accuracy": ((diff > 0).float() + 0.5 * (diff == 0).float()).mean(), "margin": diff.mean()}
    return loss, stats
