"""Distributed training on CPU: DDP and DeepSpeed ZeRO-2/3 in two processes (gloo) against one process.

Two worker processes (tests/dist_worker.py, launched torchrun-style) run DDP for 4 steps, then ZeRO-2 and ZeRO-3
for 2 steps, a checkpoint, and a resume to 4 steps, all through LitPrefCLI with configs/demo.yaml composed with
the shipped strategy configs. Every run sees the same global batch of 4 pairs per step; a pair's noise and
timestep depend only on the pair (TrajectoryDPO's per-pair generators) and the data order only on the seed
(lit_pref.datamodules.EpochSampler), so the runs differ from one process by floating-point rounding only.

Tolerances. After 4 AdamW steps at lr 1e-3 the LoRA has moved by up to 4e-3 (a run with another global batch
ends 6e-3 away). Against one process, measured here: DDP 8e-6, gradient accumulation 3e-5, ZeRO-3 5e-5 (it
gathers its shards into fresh tensors, so the forward rounds differently); ZeRO-2 equals DDP bit for bit. The
logged losses differ by up to 8e-5 relative: beta = 5000 multiplies rounding differences of the per-sample
errors, which batches of different sizes compute with different kernels.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from dist_worker import GLOBAL_BATCH, NUM_PAIRS, STEPS, fit, fit_args

# Training configs only: not the strategies themselves, nor the `interact`, `evaluate` and `synthesize-pairs` configs.
METHOD_CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml")
                        if not {"strategy", "interact", "evaluate"} & set(p.parts) and not p.name.startswith("synthesize"))
STRATEGIES = ["ddp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"]
LORA_ATOL = 1e-4  # largest difference of a LoRA weight
LOSS_RTOL = 5e-4  # relative difference of a step's loss


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=str)
def test_strategy_configs_compose_with_every_method_config(config):
    """``--config <method> --config configs/strategy/<s>.yaml`` parses for every method config; every strategy
    config is used (cycled over the method configs) and lands in the resolved trainer."""
    from lit_pref.__main__ import main

    strategy = STRATEGIES[METHOD_CONFIGS.index(config) % len(STRATEGIES)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / config), "--config", str(REPO / f"configs/strategy/{strategy}.yaml"),
              "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = out.getvalue()
    assert "class_path: lit_pref.modules." in printed or "class_path: lit_pref.toy.pretrain." in printed
    expected = "lightning.pytorch.strategies.DDPStrategy" if strategy == "ddp" else "lit_pref.strategies.DeepSpeedStrategy"
    assert f"class_path: {expected}" in printed
    if strategy != "ddp":
        assert "precision: 32-true" in printed and "exclude_frozen_parameters: true" in printed


def lora(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "lora" / "pytorch_lora_weights.safetensors")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def steps(run: Path, rank: int = 0) -> list[dict]:
    return json.loads((run / f"steps_rank{rank}.json").read_text())


def global_steps(run: Path, ranks: int = 1, micro: int = 1) -> list[tuple[float, set[int]]]:
    """Per optimizer step: the mean loss over ranks and micro-batches, and the pairs trained on."""
    records = [steps(run, r) for r in range(ranks)]
    out = []
    for i in range(0, len(records[0]), micro):
        chunk = [rec for r in records for rec in r[i:i + micro]]
        out.append((sum(rec["loss"] for rec in chunk) / len(chunk), {x for rec in chunk for x in rec["indices"]}))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from lit_pref.datamodules import SyntheticPreferenceDataModule

    path = tmp_path_factory.mktemp("pairs")
    SyntheticPreferenceDataModule(data_dir=str(path), num_pairs=NUM_PAIRS, num_val_pairs=0, resolution=16).prepare_data()
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory, data) -> Path:
    """One process, batch 4."""
    run = tmp_path_factory.mktemp("single")
    fit(fit_args(run, data))
    return run


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data) -> Path:
    """The worker's runs in two processes (about 40 s of CPU each, plus a one-off build of DeepSpeed's CPU
    communication op on a fresh machine)."""
    out = tmp_path_factory.mktemp("two_processes")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "NODE_RANK": "0", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
        log = open(out / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "dist_worker", str(out), str(data)], cwd=REPO, env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 900
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):  # one died: the other would wait in a collective
            break
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    if any(p.returncode != 0 for p in procs):
        logs = "\n".join(f"--- rank {r}\n{(out / f'rank{r}.log').read_text()[-5000:]}" for r in range(2))
        pytest.fail(f"worker exit codes {[p.returncode for p in procs]}\n{logs}")
    return out


def test_ddp_two_processes_equal_one_process_with_the_same_global_batch(single, two_processes):
    one, ddp = global_steps(single), global_steps(two_processes / "ddp", ranks=2)
    assert len(one) == len(ddp) == STEPS
    for (loss_1, pairs_1), (loss_2, pairs_2) in zip(one, ddp):
        assert pairs_1 == pairs_2 and len(pairs_1) == GLOBAL_BATCH  # the same pairs in every step
        assert loss_2 == pytest.approx(loss_1, rel=LOSS_RTOL)
    assert max_diff(lora(single), lora(two_processes / "ddp")) < LORA_ATOL
    assert max(v.abs().max().item() for v in lora(single).values()) > 0.1  # the LoRA did move


def test_gradient_accumulation_4x1_equals_batch_4(single, data, tmp_path):
    """TrajectoryDPO's loss is a mean of per-pair losses: 4 micro-batches of 1 pair give batch 4's update."""
    fit(fit_args(tmp_path, data, batch_size=1, extra=["--trainer.accumulate_grad_batches", "4"]))
    one, accumulated = global_steps(single), global_steps(tmp_path, micro=4)
    assert len(accumulated) == STEPS
    for (loss_1, pairs_1), (loss_4, pairs_4) in zip(one, accumulated):
        assert pairs_1 == pairs_4 and loss_4 == pytest.approx(loss_1, rel=LOSS_RTOL)
    assert max_diff(lora(single), lora(tmp_path)) < LORA_ATOL


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_fit_save_resume_export_equals_ddp(two_processes, stage):
    run = two_processes / f"zero{stage}"
    report = json.loads((run / "report.json").read_text())
    # ZeRO-2 reduces and steps like DDP: bit for bit here (1e-6 allowed); ZeRO-3 rounds differently
    lora_atol, loss_rtol = (1e-6, 1e-6) if stage == 2 else (LORA_ATOL, LOSS_RTOL)
    # the resumed run continued the epoch where the checkpoint stopped (same pairs and losses as DDP's steps 3, 4)
    ddp = global_steps(two_processes / "ddp", ranks=2)
    resumed = global_steps(run / "resumed", ranks=2)
    assert [pairs for _, pairs in resumed] == [pairs for _, pairs in ddp[2:]]
    assert [loss for loss, _ in resumed] == pytest.approx([loss for loss, _ in ddp[2:]], rel=loss_rtol)
    # the exported LoRA equals DDP's
    assert max_diff(lora(run / "resumed"), lora(two_processes / "ddp")) < lora_atol
    # the checkpoint folder holds the LoRA (and its optimizer state), not the frozen base, which came back
    # bit-identical to the pretrained weights after the non-strict load
    assert report["frozen_max_abs_diff"] == 0.0 and report["num_frozen"] > 300
    folder = run / "checkpoints" / "epoch=0-step=2.ckpt"
    assert [p.name for p in (run / "checkpoints").iterdir()] == [folder.name]  # renamed into place, no partial left
    model_states = sorted((folder / "checkpoint").glob("*model_states.pt"))
    assert len(model_states) == (1 if stage == 2 else 2)
    module = torch.load(model_states[0], map_location="cpu", weights_only=False)["module"]
    assert module and all("lora_" in k for k in module)
    assert report["checkpoint_bytes"] < report["frozen_bytes"] / 10
    if stage == 3:
        assert report["partitioned_parameters"] == report["num_parameters"]  # ZeRO-3 did shard the module
    else:
        assert report["partitioned_parameters"] == 0


def test_deepspeed_checkpoint_folder_reads_back_as_the_step_2_lora(two_processes):
    """``trainable_state_dict`` merges a ZeRO-2 / ZeRO-3 folder to fp32 (what LoRAExport's ``lora_best`` uses),
    and a module whose adapters the folder does not cover refuses it."""
    from lit_pref.backbone import DiffusionBackbone, lora_config
    from lit_pref.checkpointing import trainable_state_dict
    from lit_pref.modules import TrajectoryDPO

    for stage in (2, 3):
        run = two_processes / f"zero{stage}"
        state = trainable_state_dict(run / "checkpoints" / "epoch=0-step=2.ckpt")
        backbone = DiffusionBackbone(model="tiny", **lora_config(run / "first" / "lora"))
        trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
        assert {k.removeprefix("backbone.") for k in state} == trainable
        backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items()}, strict=False)
        exported = lora(run / "first")  # the first run's export at step 2, from the live (gathered) weights
        assert max_diff({f"unet.{k}": v for k, v in backbone.lora_state_dict().items()}, exported) == 0.0
        # DeepSpeed loads the folder itself, non-strictly; LoRAModule checks the parameter names it recorded
        client_state = torch.load(next((run / "checkpoints" / "epoch=0-step=2.ckpt" / "checkpoint").glob(
            "*model_states.pt")), map_location="cpu", weights_only=False)
        assert "state_dict" not in client_state
        TrajectoryDPO(backbone).on_load_checkpoint(client_state)
        settings = lora_config(run / "first" / "lora")
        wider = DiffusionBackbone(model="tiny", lora_rank=settings["lora_rank"],
                                  lora_target_modules=[*settings["lora_target_modules"], "ff.net.2"])
        with pytest.raises(KeyError, match="trainable parameter"):
            TrajectoryDPO(wider).on_load_checkpoint(client_state)


def test_zero3_leaves_a_callbacks_scorer_whole_and_fp32(two_processes):
    """The RewardMetrics scorer (toy CLIP) scored ZeRO-3 samples during the run; the strategy sharded every
    parameter of the LightningModule but none of the scorer's, and cast none of them."""
    report = json.loads((two_processes / "zero3" / "report.json").read_text())
    assert report["partitioned_parameters"] == report["num_parameters"]
    assert report["scorer_num_parameters"] > 10
    assert report["scorer_partitioned"] == 0 and report["scorer_empty"] == 0
    assert report["scorer_dtypes"] == ["torch.float32"]
    assert 0.0 <= report["logged_clip"] <= 100.0
