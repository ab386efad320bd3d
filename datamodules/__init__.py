"""Data modules of lit_pref: preference pairs (files, synthetic, toy world), toy images, prompt lists and dialogues."""

from .dialogues import Dialogue, DialogueDataModule, DialogueFormatError, Turn, append_dialogue, read_dialogues
from .pair_batches import collate_pairs
from .pair_datamodule import PreferencePairDataModule
from .pair_rows import BadRowError
from .preference_pairs import PreferencePairDataset
from .prompts import PromptDataModule
from .resumable import EpochSampler, ResumableLoader
from .rich_pairs import RichPreferenceDataModule
from .synthetic import SyntheticPreferenceDataModule, draw_shape, make_synthetic_pairs
from .toy import HELDOUT_COMBOS, Scene, ToyImageDataModule, ToyImageDataset, parse_caption, render, sample_scene
from .toy import caption as toy_caption
from .toy import prompts as toy_prompts  # not `prompts`: that would shadow the submodule lit_pref.datamodules.prompts
from .toy_pairs import ToyPreferenceDataModule

__all__ = [
    "Dialogue",
    "DialogueDataModule",
    "DialogueFormatError",
    "Turn",
    "append_dialogue",
    "read_dialogues",
    "BadRowError",
    "EpochSampler",
    "PreferencePairDataModule",
    "PreferencePairDataset",
    "PromptDataModule",
    "ResumableLoader",
    "RichPreferenceDataModule",
    "SyntheticPreferenceDataModule",
    "collate_pairs",
    "draw_shape",
    "make_synthetic_pairs",
    "HELDOUT_COMBOS",
    "Scene",
    "ToyImageDataModule",
    "ToyImageDataset",
    "parse_caption",
    "render",
    "sample_scene",
    "toy_caption",
    "toy_prompts",
    "ToyPreferenceDataModule",
]
