"""Who plays the user of a training dialogue: a factory from a recorded dialogue to a simulated user.

VCA-PPO trains on dialogues played live: the dialogue file gives each dialogue's initial prompt and what its user
wants; the policy generates the images, and a :class:`~lit_pref.vca.user.SimulatedUser` chooses among them and
writes the feedback. For real prompts, :class:`ScorerDialogueUsers` makes :class:`ScorerUser` s, who choose by any
:class:`~lit_pref.rewards.Scorer` against the dialogue's last prompt. The toy world's users are
:class:`lit_pref.toy.ToyDialogueUsers`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import Tensor

from lit_pref.formats.dialogues import Dialogue
from lit_pref.rewards.base import Scorer
from lit_pref.vca.refiner import CausalLMRefiner
from lit_pref.vca.user import SimulatedUser


class DialogueUsers(ABC):
    """Makes the simulated user of a dialogue."""

    @abstractmethod
    def __call__(self, dialogue: Dialogue) -> SimulatedUser:
        """A fresh simulated user who wants what ``dialogue``'s user wanted."""


class ScorerUser(SimulatedUser):
    """A simulated user for real prompts: chooses by a :class:`~lit_pref.rewards.Scorer` against its goal.

    - ``choose``: the image with the highest ``scorer`` score against ``goal`` (ties: the lowest index).
    - ``feedback``: with ``feedback_model`` (a :class:`~lit_pref.vca.refiner.CausalLMRefiner`, used only for its
      chat model), the model's first reply line to :attr:`FEEDBACK_PROMPT` filled with the goal and the prompt of the
      shown image (the chat model reads text, not the image); otherwise the recorded feedback of the same round (the
      ``n``-th call returns ``recorded_feedback[n]``; ``""`` once they run out).
    - ``satisfied``: the score reaches ``threshold`` (never with ``threshold=None``).

    Args:
        scorer: Any scorer: the dialogue reward model (``RewardModelScorer``), ImageReward, CLIP score, ...
        goal: The text the user's images are scored against (e.g. the dialogue's last prompt).
        recorded_feedback: The dialogue's recorded feedback, one per round.
        feedback_model: A chat model to write feedback instead of replaying it.
        threshold: Score at which the user is satisfied.
    """

    FEEDBACK_PROMPT = ("You want an image of: {goal}\nThe image you were shown was made from the prompt: {prompt}\n"
                       "In one short sentence, tell the artist what to change. Reply with the sentence only.")

    def __init__(self, scorer: Scorer, goal: str, recorded_feedback: Sequence[str] = (),
                 feedback_model: CausalLMRefiner | None = None, threshold: float | None = None) -> None:
        self.scorer = scorer
        self.goal = goal
        self.recorded_feedback = list(recorded_feedback)
        self.feedback_model = feedback_model
        self.threshold = threshold
        self.rounds_given = 0

    def choose(self, images: Tensor, prompt: str = "") -> int:
        if images.ndim != 4 or images.shape[0] < 1:
            raise ValueError(f"expected images [K, 3, H, W] with K >= 1, got shape {tuple(images.shape)}")
        return int(torch.argmax(self.scorer.score(images, [self.goal] * images.shape[0])).item())

    def feedback(self, image: Tensor, prompt: str = "") -> str:
        n, self.rounds_given = self.rounds_given, self.rounds_given + 1
        if self.feedback_model is not None:
            question = self.FEEDBACK_PROMPT.format(goal=self.goal, prompt=prompt)
            return CausalLMRefiner.clean(self.feedback_model.reply([{"role": "user", "content": question}]))
        return self.recorded_feedback[n] if n < len(self.recorded_feedback) else ""

    def satisfied(self, image: Tensor) -> bool:
        if self.threshold is None:
            return False
        return float(self.scorer.score(image[None], [self.goal])[0]) >= self.threshold


class ScorerDialogueUsers(DialogueUsers):
    """A :class:`ScorerUser` per recorded dialogue, whose goal is the dialogue's last prompt (what the person's
    refined prompt converged to; ``initial_prompt`` when no turn recorded one) and whose feedback replays the
    dialogue's (or comes from ``feedback_model``).

    Args:
        scorer: The scorer the users choose by.
        feedback_model: A chat model that writes the feedback; ``None`` replays the recorded feedback.
        threshold: Score at which a user is satisfied; ``None``: never (rounds-to-target is then ``num_rounds + 1``).
    """

    def __init__(self, scorer: Scorer, feedback_model: CausalLMRefiner | None = None,
                 threshold: float | None = None) -> None:
        self.scorer = scorer
        self.feedback_model = feedback_model
        self.threshold = threshold

    def __call__(self, dialogue: Dialogue) -> ScorerUser:
        goal = next((t.prompt for t in reversed(dialogue.turns) if t.prompt is not None), dialogue.initial_prompt)
        return ScorerUser(self.scorer, goal, [t.user_feedback for t in dialogue.turns], self.feedback_model,
                          self.threshold)
