"""A DeepSpeed checkpoint folder is read with weights_only unpickling: a crafted file cannot run code.

The real ZeRO-2/3 folders (written by tests/test_distributed.py's two-process runs) still read back and resume
there; these tests only craft the malicious files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


class _MakesMarker:
    """Unpickling calls ``open(marker, "w")``: the file appears if the loader ran the pickle's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def crafted_folder(root: Path, marker: Path) -> Path:
    """A folder laid out like a ZeRO-2 checkpoint of one process, both of whose files run code when unpickled."""
    folder = root / "epoch=0-step=2.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    payload = {"module": {}, "optimizer_state_dict": {"evil": _MakesMarker(marker)}, "ds_version": "0.19.8"}
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save(payload, folder / "checkpoint" / name)
    return folder


def test_trainable_state_dict_refuses_a_deepspeed_file_that_would_run_code(tmp_path):
    from lit_pref.checkpointing import UnsafeCheckpointError, trainable_state_dict

    marker = tmp_path / "pwned"
    folder = crafted_folder(tmp_path, marker)
    with pytest.raises(UnsafeCheckpointError, match=r"epoch=0-step=2\.ckpt: refused .*io\.open"):
        trainable_state_dict(folder)
    assert not marker.exists()


def test_resume_reads_deepspeed_files_weights_only(tmp_path):
    """The strategy's resume loads through DeepSpeed's checkpoint engine inside ``deepspeed_weights_only``: the
    engine's own ``weights_only=False`` is overridden; tensors and DeepSpeed's allow-listed types still load."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from lit_pref.checkpointing import UnsafeCheckpointError, deepspeed_weights_only
    from lit_pref.strategies import DeepSpeedStrategy

    marker = tmp_path / "pwned"
    folder = crafted_folder(tmp_path, marker)
    with pytest.raises(UnsafeCheckpointError), deepspeed_weights_only(folder):
        TorchCheckpointEngine().load(str(folder / "checkpoint" / "mp_rank_00_model_states.pt"), map_location="cpu")
    assert not marker.exists()
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(3.0), "scaler": LossScaler(1.0)}, good)
    with deepspeed_weights_only(folder):
        state = TorchCheckpointEngine().load(str(good), map_location="cpu")
    assert torch.equal(state["w"], torch.arange(3.0)) and state["scaler"].cur_scale == 1.0
    assert DeepSpeedStrategy.load_checkpoint.__module__ == "lit_pref.strategies"
