"""Data modules of lit_pref: preference pairs, synthetic pairs and prompt lists."""

from .preference_pairs import BadRowError, PreferencePairDataModule, PreferencePairDataset, collate_pairs
from .prompts import PromptDataModule
from .synthetic import SyntheticPreferenceDataModule, draw_shape, make_synthetic_pairs

__all__ = [
    "BadRowError",
    "PreferencePairDataModule",
    "PreferencePairDataset",
    "PromptDataModule",
    "SyntheticPreferenceDataModule",
    "collate_pairs",
    "draw_shape",
    "make_synthetic_pairs",
]
