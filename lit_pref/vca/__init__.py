"""VCA (Visual Co-Adaptation) dialogues: prompt refiners, simulated users, toy dialogues and the interactive tool."""

from lit_pref.vca.refiner import CausalLMRefiner, PromptRefiner, TemplateRefiner, toy_edits
from lit_pref.vca.user import SimulatedUser, ToySimulatedUser, make_toy_dialogues, play_dialogue, toy_start

__all__ = [
    "CausalLMRefiner", "PromptRefiner", "SimulatedUser", "TemplateRefiner", "ToySimulatedUser",
    "make_toy_dialogues", "play_dialogue", "toy_edits", "toy_start",
]
