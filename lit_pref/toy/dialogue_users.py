"""The toy world's dialogue users: VCA-PPO plays toy dialogues live with a :class:`~lit_pref.toy.ToySimulatedUser`
whose hidden target is recovered from the recorded dialogue (:func:`toy_target`)."""

from __future__ import annotations

from lit_pref.formats.dialogues import Dialogue
from lit_pref.toy.refiner import ToyRefiner
from lit_pref.toy.user import ToySimulatedUser
from lit_pref.toy.world import parse_caption
from lit_pref.vca.dialogue_users import DialogueUsers
from lit_pref.vca.refiner import PromptRefiner

__all__ = ["ToyDialogueUsers", "toy_target"]


def toy_target(dialogue: Dialogue, refiner: PromptRefiner | None = None) -> str:
    """The toy caption a recorded toy dialogue converges to: its initial prompt with every turn's feedback applied
    in order by the toy refiner (``P_{t+1} = refine(P_t, feedback_t)``, the last turn's feedback included).

    For dialogues written by :func:`lit_pref.toy.make_toy_dialogues` this is the hidden target caption whenever the
    user asked for all its attribute changes within the recorded rounds (the generator's defaults ensure it).

    Raises:
        ValueError: naming the dialogue when the result is not a toy caption.
    """
    refiner = refiner or ToyRefiner()
    prompt = dialogue.initial_prompt
    for i, turn in enumerate(dialogue.turns):
        prompt = refiner.refine(prompt, turn.user_feedback, dialogue.turns[: i + 1])
    if parse_caption(prompt) is None:
        raise ValueError(f"dialogue {dialogue.dialogue_id!r}: its feedback does not lead to a toy caption "
                         f"(got {prompt!r}); toy users need toy dialogues (lit_pref.toy.make_toy_dialogues)")
    return prompt


class ToyDialogueUsers(DialogueUsers):
    """Toy-world users: a :class:`~lit_pref.toy.ToySimulatedUser` whose target is :func:`toy_target`."""

    def __init__(self, min_centredness: float = 0.8) -> None:
        """
        Args:
            min_centredness: Centredness the user needs to be satisfied (see ``ToySimulatedUser``).
        """
        self.min_centredness = min_centredness

    def __call__(self, dialogue: Dialogue) -> ToySimulatedUser:
        return ToySimulatedUser(toy_target(dialogue), self.min_centredness)
