"""Lightning callbacks: LoRA export, sample grids, prediction writing, reward metrics and win rates."""

from callbacks.image_writer import ImageWriter
from callbacks.lora_export import LoRAExport
from callbacks.reward_metrics import RewardMetrics, WinRate
from callbacks.sample_grid import SampleGrid

__all__ = ["ImageWriter", "LoRAExport", "RewardMetrics", "SampleGrid", "WinRate"]
