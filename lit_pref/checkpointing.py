"""Checkpoint files written atomically, ``last.ckpt`` always the final state, and the trainable weights read back
from a file or a DeepSpeed folder (never unpickling anything but tensors and the few types DeepSpeed's files need)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor

from lit_pref.io import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing each local checkpoint to a partial file beside its destination, flushing
    it to disk and renaming it over the destination, so a killed run leaves either the old or the new checkpoint.

    Lightning's own save writes into the system's temporary folder and moves the file into place: across file
    systems that move is a copy that a kill can cut short. Partial files are named so that ``ckpt_path="last"``
    never takes one (see :mod:`lit_pref.io`). Remote paths (``s3://...``) go to Lightning's implementation.
    ``python -m lit_pref`` uses this IO unless the config names another ``CheckpointIO`` plugin.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())


def trainable_state_dict(checkpoint: str | os.PathLike) -> dict[str, Tensor]:
    """The trainable weights of a checkpoint, keyed like the LightningModule's parameters.

    Args:
        checkpoint: A Lightning ``.ckpt`` file (its ``state_dict``, the LoRA weights for a ``LoRAModule``) or a
            DeepSpeed checkpoint folder (ZeRO-2 or -3; its partitions merged to fp32, as DeepSpeed's
            ``zero_to_fp32`` does, in this process, without a process group).
    """
    path = Path(checkpoint)
    if path.is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with deepspeed_weights_only(path):
            return dict(get_fp32_state_dict_from_zero_checkpoint(str(path)))
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file holds objects that loading it would have to construct by running their code."""


def deepspeed_safe_globals() -> list[type]:
    """The classes, besides tensors and plain containers, that DeepSpeed's checkpoint files hold (its ZeRO-2 and
    ZeRO-3 optimizer states pickle its loss scaler, its ZeRO stage enum and its tensor fragment addresses; the
    model states hold none): all that ``weights_only`` loading of a DeepSpeed folder allows."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


@contextmanager
def deepspeed_weights_only(folder: str | os.PathLike) -> Iterator[None]:
    """Inside, every ``torch.load`` (DeepSpeed's own, which pass ``weights_only=False``, included) unpickles with
    ``weights_only=True`` and only :func:`deepspeed_safe_globals` allowed: a crafted file in the checkpoint
    ``folder`` cannot run code. A file that holds anything else raises :class:`UnsafeCheckpointError`.

    torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` overrides an explicit ``weights_only=False``; it is set for the
    duration (process-wide: a load in another thread meanwhile is restricted too, never loosened).
    """
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()):
            yield
    except pickle.UnpicklingError as err:
        detail = str(err).split("WeightsUnpickler error: ")[-1].split(" Please use")[0].strip()
        raise UnsafeCheckpointError(
            f"{folder}: refused to load a DeepSpeed checkpoint file that holds objects other than tensors and "
            f"DeepSpeed's own state (unpickling them could run code): {detail}"
        ) from err
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
class FinalLastCheckpoint(Callback):
    """Make every ``ModelCheckpoint(save_last=True)``'s ``last.ckpt`` the state at the end of training.

    Lightning writes ``last`` only together with a top-k save (or a ``save_last="link"``), so when the monitored
    metric got worse at the final validation ``last.ckpt`` keeps an earlier step, while the exported LoRA is the
    final one. At the end of training this writes ``last`` again wherever the final step was not saved.
    ``python -m lit_pref`` adds it to every run.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or not callback.save_last:
                continue
            if getattr(callback, "_last_global_step_saved", None) == trainer.global_step:
                continue  # Lightning saved (or linked) last.ckpt at this very step
            path = callback.format_checkpoint_name(callback._monitor_candidates(trainer), callback.CHECKPOINT_NAME_LAST)
            if os.path.islink(path):  # save_last="link": replace the link by the final state
                os.unlink(path)
            callback.last_model_path = path
            trainer.save_checkpoint(path, weights_only=callback.save_weights_only)
            callback._last_global_step_saved = trainer.global_step
