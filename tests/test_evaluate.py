"""``python -m lit_pref evaluate``: killed mid-way it resumes without redoing or duplicating chunks; its scores,
win rates and per-category tables match recomputation; its configs parse."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from lit_pref.__main__ import main
from lit_pref.backbone import DiffusionBackbone
from lit_pref.rewards import Scorer, win_rate

PROMPTS = ["a large red circle on a white background", "a small blue square on a black background",
           "a large green triangle on a white background", "a small red square on a white background"]
CATEGORIES = ["Colors", "Counting", "Colors", "Counting"]


class SlowBrightness(Scorer):
    """Mean pixel value, after a pause: slow enough that a run can be killed between chunks."""

    def score(self, images, prompts):
        time.sleep(0.5)
        return images.mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def toy_lora(tmp_path_factory):
    """A LoRA on the toy model whose B is not zero, so policy and base differ."""
    folder = tmp_path_factory.mktemp("lora") / "lora"
    backbone = DiffusionBackbone(model="toy")
    with torch.no_grad():
        for name, param in backbone.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    backbone.save_lora(folder)
    return folder


def args(tmp_path, lora, suite) -> list[str]:
    return ["--config", str(REPO / "configs/evaluate/toy.yaml"), "--suite.kind", "drawbench", "--suite.path", str(suite),
            "--scorers", json.dumps({"brightness": {"class_path": "test_evaluate.SlowBrightness"}}),
            "--lora", str(lora), "--output_dir", str(tmp_path / "out"), "--num_images_per_prompt", "2",
            "--num_inference_steps", "3", "--chunk_size", "1", "--batch_size", "2", "--grid_images", "4"]


def test_evaluate_killed_midway_resumes_without_redoing_or_duplicating_chunks(tmp_path, toy_lora):
    suite = tmp_path / "drawbench.csv"
    suite.write_text("Prompts,Category\n" + "".join(f'"{p}",{c}\n' for p, c in zip(PROMPTS, CATEGORIES)))
    argv = args(tmp_path, toy_lora, suite)
    chunks = tmp_path / "out" / "chunks"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lit_pref", "evaluate", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(list(chunks.glob("*.json"))) < 2:
            assert proc.poll() is None, f"evaluate ended early:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no two chunks in 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-chunk: each chunk takes 4 scorer pauses of 0.5 s
    finally:
        proc.kill()
        proc.wait()
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in chunks.glob("*.json")}
    assert 2 <= len(before) < len(PROMPTS)
    assert not (tmp_path / "out" / "summary.json").exists()

    sys.path.insert(0, str(REPO / "tests"))  # the scorer's class path, as in the subprocess
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        main(["evaluate", *argv, "--progress", "false"])
    for name, (mtime, data) in before.items():  # chunks finished before the kill were kept, not redone
        assert (chunks / name).stat().st_mtime_ns == mtime and (chunks / name).read_bytes() == data
    assert sorted(p.name for p in chunks.glob("*.json")) == [f"{c:05d}.json" for c in range(len(PROMPTS))]

    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv", encoding="utf-8")))
    assert [int(r["index"]) for r in rows] == list(range(2 * len(PROMPTS)))  # every sample once, in order
    # every score is that of the sample drawn from seed = index, policy (LoRA) and base (adapters off)
    backbone = DiffusionBackbone(model="toy")
    backbone.load_lora(toy_lora)
    texts = [r["prompt"] for r in rows]

    def brightness() -> torch.Tensor:
        images = backbone.sample(texts, num_inference_steps=3, guidance_scale=4.0,
                                 generator=[torch.Generator().manual_seed(int(r["seed"])) for r in rows])
        return images.mean(dim=(1, 2, 3))

    policy = brightness()
    with backbone.reference_forward():
        base = brightness()
    assert torch.tensor([float(r["brightness"]) for r in rows]) == pytest.approx(policy, abs=1e-4)
    assert torch.tensor([float(r["base/brightness"]) for r in rows]) == pytest.approx(base, abs=1e-4)
    assert texts == [p for p in PROMPTS for _ in range(2)] and [r["seed"] for r in rows] == [str(i) for i in range(8)]

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    expected = win_rate(policy, base, groups=[r["prompt_index"] for r in rows])
    got = summary["all"]["win_rate_vs_base/brightness"]
    assert (got["rate"], got["low"], got["high"]) == pytest.approx((expected.rate, expected.low, expected.high))
    colors = [i for i, r in enumerate(rows) if r["category"] == "Colors"]
    assert summary["categories"]["Colors"]["brightness"]["mean"] == pytest.approx(policy[colors].mean().item(), abs=1e-6)
    assert list(summary["categories"]) == ["Colors", "Counting"]
    assert "| Colors | 4 |" in printed.getvalue()
    assert (tmp_path / "out" / "grid.png").is_file()

    with pytest.raises(ValueError, match="num_inference_steps differ"):  # other settings: refused, not mixed in
        main(["evaluate", *argv, "--num_inference_steps", "4", "--progress", "false"])


@pytest.mark.parametrize("config", sorted((REPO / "configs" / "evaluate").glob("*.yaml")), ids=lambda p: p.name)
def test_every_evaluate_config_parses(config):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = out.getvalue()
    assert "suite:" in printed and ("class_path: lit_pref.rewards." in printed or "class_path: lit_pref.toy." in printed)


class BatchSizes(Scorer):
    """Mean pixel value, recording the size of every batch it scores."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def score(self, images, prompts):
        self.sizes.append(len(images))
        return images.mean(dim=(1, 2, 3))


def test_callbacks_sample_and_score_in_batches_with_the_draws_of_one_batch():
    from lit_pref.callbacks import RewardMetrics
    from lit_pref.modules import TrajectoryDPO

    scorer = BatchSizes()
    prompts = ["a red circle", "a blue square", "a green triangle"]
    callback = RewardMetrics({"b": scorer}, prompts, num_images_per_prompt=2, num_inference_steps=2, seed=5,
                             grid_images=3, batch_size=4)
    module = TrajectoryDPO(DiffusionBackbone.tiny())
    scores, grid = callback.sample_and_score(module)
    assert scorer.sizes == [4, 2]  # 6 samples, at most 4 through the UNet, VAE and scorer at a time
    images = module.backbone.sample(callback.texts, num_inference_steps=2, guidance_scale=5.0,
                                    generator=[torch.Generator().manual_seed(5 + i) for i in range(6)])
    # the same draws; the batch composition changes only float rounding
    torch.testing.assert_close(scores["b"], images.mean(dim=(1, 2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(grid, images[[0, 2, 4]], atol=1e-4, rtol=0)  # one sample of each prompt first
