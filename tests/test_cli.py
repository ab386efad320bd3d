"""The command line end to end: the demo run, predict, a user's own loss (every shipped config: tests/test_configs.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, read_events
from lit_pref.losses import PairLoss
from lit_pref.toy.pairs import SHIPPED_PAIRS

class GapLoss(PairLoss):
    """A user's loss, defined outside the package: push the winner's error below the loser's."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, model_err_w, model_err_l, ref_err_w, ref_err_l):
        gap = (model_err_w - model_err_l).mean()
        return self.scale * gap, {"gap": gap.detach()}


def short_demo_config(tmp: Path) -> Path:
    """configs/demo.yaml with its win-rate evaluation cut from 16 to 4 images a prompt (48 pairs), to keep the
    suite short; everything else as shipped (the full evaluation: tests/test_demo.py, README "Quick start")."""
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    (win_rate,) = [c for c in config["trainer"]["callbacks"] if c["class_path"] == "lit_pref.callbacks.WinRate"]
    win_rate["init_args"]["num_images_per_prompt"] = 4
    path = tmp / "demo_short.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def demo_args(tmp: Path, steps: int) -> list[str]:
    return [
        "--config", str(short_demo_config(tmp)),
        "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(steps),  # one validation (and win-rate evaluation), at the end
        "--trainer.log_every_n_steps", "1",
        "--trainer.logger.init_args.save_dir", str(tmp / "runs"),
        "--trainer.callbacks.cache_dir", str(tmp / "encodings"),  # the demo's last callback: EncodingCache
    ]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One short run of the demo config through ``python -m lit_pref fit`` in a subprocess."""
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "lit_pref", "fit", *demo_args(tmp, 6)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    (tmp / "fit.stdout").write_text(proc.stdout)
    return tmp, tmp / "runs" / "demo" / "version_0"


def test_demo_fit_writes_events_config_checkpoints_and_lora(demo_run):
    tmp, run = demo_run
    events = read_events(run)
    scalars = set(events.Tags()["scalars"])
    for name in ("train/loss", "train/implicit_acc", "train/model_mse", "train/ref_mse", "train/margin",
                 "train/lr", "val/loss", "val/implicit_acc", "eval/win_rate_vs_base/hidden"):
        assert name in scalars, name
    first = events.Scalars("train/loss")[0]
    assert first.step == 0 and first.value == pytest.approx(math.log(2), abs=1e-5)  # LoRA B = 0 at step 0
    images = events.Images("samples/policy_vs_reference")
    # 3 prompts x (policy, base), 32 px images shown at 128 px with a caption under each, 2 px padding
    assert images and images[-1].width == 2 * 130 + 2 and images[-1].height > 3 * 130
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    lora = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert any(k.endswith("lora.up.weight") and v.abs().sum() > 0 for k, v in lora.items())
    assert (run / "lora_best" / "pytorch_lora_weights.safetensors").is_file()
    assert any(p.is_file() for p in (tmp / "encodings").rglob("*"))  # the encodings went where the option said


def test_demo_ends_with_its_win_rate_and_what_to_run_next_and_opens_tensorboard_on_it(demo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    tmp, run = demo_run
    out = (tmp / "fit.stdout").read_text()
    assert re.search(r"Win rate vs base \(hidden\): [\d.]+%, 95% interval \[[\d.]+%, [\d.]+%\] on \d+ pairs at step 6", out)
    assert f"Run folder: {run}" in out and f"--logdir {run}" in out and f"-m lit_pref compare {run.parent}" in out
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert (run / "lora" / "pytorch_lora_weights.safetensors").stat().st_mode & 0o777 == 0o644
    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: chart for chart in layout.category[0].chart}
    margin = charts["win rate vs base: hidden (95% interval)"].margin.series[0]
    assert (margin.value, margin.lower, margin.upper) == (
        "eval/win_rate_vs_base/hidden", "eval/win_rate_vs_base/hidden_low", "eval/win_rate_vs_base/hidden_high")
    assert {"reward means", "loss", "implicit accuracy"} <= set(charts)


def test_predict_writes_images_for_a_prompt_file(demo_run, run_cli):
    tmp, run = demo_run
    (tmp / "prompts.txt").write_text("a red circle on a white background\n\na blue square\n")
    out = tmp / "predictions"
    run_cli("predict", "--config", "configs/demo.yaml", "--data", "lit_pref.datamodules.PromptDataModule",
            "--data.path", str(tmp / "prompts.txt"), "--data.num_images_per_prompt", "2",
            "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp),  # LightningCLI saves config.yaml there, not in the repo
            "--trainer.callbacks+=lit_pref.callbacks.ImageWriter", "--trainer.callbacks.output_dir", str(out),
            "--model.init_args.num_inference_steps", "3")
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(m["prompt"], m["seed"]) for m in manifest] == [
        ("a red circle on a white background", 0), ("a red circle on a white background", 1),
        ("a blue square", 2), ("a blue square", 3)]
    from PIL import Image

    assert all(Image.open(out / m["file"]).size == (32, 32) for m in manifest)


def test_test_subcommand_scores_held_out_pairs_with_the_checkpoint_lora(demo_run, tmp_path):
    """``lit_pref test`` on a pair file: with the trained checkpoint the DPO loss moves off ln 2; without it
    (LoRA B = 0, policy == reference) it is exactly ln 2, so the checkpoint's LoRA really was loaded."""
    from lit_pref.cli import LitPrefCLI

    tmp, run = demo_run
    pairs = str(SHIPPED_PAIRS / "val.parquet")  # the demo's validation pairs
    args = ["test", "--config", "configs/demo.yaml", "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--trainer.default_root_dir", str(tmp_path), "--data", "lit_pref.datamodules.PreferencePairDataModule",
            "--data.train_path", pairs, "--data.test_path", pairs, "--data.resolution", "32"]
    trained = LitPrefCLI(args=[*args, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]).trainer.callback_metrics
    fresh = LitPrefCLI(args=args).trainer.callback_metrics
    assert fresh["test/loss"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert trained["test/loss"].item() != pytest.approx(math.log(2), abs=1e-4)
    assert 0.0 <= trained["test/implicit_acc"].item() <= 1.0


def test_user_loss_from_own_module_trains_the_lora(tmp_path, run_cli):
    """``--model.loss my_module.MyLoss`` with the loss in a user's file (this test file) on PYTHONPATH."""
    export_only = json.dumps([{"class_path": "lit_pref.callbacks.LoRAExport"}])  # no evaluation: the loss is the point
    run_cli("fit", *demo_args(tmp_path, 3), "--model.loss", "test_cli.GapLoss", "--model.loss.scale", "2.0",
            "--trainer.callbacks", export_only, "--trainer.limit_val_batches", "0",
            env={"PYTHONPATH": str(Path(__file__).parent)})
    run = tmp_path / "runs" / "demo" / "version_0"
    config = (run / "config.yaml").read_text()
    assert "class_path: test_cli.GapLoss" in config and "scale: 2.0" in config
    assert "train/gap" in read_events(run).Tags()["scalars"]
    lora = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    ups = [v for k, v in lora.items() if k.endswith("lora.up.weight")]
    assert ups and all(torch.count_nonzero(v) > 0 for v in ups)  # B started at 0: the gradient reached it


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "lit-pref"]
    assert script.value == "lit_pref.__main__:main"
