"""The UNet's text conditioning as a dict of keyword arguments, and its batch operations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Conditioning = dict  # keyword arguments of the UNet: encoder_hidden_states [+ added_cond_kwargs for SDXL]


def repeat_conditioning(cond: Conditioning, repeats: int) -> Conditioning:
    """Repeat every tensor of a conditioning ``repeats`` times along the batch (``[a, b] -> [a, b, a, b]``)."""
    out = {"encoder_hidden_states": cond["encoder_hidden_states"].repeat(repeats, 1, 1)}
    if "added_cond_kwargs" in cond:
        out["added_cond_kwargs"] = {k: v.repeat(repeats, 1) for k, v in cond["added_cond_kwargs"].items()}
    return out


def select_conditioning(cond: Conditioning, index: Tensor) -> Conditioning:
    """The rows ``index`` (a 1-d index tensor) of a conditioning."""
    out = {"encoder_hidden_states": cond["encoder_hidden_states"][index]}
    if "added_cond_kwargs" in cond:
        out["added_cond_kwargs"] = {k: v[index] for k, v in cond["added_cond_kwargs"].items()}
    return out


def cat_conditioning(conds: Sequence[Conditioning]) -> Conditioning:
    """Concatenate conditionings along the batch."""
    out = {"encoder_hidden_states": torch.cat([c["encoder_hidden_states"] for c in conds])}
    if "added_cond_kwargs" in conds[0]:
        keys = conds[0]["added_cond_kwargs"]
        out["added_cond_kwargs"] = {k: torch.cat([c["added_cond_kwargs"][k] for c in conds]) for k in keys}
    return out
