"""What the distributed strategies need from lit_pref: atomic DeepSpeed checkpoint folders, full ZeRO-3 weights."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import DeepSpeedStrategy as LightningDeepSpeedStrategy
from lightning.pytorch.strategies import Strategy
from torch import nn

from lit_pref.checkpointing import deepspeed_weights_only
from lit_pref.io import atomic_dir


class DeepSpeedStrategy(LightningDeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` (same arguments), with checkpoint folders written atomically and ZeRO-3
    made to work with the CLIP text encoders.

    DeepSpeed writes a checkpoint as a folder of per-process files, in place: a run killed while it overwrites
    ``last.ckpt`` would leave a folder mixing two steps that loads without complaint. Here every process writes
    into one partial folder beside the destination and, once all have finished, rank 0 renames it over the
    destination. The folder must be on a file system all nodes share (as DeepSpeed's own resume assumes).
    A resume reads the folder's files with ``weights_only`` unpickling (see
    :func:`lit_pref.checkpointing.deepspeed_weights_only`): a crafted file cannot run code.
    """

    def init_deepspeed(self) -> None:
        if self.zero_stage_3:
            from deepspeed.utils import set_z3_leaf_modules
            from transformers.models.clip.modeling_clip import CLIPTextEmbeddings

            # ZeRO-3 gathers a module's own weights when its forward starts, and its children's when theirs do;
            # CLIP's text embeddings read their children's weight shapes first, so gather them all at once.
            set_z3_leaf_modules(self.model, [CLIPTextEmbeddings], raise_if_not_found=False)
        super().init_deepspeed()

    def save_checkpoint(self, checkpoint: dict, filepath: _PATH, storage_options: Any | None = None) -> None:
        filepath = self.broadcast(str(filepath))
        if self.is_global_zero:
            with atomic_dir(filepath) as partial:
                self._write(checkpoint, self.broadcast(str(partial)), storage_options)
        else:
            self._write(checkpoint, self.broadcast(None), storage_options)
        self.barrier("deepspeed_checkpoint_renamed")

    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        with deepspeed_weights_only(checkpoint_path):
            return super().load_checkpoint(checkpoint_path, weights_only)

    def _write(self, checkpoint: dict, folder: str, storage_options: Any | None) -> None:
        super().save_checkpoint(checkpoint, folder, storage_options)
        self.barrier("deepspeed_checkpoint_written")


@contextmanager
def full_parameters(strategy: Strategy, parameters: Iterable[nn.Parameter]) -> Iterator[None]:
    """Inside, ``parameters`` hold their full values on every process, also under DeepSpeed ZeRO-3 (which keeps
    a shard of each parameter per process). Every process must enter it; changes made inside are not kept."""
    if isinstance(strategy, LightningDeepSpeedStrategy) and strategy.zero_stage_3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(parameters), modifier_rank=None):
            yield
    else:
        yield
