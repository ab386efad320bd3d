"""Lightning callbacks: LoRA export, sample grids, prediction writing, reward metrics, win rates, encoding cache."""

from callbacks.encoding_cache import EncodingCache
from callbacks.image_writer import ImageWriter
from callbacks.lora_export import LoRAExport
from callbacks.reward_metrics import RewardMetrics, WinRate
from callbacks.sample_grid import SampleGrid

__all__ = ["EncodingCache", "ImageWriter", "LoRAExport", "RewardMetrics", "SampleGrid", "WinRate"]
