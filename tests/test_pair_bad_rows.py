"""Bad rows of Pick-a-Pic parquet shards and JSONL folders: raised with file, row and column, or skipped and counted."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.data import DataLoader

from lit_pref.datamodules import BadRowError, PreferencePairDataset

from pair_files import RED, BLUE, solid, encode, write_parquet, write_jsonl, jsonl_line


# --------------------------------------------------------------------------- #
# bad rows under "raise"
# --------------------------------------------------------------------------- #


def good_row(i=0):
    return {"caption": f"c{i}", "jpg_0": solid(RED), "jpg_1": solid(BLUE), "label_0": 1.0}


def test_undecodable_image_raises_lazily_naming_file_row_and_column(tmp_path):
    rows = [good_row(i) for i in range(4)]
    rows[2]["jpg_1"] = b"\x89PNG definitely not an image"
    path = write_parquet(tmp_path / "picks.parquet", rows)
    ds = PreferencePairDataset(path, resolution=16)  # metadata is fine: no error yet
    assert len(ds) == 4
    ds[1]
    with pytest.raises(BadRowError, match=r"picks\.parquet row 2: jpg_1 cannot be decoded as an image"):
        ds[2]


def test_truncated_jpeg_raises(tmp_path):
    rows = [good_row(i) for i in range(2)]
    rows[1]["jpg_0"] = encode(solid(RED, (32, 32)), "JPEG")[:60]
    ds = PreferencePairDataset(write_parquet(tmp_path / "picks.parquet", rows), resolution=16)
    with pytest.raises(BadRowError, match=r"picks\.parquet row 1: jpg_0"):
        ds[1]


@pytest.mark.parametrize("column", ["jpg_1", "label_0", "caption"])
def test_missing_parquet_column_is_a_file_level_error(tmp_path, column):
    path = write_parquet(tmp_path / "picks.parquet", [good_row()], drop=(column,))
    with pytest.raises(BadRowError, match=rf"picks\.parquet.*missing column '{column}'"):
        PreferencePairDataset(path, resolution=16)


@pytest.mark.parametrize(
    "label, shown", [(0.7, "label_0 = 0.7"), (float("nan"), "label_0 = nan"), (None, "label_0 = None"),
                     (2.0, "label_0 = 2.0")]
)
def test_bad_parquet_label_raises_with_row(tmp_path, label, shown):
    rows = [good_row(i) for i in range(5)]
    rows[3]["label_0"] = label
    path = write_parquet(tmp_path / "picks.parquet", rows)
    with pytest.raises(BadRowError) as info:
        PreferencePairDataset(path, resolution=16)
    message = str(info.value)
    assert message.startswith("picks.parquet row 3: "), message
    assert shown in message and "is not one of 0, 0.5, 1" in message


def test_non_string_caption_raises_with_row(tmp_path):
    rows = [good_row(i) for i in range(3)]
    rows[1]["caption"] = None
    with pytest.raises(BadRowError, match=r"picks\.parquet row 1: caption is not a string"):
        PreferencePairDataset(write_parquet(tmp_path / "picks.parquet", rows), resolution=16)


def test_bad_row_error_is_a_value_error():
    assert issubclass(BadRowError, ValueError)


@pytest.mark.parametrize(
    "bad_line, pattern",
    [
        (jsonl_line(image_1=...), r"pairs\.jsonl line 3: missing key 'image_1'"),
        ('{"caption": "c", "image_0": "a.png",', r"pairs\.jsonl line 3: invalid JSON"),
        (jsonl_line(image_0="nope/missing.png"), r"pairs\.jsonl line 3: image_0 file does not exist: .*missing\.png"),
        (jsonl_line(label_0=0.7), r"pairs\.jsonl line 3: label_0 = 0\.7 is not one of 0, 0\.5, 1"),
        (jsonl_line(label_0=True), r"pairs\.jsonl line 3: label_0 = True"),
        (jsonl_line(caption=3), r"pairs\.jsonl line 3: caption is not a string"),
        ('["not", "an", "object"]', r"pairs\.jsonl line 3: expected a JSON object"),
    ],
)
def test_bad_jsonl_line_raises_with_line_number(image_dir, bad_line, pattern):
    # line 2 is blank: line numbers count physical lines, 1-based
    path = write_jsonl(image_dir / "pairs.jsonl", [jsonl_line(), "", bad_line, jsonl_line()])
    with pytest.raises(BadRowError, match=pattern):
        PreferencePairDataset(path, resolution=16)


def test_undecodable_jsonl_image_raises_with_line_number(image_dir):
    (image_dir / "broken.png").write_bytes(b"garbage")
    path = write_jsonl(image_dir / "pairs.jsonl", [jsonl_line(), jsonl_line(image_1="broken.png")])
    ds = PreferencePairDataset(path, resolution=16)
    with pytest.raises(BadRowError, match=r"pairs\.jsonl line 2: image_1 cannot be decoded"):
        ds[1]


def test_unsupported_paths(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BadRowError, match="no \\*.parquet"):
        PreferencePairDataset(tmp_path / "empty_dir")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(BadRowError, match="unsupported"):
        PreferencePairDataset(tmp_path / "data.csv")
    with pytest.raises(FileNotFoundError):
        PreferencePairDataset(tmp_path / "missing.parquet")


# --------------------------------------------------------------------------- #
# "skip"
# --------------------------------------------------------------------------- #


def test_skip_drops_bad_metadata_at_setup_and_undecodable_rows_per_batch(tmp_path, caplog):
    rows = [good_row(i) for i in range(7)]
    rows[1]["label_0"] = 0.7
    rows[3]["caption"] = None
    rows[5]["label_0"] = float("nan")
    rows[4]["jpg_0"] = b"not an image"
    path = write_parquet(tmp_path / "picks.parquet", rows)
    with caplog.at_level(logging.WARNING, logger="lit_pref.datamodules.preference_pairs"):
        ds = PreferencePairDataset(path, resolution=16, on_bad_row="skip")
    assert len(ds) == 4  # rows 0, 2, 4, 6 (row 4's image is only found bad when read)
    assert ds.captions == ["c0", "c2", "c4", "c6"]
    setup_warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(setup_warnings) == 1
    assert "skipped 3 of 7 rows" in setup_warnings[0]
    assert "picks.parquet row 1: label_0 = 0.7" in setup_warnings[0]
    assert "picks.parquet row 3: caption" in setup_warnings[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lit_pref.datamodules.preference_pairs"):
        batch = next(iter(DataLoader(ds, batch_size=8, collate_fn=ds.collate)))
    assert batch["num_skipped"] == 1
    assert batch["captions"] == ["c0", "c2", "c6"]
    assert batch["images_0"].shape == (3, 3, 16, 16) and batch["label_0"].shape == (3,)
    assert batch["original_sizes"].shape == (3, 2) and batch["crop_top_left"].shape == (3, 2)
    assert any("picks.parquet row 4: jpg_0" in r.getMessage() for r in caplog.records)


def test_skip_in_jsonl_drops_bad_lines(image_dir, caplog):
    path = write_jsonl(image_dir / "pairs.jsonl", [
        jsonl_line(), "{broken", jsonl_line(image_1="missing.png"), jsonl_line(caption="kept")])
    with caplog.at_level(logging.WARNING):
        ds = PreferencePairDataset(path, resolution=16, on_bad_row="skip")
    assert ds.captions == ["c", "kept"]
    assert "pairs.jsonl line 2" in caplog.text and "pairs.jsonl line 3" in caplog.text


def test_all_dropped_batch_has_empty_tensors_and_the_count(tmp_path):
    rows = [good_row(0), good_row(1)]
    rows[0]["jpg_0"] = b"x"
    rows[1]["jpg_1"] = b"y"
    ds = PreferencePairDataset(write_parquet(tmp_path / "picks.parquet", rows), resolution=16,
                               on_bad_row="skip")
    assert ds[0] is None and ds[1] is None
    batch = ds.collate([ds[0], ds[1]])
    assert batch["num_skipped"] == 2
    assert batch["images_0"].shape == (0, 3, 16, 16) and batch["images_1"].shape == (0, 3, 16, 16)
    assert batch["label_0"].shape == (0,) and batch["captions"] == []
    assert batch["original_sizes"].shape == (0, 2) and batch["original_sizes"].dtype == torch.long
    assert batch["crop_top_left"].shape == (0, 2)


def test_empty_after_filtering_is_an_error_naming_the_file(tmp_path):
    rows = [good_row(0), good_row(1)]
    rows[0]["label_0"] = 0.3
    rows[1]["label_0"] = -1.0
    with pytest.raises(BadRowError, match=r"no valid preference pairs in .*picks\.parquet"):
        PreferencePairDataset(write_parquet(tmp_path / "picks.parquet", rows), on_bad_row="skip")


