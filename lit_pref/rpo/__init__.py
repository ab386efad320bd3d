"""Rich Preference Optimization's data side: critique, edit, relabel and curate preference pairs (METHODS.md §3)."""

from lit_pref.rpo.critic import Critic, Critique, VLMCritic
from lit_pref.rpo.editor import Editor, Img2ImgEditor, InpaintEditor, InstructPix2PixEditor
from lit_pref.rpo.synthesizer import PairSynthesizer, SynthesisStats, read_stats, resolve_prompts
from lit_pref.rpo.toy import ToyCritic, ToyEditor

__all__ = [
    "Critic", "Critique", "Editor", "Img2ImgEditor", "InpaintEditor", "InstructPix2PixEditor", "PairSynthesizer",
    "SynthesisStats", "ToyCritic", "ToyEditor", "VLMCritic", "read_stats", "resolve_prompts",
]
