"""Data modules of lit_pref: preference pairs (files, synthetic, rich pairs), prompt lists and dialogues.

They read the file formats of :mod:`lit_pref.formats` (re-exported here: the dialogue reader and writer); the toy
world's data modules are in :mod:`lit_pref.toy`.
"""

from lit_pref.formats.dialogues import Dialogue, DialogueFormatError, Turn, append_dialogue, read_dialogues

from .dialogues import DialogueDataModule
from .pair_batches import collate_pairs
from .pair_datamodule import PreferencePairDataModule
from .pair_rows import BadRowError
from .preference_pairs import PreferencePairDataset
from .prompts import PromptDataModule
from .resumable import EpochSampler, ResumableLoader
from .rich_pairs import RichPreferenceDataModule
from .synthetic import SyntheticPreferenceDataModule, draw_shape, make_synthetic_pairs

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
]
