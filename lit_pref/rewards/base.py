"""The interface of image scorers (rewards, judges of preference)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from torch import Tensor

__all__ = ["Scorer"]


class Scorer(ABC):
    """Scores images against their prompts; higher is better.

    Scorers live outside LightningModules: they are passed to callbacks (and
    labellers), never trained with the model, and hold no optimiser state.
    :meth:`score` runs without gradients unless a subclass says otherwise.
    """

    @abstractmethod
    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Scores a batch.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``.
            prompts: ``B`` prompts, one per image.

        Returns:
            Float tensor ``[B]`` on the images' device.
        """

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Same as :meth:`score`."""
        return self.score(images, prompts)
