"""Rich Preference Optimization's data side: critique, edit, relabel and curate preference pairs (docs/methods.md §3).

The toy world's offline critic and editor are :class:`lit_pref.toy.ToyCritic` and :class:`lit_pref.toy.ToyEditor`."""

from lit_pref.formats.rich_pairs import SynthesisStats, read_stats
from lit_pref.rpo.chain import EditorChain
from lit_pref.rpo.controlnet import CannyEdges, ConditionExtractor, ControlNetEditor, DepthMap
from lit_pref.rpo.critic import ISSUE_KINDS, Box, Critic, Critique, VLMCritic
from lit_pref.rpo.editor import Edit, Editor, Img2ImgEditor, InpaintEditor, InstructPix2PixEditor
from lit_pref.rpo.grounding import parse_grounding
from lit_pref.rpo.synthesizer import PairSynthesizer, resolve_prompts

__all__ = [
    "Box", "CannyEdges", "ConditionExtractor", "ControlNetEditor", "Critic", "Critique", "DepthMap", "Edit", "Editor",
    "EditorChain", "ISSUE_KINDS", "Img2ImgEditor", "InpaintEditor", "InstructPix2PixEditor", "PairSynthesizer",
    "SynthesisStats", "VLMCritic", "parse_grounding", "read_stats", "resolve_prompts",
]
