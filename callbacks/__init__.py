"""Lightning callbacks: LoRA export, sample grids, prediction writing (and, later, reward metrics)."""

from callbacks.image_writer import ImageWriter
from callbacks.lora_export import LoRAExport
from callbacks.sample_grid import SampleGrid

__all__ = ["ImageWriter", "LoRAExport", "SampleGrid"]
