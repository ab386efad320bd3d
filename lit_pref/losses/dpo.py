"""The Diffusion-DPO objective (Wallace et al. 2023) on per-sample denoising errors; docs/methods.md §1."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossType = Literal["sigmoid", "hinge", "ipo"]
LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def check_dpo_settings(beta: float, loss_type: str) -> None:
    """Raise ``ValueError`` naming the argument unless ``beta`` is finite and > 0 and ``loss_type`` is known.

    beta = 0 trains nothing (and divides by zero in ``ipo``); beta < 0 trains toward the losers while
    ``implicit_acc`` reads as if the winners were learnt.
    """
    if isinstance(beta, bool) or not (math.isfinite(float(beta)) and float(beta) > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(map(repr, LOSS_TYPES))}, got {loss_type!r}")


def diffusion_dpo_loss(
    model_err_w: Tensor,
    model_err_l: Tensor,
    ref_err_w: Tensor,
    ref_err_l: Tensor,
    beta: float = 5000.0,
    loss_type: LossType = "sigmoid",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Diffusion-DPO loss from the per-sample MSEs of policy and reference on winner and loser.

    With ``logits = (r_w - r_l) - (e_w - e_l)`` and ``beta' = beta / 2`` (so ``inside = beta' * logits =
    -0.5 * beta * ((e_w - e_l) - (r_w - r_l))``):

    * ``sigmoid``: ``-logsigmoid(inside)`` (the paper's loss),
    * ``hinge``: ``relu(1 - inside)``,
    * ``ipo``: ``(logits - 1 / (2 * beta'))**2``,

    each averaged over the batch: a mean of per-pair losses, never a loss of batch means. The diffusers
    SD script writes the same sigmoid loss with ``beta' = 2500`` and no 0.5: pass ``beta = 2 * beta'``.

    Args:
        model_err_w: (B,) mean squared error of the policy on the winners (mean over C x H x W).
        model_err_l: (B,) the same on the losers.
        ref_err_w: (B,) mean squared error of the reference model on the winners (no gradient needed).
        ref_err_l: (B,) the same on the losers.
        beta: KL-regularisation strength of the paper (default 5000; finite, > 0).
        loss_type: ``"sigmoid"``, ``"hinge"`` or ``"ipo"``.

    Returns:
        The scalar loss and detached statistics: ``implicit_acc`` (fraction of pairs with inside > 0, ties
        of inside counting 0.5), ``margin`` (mean of inside, the implicit reward margin), ``model_mse`` and
        ``ref_mse`` (mean over winners and losers).
    """
    errors = (model_err_w, model_err_l, ref_err_w, ref_err_l)
    if any(e.ndim != 1 or e.shape != model_err_w.shape for e in errors):
        raise ValueError(f"expected four 1-D tensors of per-sample errors of one shape, got {[tuple(e.shape) for e in errors]}")
    check_dpo_settings(beta, loss_type)
    logits = (ref_err_w - ref_err_l) - (model_err_w - model_err_l)
    beta_half = float(beta) / 2.0
    inside = beta_half * logits
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(inside)
    elif loss_type == "hinge":
        losses = torch.relu(1.0 - inside)
    else:  # ipo
        losses = (logits - 1.0 / (2.0 * beta_half)) ** 2
    with torch.no_grad():
        stats = {
            "implicit_acc": ((inside > 0).float() + 0.5 * (inside == 0).float()).mean(),
            "margin": inside.mean(),
            "model_mse": torch.cat([model_err_w, model_err_l]).mean(),
            "ref_mse": torch.cat([ref_err_w, ref_err_l]).mean(),
        }
    return losses.mean(), stats
