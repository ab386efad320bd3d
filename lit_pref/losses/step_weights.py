"""Which steps a loss trains on: step weightings as injectable components, and training-timestep ranges.

A step weighting maps the chain length N to N probabilities, k = 0 the first (noisiest) step. The online
trajectory module draws the K steps of each comparison from them; the offline pair module, on the
``"inference"`` timestep grid, draws each pair's timestep from them (docs/methods.md §1-§2). On the ``"train"``
grid a timestep range narrows the draws to a band of the training timesteps (:func:`timestep_bounds`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from lit_pref.losses.dense import discount_weights


class StepWeights(ABC):
    """Interface: ``weights(num_steps)`` is a (num_steps,) tensor of non-negative numbers summing to 1."""

    @abstractmethod
    def __call__(self, num_steps: int) -> Tensor:
        """The probability of each step k of an ``num_steps``-step chain, k = 0 the noisiest."""


class UniformSteps(StepWeights):
    """Every step alike, ``1 / N``: one reward for the whole chain (trajectory-level DPO, Diffusion-DPO)."""

    def __call__(self, num_steps: int) -> Tensor:
        return torch.full((num_steps,), 1.0 / num_steps)

    def __repr__(self) -> str:
        return "UniformSteps()"


class DiscountedSteps(StepWeights):
    """The dense reward view's temporal discount (Yang, Chen & Zhou 2024): ``gamma^k / sum_j gamma^j``."""

    def __init__(self, gamma: float = 0.9) -> None:
        """
        Args:
            gamma: Temporal discount in (0, 1] (paper: 0.9); 1 = uniform, near 0 almost all the weight on the
                first step.

        Raises:
            ValueError: ``gamma`` outside (0, 1].
        """
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.gamma = gamma

    def __call__(self, num_steps: int) -> Tensor:
        return discount_weights(num_steps, self.gamma)

    def __repr__(self) -> str:
        return f"DiscountedSteps(gamma={self.gamma})"


def check_timestep_range(timestep_range: tuple[float, float]) -> tuple[float, float]:
    """``timestep_range`` as floats ``(low, high)``: fractions of the training timesteps, ``0 <= low < high <= 1``
    (``(0.6, 1.0)``: the noisiest 40%). Raises ``ValueError`` otherwise."""
    low, high = timestep_range
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"timestep_range must satisfy 0 <= low < high <= 1, got {tuple(timestep_range)}")
    return float(low), float(high)


def timestep_bounds(timestep_range: tuple[float, float], num_train_timesteps: int) -> tuple[int, int]:
    """The training timesteps ``[low, high)`` the fractions ``timestep_range`` select of ``num_train_timesteps``:
    ``round(low * T)`` to ``round(high * T) - 1``. Raises ``ValueError`` if that holds no timestep."""
    low, high = (round(f * num_train_timesteps) for f in check_timestep_range(timestep_range))
    if high <= low:
        raise ValueError(f"timestep_range {tuple(timestep_range)} holds no timestep of {num_train_timesteps}")
    return low, high
