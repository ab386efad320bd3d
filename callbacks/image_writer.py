"""Write the images of ``predict`` to PNG files, with a JSONL manifest of prompts and seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torchvision.utils import save_image

from lit_pref.io import atomic_file


class ImageWriter(BasePredictionWriter):
    """Save each predicted image as ``<output_dir>/<index>.png`` (index = position in the prompt list, zero
    padded) and append ``{"index", "prompt", "seed", "file"}`` to ``manifest.jsonl`` (``manifest-rank<r>.jsonl``
    with several processes).
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        """
        Args:
            output_dir: Folder for the images and the manifest; created if missing.
        """
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        name = "manifest.jsonl" if trainer.world_size == 1 else f"manifest-rank{trainer.global_rank}.jsonl"
        with open(self.output_dir / name, "a") as manifest:
            for image, prompt, seed, index in zip(
                prediction["images"], prediction["prompts"], prediction["seeds"], prediction["indices"]
            ):
                file = f"{int(index):06d}.png"
                with atomic_file(self.output_dir / file) as tmp:
                    save_image(image, tmp, format="png")
                manifest.write(json.dumps({"index": int(index), "prompt": prompt, "seed": int(seed), "file": file}) + "\n")
