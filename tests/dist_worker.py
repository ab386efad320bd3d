"""Multi-process runs for tests/test_distributed.py, and what they share with the single-process runs.

``python -m dist_worker OUT DATA`` (from the repository root, with ``tests`` on ``PYTHONPATH``) is started
once per rank by the test, torchrun-style (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK`` in the environment, so Lightning launches nothing itself). In the same two processes it runs, through ``LitPrefCLI`` with the shipped method and strategy configs:
DDP for 4 steps; DeepSpeed ZeRO-2 for 2 steps, then a resume to 4; the same with ZeRO-3 (and a scorer in a
callback). Each run writes its LoRA export and per-rank step records under ``OUT/<run>/``.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy

from lit_pref.strategies import DeepSpeedStrategy

REPO = Path(__file__).resolve().parents[1]
NUM_PAIRS = 12  # 3 steps per epoch at a global batch of 4: 4 steps cross an epoch boundary
GLOBAL_BATCH = 4
STEPS = 4


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """lit_pref's DeepSpeed strategy in CPU processes over gloo, for tests only (Lightning's refuses a CPU
    accelerator; DeepSpeed itself runs on CPU)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # no CUDA check

    def setup_distributed(self) -> None:
        import deepspeed.ops

        # DeepSpeed would compile a shared-memory all-reduce for CPU processes on first use (minutes on a fresh
        # machine); gloo does the job here.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()  # no check of GPU indices

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=SimpleNamespace(device_rank=self.local_rank),  # Lightning passes the CUDA index, None on CPU
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer


class StepRecorder(Callback):
    """Write ``steps_rank<r>.json``: per training batch, the global step after it, the logged ``train/loss`` and
    the dataset indices of its pairs."""

    def __init__(self, path: str) -> None:
        """
        Args:
            path: Folder of the JSON file.
        """
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.records.append({"step": trainer.global_step, "loss": trainer.callback_metrics["train/loss"].item(),
                             "indices": batch["indices"].tolist()})

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"steps_rank{trainer.global_rank}.json").write_text(json.dumps(self.records))


def fit_args(run: Path, data: Path, *, steps: int = STEPS, batch_size: int = GLOBAL_BATCH, devices: int = 1,
             strategy: str | None = None, extra: list[str] = ()) -> list[str]:
    """``LitPrefCLI(run=False)`` arguments (``lit_pref fit`` without the word ``fit``): the toy TrajectoryDPO recipe on the tiny backbone and 16-pixel synthetic pairs,
    then ``strategy`` (a ``configs/strategy`` file name), CPU, the step recorder and a LoRA export into ``run``."""
    callbacks = [{"class_path": "lit_pref.callbacks.LoRAExport", "init_args": {"dirpath": str(run)}},
                 {"class_path": "dist_worker.StepRecorder", "init_args": {"path": str(run)}}]
    args = ["--config", str(REPO / "configs" / "toy" / "trajectory_dpo.yaml")]
    if strategy:
        args += ["--config", str(REPO / "configs" / "strategy" / f"{strategy}.yaml")]
    return args + [
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--trainer.max_steps", str(steps),
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(run),
        "--trainer.callbacks", json.dumps(callbacks),
        "--model.init_args.backbone.init_args.model", "tiny",
        "--data", "lit_pref.datamodules.SyntheticPreferenceDataModule", "--data.data_dir", str(data),
        "--data.num_pairs", str(NUM_PAIRS), "--data.num_val_pairs", "0", "--data.resolution", "16",
        "--data.batch_size", str(batch_size), *extra,
    ]


def fit(args: list[str], ckpt_path: str | None = None):
    """Build the run with LitPrefCLI and fit it; returns the CLI (its trainer, model and data)."""
    from lit_pref.cli import LitPrefCLI

    cli = LitPrefCLI(args=args, run=False)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)
    return cli


