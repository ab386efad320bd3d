"""``python -m lit_pref compare``: the table and the figure from the TensorBoard files of two short real runs."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lit_pref.callbacks import RewardMetrics, WinRate
from conftest import read_events
from lit_pref.datamodules import SyntheticPreferenceDataModule
from lit_pref import compare
from lit_pref.backbone import DiffusionBackbone
from lit_pref.losses import DiffusionDPOLoss
from lit_pref.modules import TrajectoryDPO
from lit_pref.rewards import Scorer

PROMPTS = ["a red circle on a white background", "a blue square on a black background"]


class Brightness(Scorer):
    """Mean pixel value."""

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def train(save_dir, name: str, lr: float, win_rate: bool) -> None:
    """A 4-step TrajectoryDPO run on the tiny backbone, validated (val/*, eval/*) after steps 2 and 4."""
    kwargs = dict(num_images_per_prompt=2, num_inference_steps=2, grid_images=0)
    callbacks = [RewardMetrics({"brightness": Brightness()}, PROMPTS, **kwargs)]
    if win_rate:
        callbacks.append(WinRate({"brightness": Brightness()}, PROMPTS, **kwargs))
    model = TrajectoryDPO(DiffusionBackbone.tiny(), loss=DiffusionDPOLoss(),
                          optimizer=lambda params: torch.optim.SGD(params, lr=lr))
    data = SyntheticPreferenceDataModule(data_dir=str(save_dir / "data"), num_pairs=8, num_val_pairs=2, batch_size=2)
    Trainer(max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, num_sanity_val_steps=0,
            accelerator="cpu", logger=TensorBoardLogger(save_dir / "runs", name=name, version=0),
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=callbacks, log_every_n_steps=1).fit(model, data)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """runs/still/version_0 (lr 0: the policy stays the base, no WinRate) and runs/moved/version_0 (with WinRate)."""
    root = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    train(root, "still", lr=0.0, win_rate=False)
    train(root, "moved", lr=10.0, win_rate=True)
    return root / "runs"


def rows(table: str) -> dict[tuple[str, str], list[str]]:
    """(metric, run) -> the other cells of the Markdown table."""
    lines = table.strip().splitlines()
    assert lines[0].startswith("| metric | run | final | step | best | step |")
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0], cells[1]] = cells[2:]
    return out


def close(cell: str, value: float) -> bool:
    """A table cell written with 4 significant digits (its first number) agrees with ``value``."""
    return math.isclose(float(cell.split()[0]), value, rel_tol=1e-3, abs_tol=1e-9)


def test_compare_prints_final_and_best_values_and_draws_the_curves(two_runs, tmp_path, capsys):
    out = tmp_path / "comparison.png"
    compare.main([str(two_runs / "still" / "version_0"), str(two_runs / "moved"), "--out", str(out)])
    table = rows(capsys.readouterr().out)

    events = {"still/version_0": read_events(two_runs / "still" / "version_0"),
              "moved/version_0": read_events(two_runs / "moved" / "version_0")}
    tags = sorted({t for acc in events.values() for t in acc.Tags()["scalars"] if t.startswith(("eval/", "val/"))})
    assert {"eval/brightness", "eval/win_rate_vs_base/brightness", "val/loss"} <= set(tags)
    intervals = [t for t in tags if t.endswith(("_low", "_high"))]
    assert sorted(intervals) == ["eval/win_rate_vs_base/brightness_high", "eval/win_rate_vs_base/brightness_low"]
    metrics = [t for t in tags if t not in intervals]
    assert {metric for metric, _ in table} == set(metrics) and len(table) == 2 * len(metrics)

    for (metric, run), (final, final_step, best, best_step, rule) in table.items():
        if metric not in events[run].Tags()["scalars"]:
            assert [final, final_step, best, best_step] == ["–"] * 4
            continue
        logged = events[run].Scalars(metric)
        assert [e.step for e in logged] == [1, 3]  # validated after steps 2 and 4 (Lightning logs them at 1, 3)
        values = [e.value for e in logged]
        minimize = metric.endswith(("loss", "mse"))  # val/loss, val/model_mse, val/ref_mse
        target = min(values) if minimize else max(values)
        assert rule == ("min" if minimize else "max")
        assert close(final, values[-1]) and int(final_step) == logged[-1].step
        assert close(best, target) and int(best_step) == next(e.step for e in logged if e.value == target)
    assert table["eval/win_rate_vs_base/brightness", "still/version_0"][0] == "–"
    final = table["eval/win_rate_vs_base/brightness", "moved/version_0"][0]  # "rate [low, high]" of step 4
    low, high = (events["moved/version_0"].Scalars(f"eval/win_rate_vs_base/brightness_{s}")[-1].value
                 for s in ("low", "high"))
    assert final.split()[1:] == [f"[{low:.4g},", f"{high:.4g}]"]
    # the two runs differ, so the table shows two different brightness curves
    assert table["eval/brightness", "still/version_0"][0] != table["eval/brightness", "moved/version_0"][0]

    image = Image.open(out)
    image.load()
    assert image.format == "PNG" and image.mode == "RGB"
    columns, panel_rows = min(len(metrics), compare.COLUMNS), math.ceil(len(metrics) / compare.COLUMNS)
    assert image.size == (columns * compare.PANEL_SIZE[0],
                          panel_rows * compare.PANEL_SIZE[1] + compare.LEGEND_PAD + 2 * compare.LEGEND_LINE)
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    assert len(colours) > 20  # text, axes, antialiasing: not one colour
    assert set(compare.PALETTE[:2]) <= colours  # both runs' lines are drawn


def test_compare_names_runs_below_a_parent_and_explains_what_is_missing(tmp_path, capsys):
    for version, value in ((0, 0.25), (1, 0.75)):
        logger = TensorBoardLogger(tmp_path / "runs", name="method", version=version)
        logger.log_metrics({"eval/score": value, "train/loss": 1.0}, step=10)
        logger.log_metrics({"eval/score": value / 2, "train/loss": 0.5}, step=20)
        logger.finalize("success")
    out = tmp_path / "figure.png"
    compare.main([str(tmp_path / "runs" / "method"), "--out", str(out), "--tag_prefixes+", "eval/"])
    table = rows(capsys.readouterr().out)
    assert list(table) == [("eval/score", "version_0"), ("eval/score", "version_1")]  # no val/* or train/* rows
    assert table["eval/score", "version_1"][:4] == ["0.375", "20", "0.75", "10"]
    assert Image.open(out).size == compare.figure_size(1, 2) == (compare.PANEL_SIZE[0], compare.PANEL_SIZE[1] + 48)

    (tmp_path / "empty" / "version_0").mkdir(parents=True)
    with pytest.raises(SystemExit, match=f"{tmp_path / 'empty'}: no TensorBoard event file"):
        compare.main([str(tmp_path / "runs"), str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="no scalar tagged val/\\* in any run: .*version_0, .*version_1"):
        compare.main([str(tmp_path / "runs"), "--tag_prefixes+", "val/"])


def test_compare_is_a_subcommand(run_cli, tmp_path):
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    logger.log_metrics({"val/loss": 0.5}, step=1)
    logger.log_metrics({"val/loss": 0.25}, step=2)
    logger.log_metrics({"val/loss": 0.375}, step=3)
    logger.finalize("success")
    proc = run_cli("compare", str(tmp_path / "run"), "--out", str(tmp_path / "c.png"))
    assert f"| val/loss | {(tmp_path / 'run' / 'version_0').resolve()} | 0.375 | 3 | 0.25 | 2 | min |" in proc.stdout
    assert (tmp_path / "c.png").stat().st_size > 0 and "wrote" in proc.stderr


def test_win_rate_panels_draw_the_50_percent_line_and_a_single_run_is_named_by_its_folder(tmp_path, monkeypatch):
    logger = TensorBoardLogger(tmp_path / "runs", name="demo", version=0)
    for step, value in ((99, 0.7), (199, 0.8)):  # far above 50%: the line is drawn only if the panel makes room
        logger.log_metrics({"eval/win_rate_vs_base/hidden": value, "eval/win_rate_vs_base/hidden_low": value - 0.1,
                            "eval/win_rate_vs_base/hidden_high": value + 0.1, "eval/score": value}, step=step)
    logger.finalize("success")
    monkeypatch.chdir(tmp_path)
    runs = compare.load_runs(["runs/demo"], ["eval/"])
    assert [run.name for run in runs] == ["runs/demo/version_0"]
    image = compare.draw_figure(runs, ["eval/"])
    assert [tag for tag, _ in compare.panels(runs, ["eval/"])] == ["eval/score", "eval/win_rate_vs_base/hidden"]
    width = compare.PANEL_SIZE[0]
    dashes = [sum(1 for x in range(k * width, (k + 1) * width) for y in range(compare.PANEL_SIZE[1])
                  if image.getpixel((x, y)) == (90, 90, 90)) for k in range(2)]
    assert dashes[0] < 10 and dashes[1] > 100, dashes  # a text pixel may share the grey; the dashes are many
