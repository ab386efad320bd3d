"""The synthetic coloured-shape pair generator and its data module: labels from captions, determinism, ties, shards,
atomic writes, regeneration only when parameters change."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lit_pref.datamodules import (
    PreferencePairDataset,
    SyntheticPreferenceDataModule,
    draw_shape,
    make_synthetic_pairs,
)
from lit_pref.datamodules.synthetic import BACKGROUNDS, COLOURS

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #




def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def read_shape(image: np.ndarray, background: str) -> tuple[str, str]:
    """(colour, shape) of the single shape on the image (pure colours, 32 px)."""
    mask = (image != np.array(BACKGROUNDS[background], dtype=np.uint8)).any(-1)
    pixels = {tuple(p) for p in image[mask]}
    assert len(pixels) == 1, f"expected one colour, got {pixels}"
    (pixel,) = pixels
    colour = [name for name, rgb in COLOURS.items() if rgb == tuple(int(v) for v in pixel)]
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    # measured at 32 px: square 1.0, circle 0.73-0.94, triangle 0.50-0.67
    shape = "square" if fill > 0.97 else "circle" if fill > 0.7 else "triangle"
    return colour[0], shape


def test_draw_shape():
    image = draw_shape("square", "magenta", 10, (8.0, 20.0), "black", 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert tuple(image[8, 20]) == COLOURS["magenta"] and tuple(image[0, 0]) == (0, 0, 0)
    assert (image != 0).any(-1).sum() == 100
    assert read_shape(draw_shape("circle", "cyan", 16, (16, 16), "white", 32), "white") == ("cyan", "circle")
    assert read_shape(draw_shape("triangle", "red", 16, (16, 16), "white", 32), "white") == ("red", "triangle")
    triangle = draw_shape("triangle", "red", 16, (16, 16), "white", 32)
    assert (triangle[10] != 255).any(-1).sum() < (triangle[22] != 255).any(-1).sum()  # upright


def test_synthetic_pairs_winner_matches_caption(tmp_path):
    path = make_synthetic_pairs(tmp_path / "syn.parquet", num_pairs=96, resolution=32, seed=5)
    table = pq.read_table(path).to_pylist()
    assert len(table) == 96
    sides = []
    for row in table:
        _, colour, shape, _, _, background, _ = row["caption"].split()
        assert colour in COLOURS and shape in ("circle", "square", "triangle") and background in BACKGROUNDS
        assert row["label_0"] in (0.0, 1.0)
        winner, loser = (row["jpg_0"], row["jpg_1"]) if row["label_0"] == 1.0 else (row["jpg_1"], row["jpg_0"])
        winner_img, loser_img = decode_png(winner), decode_png(loser)
        assert winner_img.shape == (32, 32, 3)
        assert read_shape(winner_img, background) == (colour, shape), row["caption"]
        assert read_shape(loser_img, background) != (colour, shape), row["caption"]
        sides.append(row["label_0"])
    assert 0.25 < np.mean(sides) < 0.75  # the winner's side is random


def test_synthetic_pairs_are_deterministic(tmp_path):
    a = pq.read_table(make_synthetic_pairs(tmp_path / "a.parquet", num_pairs=32, tie_fraction=0.2, seed=1))
    b = pq.read_table(make_synthetic_pairs(tmp_path / "b.parquet", num_pairs=32, tie_fraction=0.2, seed=1))
    c = pq.read_table(make_synthetic_pairs(tmp_path / "c.parquet", num_pairs=32, tie_fraction=0.2, seed=2))
    assert a.equals(b)  # byte-identical images, same captions and labels
    assert a.column("jpg_0").to_pylist() != c.column("jpg_0").to_pylist()
    assert a.column("caption").to_pylist() != c.column("caption").to_pylist()


def test_synthetic_tie_fraction(tmp_path):
    path = make_synthetic_pairs(tmp_path / "t.parquet", num_pairs=40, tie_fraction=0.25, seed=0)
    rows = pq.read_table(path).to_pylist()
    ties = [r for r in rows if r["label_0"] == 0.5]
    assert len(ties) == 10
    for row in ties:  # both images of a tie are correct
        _, colour, shape, _, _, background, _ = row["caption"].split()
        assert read_shape(decode_png(row["jpg_0"]), background) == (colour, shape)
        assert read_shape(decode_png(row["jpg_1"]), background) == (colour, shape)
    none = pq.read_table(make_synthetic_pairs(tmp_path / "n.parquet", num_pairs=40, seed=0))
    assert 0.5 not in none.column("label_0").to_pylist()


def test_synthetic_shards_and_speed(tmp_path):
    import time

    start = time.perf_counter()
    out = make_synthetic_pairs(tmp_path / "shards", num_pairs=256, resolution=32, rows_per_file=100)
    assert time.perf_counter() - start < 2.0
    assert sorted(p.name for p in out.iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    ds = PreferencePairDataset(out, resolution=32)
    assert len(ds) == 256
    assert sorted(os.listdir(tmp_path)) == ["shards"]  # no temporary directories left
    # regenerate in place (replaces the directory)
    make_synthetic_pairs(tmp_path / "shards", num_pairs=50, rows_per_file=100)
    assert len(PreferencePairDataset(out, resolution=32)) == 50
    assert sorted(os.listdir(tmp_path)) == ["shards"]


def test_synthetic_write_is_atomic(tmp_path, monkeypatch):
    target = make_synthetic_pairs(tmp_path / "train.parquet", num_pairs=8, seed=0)
    assert sorted(os.listdir(tmp_path)) == ["train.parquet"]
    before = target.read_bytes()

    import lit_pref.formats.pairs as pairs_format

    def interrupted_write(table, where, *args, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pairs_format.pq, "write_table", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_pairs(tmp_path / "train.parquet", num_pairs=8, seed=1)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_pairs(tmp_path / "fresh.parquet", num_pairs=8, seed=1)
    assert sorted(os.listdir(tmp_path)) == ["train.parquet"]  # no temp files, no half-written file
    assert target.read_bytes() == before


def test_synthetic_datamodule_regenerates_only_when_parameters_change(tmp_path):
    data_dir = tmp_path / "syn"

    def prepared(**kwargs):
        dm = SyntheticPreferenceDataModule(data_dir=str(data_dir), num_pairs=16, num_val_pairs=4,
                                           resolution=16, batch_size=4, **kwargs)
        dm.prepare_data()
        return dm

    def mtimes():
        return {name: os.stat(data_dir / name).st_mtime_ns for name in ("train.parquet", "val.parquet")}

    dm = prepared()
    assert sorted(os.listdir(data_dir)) == ["meta.json", "train.parquet", "val.parquet"]
    first = mtimes()
    prepared()
    assert mtimes() == first  # same parameters: nothing rewritten

    dm.setup("fit")
    assert len(dm.train_dataset) == 16 and len(dm.val_dataset) == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["images_0"].shape == (4, 3, 16, 16) and batch["num_skipped"] == 0
    train_bytes = (data_dir / "train.parquet").read_bytes()

    dm2 = prepared(tie_fraction=0.5)
    second = mtimes()
    assert second["train.parquet"] != first["train.parquet"] and second["val.parquet"] != first["val.parquet"]
    assert json.loads((data_dir / "meta.json").read_text())["tie_fraction"] == 0.5
    dm2.setup("fit")
    assert dm2.train_dataset.labels.count(0.5) == 8

    # a missing file triggers regeneration too; seed changes the data
    (data_dir / "val.parquet").unlink()
    prepared(tie_fraction=0.5)
    assert (data_dir / "val.parquet").is_file()
    prepared(seed=7)
    assert (data_dir / "train.parquet").read_bytes() != train_bytes


def test_synthetic_datamodule_setup_without_prepare_data_fails_clearly(tmp_path):
    dm = SyntheticPreferenceDataModule(data_dir=str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        dm.setup("fit")