def deepspeed_runs(out: Path, data: Path, stage: int) -> None:
    """ZeRO-``stage``: fit 2 steps (checkpoint at step 2), resume from the checkpoint folder to 4, export."""
    run = out / f"zero{stage}"
    strategy = f"deepspeed_zero{stage}"
    cpu = ["--trainer.strategy.class_path", "dist_worker.CPUDeepSpeedStrategy"]
    checkpoint = json.dumps({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"dirpath": str(run / "checkpoints"), "every_n_train_steps": 2,
                                           "save_top_k": -1}})
    first = fit_args(run / "first", data, steps=2, batch_size=GLOBAL_BATCH // 2, devices=2, strategy=strategy,
                     extra=[*cpu, f"--trainer.callbacks+={checkpoint}"])
    fit(first)
    folder = run / "checkpoints" / "epoch=0-step=2.ckpt"
    extra = [*cpu]
    if stage == 3:  # a scorer in a callback: it must stay fp32 and whole
        scorer = {"class_path": "lit_pref.rewards.CLIPScore",
                  "init_args": {"model": f"local-dir:{REPO / 'lit_pref/assets/toy/clip'}", "pretrained": None}}
        metrics = {"class_path": "lit_pref.callbacks.RewardMetrics",
                   "init_args": {"scorers": {"clip": scorer}, "prompts": ["a red circle on a white background"],
                                 "num_images_per_prompt": 1, "num_inference_steps": 2, "every_n_steps": 4}}
        extra.append(f"--trainer.callbacks+={json.dumps(metrics)}")
    cli = fit(fit_args(run / "resumed", data, batch_size=GLOBAL_BATCH // 2, devices=2, strategy=strategy,
                       extra=extra), ckpt_path=str(folder))
    report = {"checkpoint_files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())}
    report["checkpoint_bytes"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    report.update(frozen_report(cli))
    if stage == 3:
        report.update(scorer_report(cli))
    if cli.trainer.is_global_zero:
        (run / "report.json").write_text(json.dumps(report))


def frozen_report(cli) -> dict[str, Any]:
    """Largest difference of the resumed run's frozen weights from a freshly loaded backbone's (gathered under
    ZeRO-3), and how many parameters ZeRO-3 had partitioned."""
    from lit_pref.backbone import DiffusionBackbone
    from lit_pref.strategies import full_parameters

    model = cli.model
    fresh = dict(DiffusionBackbone(model="tiny").named_parameters())
    frozen = [(n, p) for n, p in model.backbone.named_parameters() if not p.requires_grad]
    with full_parameters(cli.trainer.strategy, [p for _, p in frozen]):
        diff = max((p.detach() - fresh[n]).abs().max().item() for n, p in frozen)
        size = sum(p.numel() * p.element_size() for _, p in frozen)
    partitioned = sum(hasattr(p, "ds_id") for p in model.parameters())
    return {"frozen_max_abs_diff": diff, "num_frozen": len(frozen), "frozen_bytes": size,
            "partitioned_parameters": partitioned, "num_parameters": len(list(model.parameters()))}


def scorer_report(cli) -> dict[str, Any]:
    """The RewardMetrics scorer after a ZeRO-3 run: its parameters' dtypes, sizes and DeepSpeed attributes, and
    the mean score it logged."""
    from lit_pref.callbacks import RewardMetrics

    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, RewardMetrics)]
    scorer = callback.scorers["clip"]
    params = list(scorer.model.parameters())
    return {"scorer_dtypes": sorted({str(p.dtype) for p in params}),
            "scorer_partitioned": sum(hasattr(p, "ds_id") for p in params),
            "scorer_empty": sum(p.numel() == 0 for p in params),
            "scorer_num_parameters": len(params),
            "logged_clip": cli.trainer.callback_metrics["eval/clip"].item()}


def main(out: Path, data: Path, runs: list[str]) -> None:
    for run in runs:
        if run == "ddp":
            fit(fit_args(out / "ddp", data, batch_size=GLOBAL_BATCH // 2, devices=2, strategy="ddp"))
        else:
            deepspeed_runs(out, data, int(run.removeprefix("zero")))


if __name__ == "__main__":  # python -m dist_worker OUT DATA [ddp zero2 zero3], from the repository root
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:] or ["ddp", "zero2", "zero3"])
