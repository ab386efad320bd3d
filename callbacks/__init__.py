"""Lightning callbacks: LoRA export, sample grids, prediction writing, reward metrics, win rates, encoding cache,
the TensorBoard layout and the end-of-run summary."""

from callbacks.encoding_cache import EncodingCache
from callbacks.image_writer import ImageWriter
from callbacks.lora_export import LoRAExport
from callbacks.reward_metrics import RewardMetrics, WinRate
from callbacks.run_summary import RunSummary
from callbacks.sample_grid import SampleGrid
from callbacks.tensorboard_layout import TensorBoardLayout

__all__ = ["EncodingCache", "ImageWriter", "LoRAExport", "RewardMetrics", "RunSummary", "SampleGrid",
           "TensorBoardLayout", "WinRate"]
