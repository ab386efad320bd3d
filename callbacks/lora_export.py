"""Export the LoRA adapters in the diffusers format at the end of fit (and the best checkpoint's)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lit_pref.checkpointing import trainable_state_dict
from lit_pref.strategies import full_parameters


class LoRAExport(Callback):
    """Write ``<dirpath>/lora`` (final weights) and, with ``export_best``, ``<dirpath>/lora_best``.

    Each folder holds ``pytorch_lora_weights.safetensors``, which stock diffusers loads with
    ``pipeline.load_lora_weights(folder)``. Folders are written atomically, by rank 0, with the full weights under
    DeepSpeed ZeRO-3 too; the best checkpoint may be a file or a DeepSpeed folder.
    """

    def __init__(self, dirpath: str | None = None, export_best: bool = False) -> None:
        """
        Args:
            dirpath: Folder to export into; ``None`` = the run's log folder (``trainer.log_dir``).
            export_best: Also export the LoRA of the best checkpoint of the ``ModelCheckpoint`` callback
                (by its ``monitor``) as ``lora_best``.
        """
        self.dirpath = dirpath
        self.export_best = export_best

    def _root(self, trainer: Trainer) -> Path:
        return Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        root = self._root(trainer)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.export_best else ""
        with full_parameters(trainer.strategy, pl_module.backbone.lora_parameters()):
            if trainer.is_global_zero:
                pl_module.backbone.save_lora(root / "lora")
                rank_zero_info(f"LoRA exported to {root / 'lora'}")
                if best:
                    self._export_checkpoint(pl_module, best, root / "lora_best")
                    rank_zero_info(f"LoRA of the best checkpoint ({best}) exported to {root / 'lora_best'}")
        trainer.strategy.barrier("lora_export")

    @staticmethod
    def _export_checkpoint(pl_module: LightningModule, checkpoint_path: str, directory: Path) -> None:
        """Load the checkpoint's trainable weights into the module, export them, and restore the current ones."""
        current = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        state = trainable_state_dict(checkpoint_path)
        with torch.no_grad():
            params = dict(pl_module.named_parameters())
            for name in current:
                params[name].copy_(state[name])
            pl_module.backbone.save_lora(directory)
            for name, value in current.items():
                params[name].copy_(value)
