"""Lightning callbacks: LoRA export, sample grids, prediction writing, reward metrics, win rates, encoding cache,
the TensorBoard layout, the end-of-run summary and the progress bar."""

from lit_pref.callbacks.encoding_cache import EncodingCache
from lit_pref.callbacks.image_writer import ImageWriter
from lit_pref.callbacks.lora_export import LoRAExport
from lit_pref.callbacks.progress import StepProgressBar
from lit_pref.callbacks.reward_metrics import RewardMetrics, WinRate
from lit_pref.callbacks.run_summary import RunSummary
from lit_pref.callbacks.sample_grid import SampleGrid
from lit_pref.callbacks.tensorboard_layout import TensorBoardLayout

__all__ = ["EncodingCache", "ImageWriter", "LoRAExport", "RewardMetrics", "RunSummary", "SampleGrid",
           "StepProgressBar", "TensorBoardLayout", "WinRate"]
