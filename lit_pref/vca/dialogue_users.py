"""Who plays the user of a training dialogue: a factory from a recorded dialogue to a simulated user.

VCA-PPO trains on dialogues played live: the dialogue file gives each dialogue's initial prompt and what its user
wants; the policy generates the images, and a :class:`~lit_pref.vca.user.SimulatedUser` chooses among them and
writes the feedback. For the toy world the user's hidden target is recovered from the recorded dialogue
(:func:`toy_target`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from datamodules.dialogues import Dialogue
from datamodules.toy import parse_caption
from lit_pref.vca.refiner import PromptRefiner, TemplateRefiner
from lit_pref.vca.user import SimulatedUser, ToySimulatedUser


class DialogueUsers(ABC):
    """Makes the simulated user of a dialogue."""

    @abstractmethod
    def __call__(self, dialogue: Dialogue) -> SimulatedUser:
        """A fresh simulated user who wants what ``dialogue``'s user wanted."""


def toy_target(dialogue: Dialogue, refiner: PromptRefiner | None = None) -> str:
    """The toy caption a recorded toy dialogue converges to: its initial prompt with every turn's feedback applied
    in order by the template refiner (``P_{t+1} = refine(P_t, feedback_t)``, the last turn's feedback included).

    For dialogues written by :func:`lit_pref.vca.make_toy_dialogues` this is the hidden target caption whenever the
    user asked for all its attribute changes within the recorded rounds (the generator's defaults ensure it).

    Raises:
        ValueError: naming the dialogue when the result is not a toy caption.
    """
    refiner = refiner or TemplateRefiner()
    prompt = dialogue.initial_prompt
    for i, turn in enumerate(dialogue.turns):
        prompt = refiner.refine(prompt, turn.user_feedback, dialogue.turns[: i + 1])
    if parse_caption(prompt) is None:
        raise ValueError(f"dialogue {dialogue.dialogue_id!r}: its feedback does not lead to a toy caption "
                         f"(got {prompt!r}); toy users need toy dialogues (lit_pref.vca.make_toy_dialogues)")
    return prompt


class ToyDialogueUsers(DialogueUsers):
    """Toy-world users: a :class:`~lit_pref.vca.user.ToySimulatedUser` whose target is :func:`toy_target`."""

    def __init__(self, min_centredness: float = 0.8) -> None:
        """
        Args:
            min_centredness: Centredness the user needs to be satisfied (see ``ToySimulatedUser``).
        """
        self.min_centredness = min_centredness

    def __call__(self, dialogue: Dialogue) -> ToySimulatedUser:
        return ToySimulatedUser(toy_target(dialogue), self.min_centredness)
