"""Simulated users for VCA dialogues: the :class:`SimulatedUser` interface and :func:`play_dialogue`, which plays one
dialogue between a user, an image generator and a refiner. The toy world's user is
:class:`lit_pref.toy.ToySimulatedUser`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

from torch import Tensor

from lit_pref.formats.dialogues import Turn
from lit_pref.vca.refiner import PromptRefiner

__all__ = ["SimulatedUser", "play_dialogue"]


class SimulatedUser(ABC):
    """A stand-in for the person in a VCA dialogue: picks images, writes feedback, says when it is done."""

    @abstractmethod
    def choose(self, images: Tensor, prompt: str) -> int:
        """Index of the preferred image among ``images`` ``[K, 3, H, W]`` in ``[0, 1]`` generated from ``prompt``."""

    @abstractmethod
    def feedback(self, image: Tensor, prompt: str) -> str:
        """Feedback on ``image`` ``[3, H, W]`` in ``[0, 1]`` (generated from ``prompt``) asking for what to change."""

    @abstractmethod
    def satisfied(self, image: Tensor) -> bool:
        """Whether ``image`` ``[3, H, W]`` in ``[0, 1]`` is what the user wants."""

    def satisfaction(self, image: Tensor) -> float:
        """The user's satisfaction with ``image`` in ``[0, 1]``; by default 1 when :meth:`satisfied`, else 0."""
        return 1.0 if self.satisfied(image) else 0.0


def play_dialogue(
    generate: Callable[[str, int], Tensor],
    user: SimulatedUser,
    refiner: PromptRefiner,
    initial_prompt: str,
    rounds: int,
) -> tuple[list[Turn], list[Tensor]]:
    """Plays one dialogue: each round ``generate(P_t, t)`` gives images ``[K, 3, H, W]``, the user chooses one and
    writes feedback, the refiner makes ``P_{t+1}``; it stops after the round whose chosen image satisfies the user,
    or after ``rounds`` rounds (``P_1 = initial_prompt``).

    Returns:
        The turns (``prompt``, ``user_feedback``, ``chosen``, ``satisfaction``; no image paths) and each round's
        images.
    """
    turns: list[Turn] = []
    shown: list[Tensor] = []
    prompt = initial_prompt
    for t in range(1, rounds + 1):
        images = generate(prompt, t)
        k = user.choose(images, prompt)
        feedback = user.feedback(images[k], prompt)
        turns.append(Turn(round=t, user_feedback=feedback, prompt=prompt, chosen=k,
                          satisfaction=user.satisfaction(images[k])))
        shown.append(images)
        if user.satisfied(images[k]):
            break
        prompt = refiner.refine(prompt, feedback, turns)
    return turns, shown
