"""VCA (Visual Co-Adaptation) dialogues: prompt refiners, simulated users and the interactive tool (the toy world's
users, refiner and dialogues are in :mod:`lit_pref.toy`)."""

from lit_pref.vca.refiner import CausalLMRefiner, PromptRefiner, TemplateRefiner
from lit_pref.vca.user import SimulatedUser, play_dialogue

__all__ = ["CausalLMRefiner", "PromptRefiner", "SimulatedUser", "TemplateRefiner", "play_dialogue"]
