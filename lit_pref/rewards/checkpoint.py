"""Reading reward-model checkpoints (local file, folder or hub id) and loading them strictly, with errors that name
the file and the keys."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["load_strict", "read_state_dict", "resolve_file"]


def resolve_file(spec: str | Path, filename: str) -> Path:
    """The checkpoint file that ``spec`` names.

    Args:
        spec: A file (used as is), a folder (``spec/filename`` must exist) or a hub repo id (``org/name``;
            ``filename`` is downloaded with ``huggingface_hub`` into its cache).
        filename: The file's name inside a folder or hub repo (e.g. ``"ImageReward.pt"``).
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / filename).is_file():
            raise FileNotFoundError(f"{path}: no {filename} in this folder")
        return path / filename
    if str(spec).count("/") != 1 or str(spec).startswith((".", "/")):
        raise FileNotFoundError(f"{spec}: neither an existing file or folder nor a hub repo id (org/name)")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(str(spec), filename))


def read_state_dict(path: str | Path) -> dict:
    """The object saved in a checkpoint file, on the CPU: ``.safetensors`` with safetensors, anything else with
    ``torch.load(weights_only=True, map_location="cpu")`` (some official files were saved on cuda).

    Args:
        path: The checkpoint file.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``module.load_state_dict(state)`` that accepts exactly the module's keys and shapes.

    Raises:
        ValueError: naming ``source`` and every missing key, unexpected key and shape mismatch.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
                  for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise ValueError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
