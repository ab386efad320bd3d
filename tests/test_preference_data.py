"""Tests of the preference-pair data layer (lit_pref.datamodules.preference_pairs / synthetic)."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, SequentialSampler

from lit_pref.datamodules import (
    BadRowError,
    EpochSampler,
    PreferencePairDataModule,
    PreferencePairDataset,
    SyntheticPreferenceDataModule,
    collate_pairs,
    draw_shape,
    make_synthetic_pairs,
)
from lit_pref.datamodules.synthetic import BACKGROUNDS, COLOURS

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def solid(colour, size=(16, 16)) -> np.ndarray:
    """uint8 [H, W, 3] of one colour; size = (H, W)."""
    image = np.empty((*size, 3), dtype=np.uint8)
    image[:] = colour
    return image


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def expected_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def write_parquet(path: Path, rows: list[dict], drop: tuple[str, ...] = ()) -> Path:
    """rows: dicts with caption, jpg_0, jpg_1 (arrays or bytes), label_0, extras."""
    columns: dict[str, list] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, np.ndarray):
                value = encode(value)
            columns.setdefault(key, []).append(value)
    for key in drop:
        columns.pop(key)
    types = {"caption": pa.string(), "jpg_0": pa.binary(), "jpg_1": pa.binary(), "label_0": pa.float64()}
    table = pa.table({k: pa.array(v, type=types.get(k)) for k, v in columns.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def colour_rows(n: int, start: int = 0) -> list[dict]:
    """Row i: image 0 has red channel 10 * i (encodes the row), image 1 is blue."""
    return [
        {
            "caption": f"caption {start + i}",
            "jpg_0": solid((10 * (start + i), 100, 0)),
            "jpg_1": solid(BLUE),
            "label_0": [1.0, 0.0, 0.5][(start + i) % 3],
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, lines: list) -> Path:
    with open(path, "w") as f:
        for line in lines:
            f.write(line if isinstance(line, str) else json.dumps(line))
            f.write("\n")
    return path


# --------------------------------------------------------------------------- #
# round trips
# --------------------------------------------------------------------------- #


def test_parquet_round_trip_colours_sizes_captions_labels(tmp_path):
    left_right = solid(RED, (16, 16))
    left_right[:, 8:] = BLUE
    rows = [
        # non-square images: 24 x 32 (H x W) and 32 x 24, get resized + centre-cropped
        {"caption": "a", "jpg_0": solid(RED, (24, 32)), "jpg_1": solid(GREEN, (32, 24)), "label_0": 1.0,
         "critique": "extra columns are ignored"},
        {"caption": "b", "jpg_0": left_right, "jpg_1": solid(BLUE), "label_0": 0.0, "critique": ""},
        {"caption": "c", "jpg_0": solid(GREEN), "jpg_1": solid(RED), "label_0": 0.5, "critique": ""},
    ]
    path = write_parquet(tmp_path / "picks.parquet", rows)
    ds = PreferencePairDataset(path, resolution=16)
    assert len(ds) == 3
    batch = collate_pairs([ds[i] for i in range(3)])

    assert batch["images_0"].shape == (3, 3, 16, 16) and batch["images_1"].shape == (3, 3, 16, 16)
    assert batch["images_0"].dtype == torch.float32
    assert batch["images_0"].min() >= -1 and batch["images_0"].max() <= 1
    # pure colours survive resizing exactly
    assert torch.allclose(batch["images_0"][0], expected_tensor(solid(RED)))
    assert torch.allclose(batch["images_1"][0], expected_tensor(solid(GREEN)))
    # an image already at the resolution comes back pixel-exact (not flipped, not shifted)
    assert torch.equal(batch["images_0"][1], expected_tensor(left_right))
    assert torch.allclose(batch["images_0"][2], expected_tensor(solid(GREEN)))
    assert batch["captions"] == ["a", "b", "c"]
    assert batch["label_0"].dtype == torch.float32
    assert batch["label_0"].tolist() == [1.0, 0.0, 0.5]  # ties passed through
    assert batch["original_sizes"].dtype == torch.long
    assert batch["original_sizes"].tolist() == [[24, 32], [16, 16], [16, 16]]
    # 24 x 32 -> 16 x 21 (shorter side 16); centre crop starts at left = round(5 / 2) = 2
    assert batch["crop_top_left"].tolist() == [[0, 2], [0, 0], [0, 0]]
    assert batch["num_skipped"] == 0


def test_resize_shorter_side_then_centre_crop_keeps_the_centre(tmp_path):
    # 64 x 32 (H x W): top quarter red, middle half green, bottom quarter blue.
    image = solid(GREEN, (64, 32))
    image[:16] = RED
    image[48:] = BLUE
    path = write_parquet(tmp_path / "tall.parquet",
                         [{"caption": "x", "jpg_0": image, "jpg_1": image, "label_0": 1.0}])
    item = PreferencePairDataset(path, resolution=16)[0]
    # resized to 32 x 16, the centre 16 x 16 is the (green) middle half
    assert item["image_0"].shape == (3, 16, 16)
    assert torch.allclose(item["image_0"][:, 2:-2], expected_tensor(solid(GREEN, (12, 16))), atol=0.05)
    assert item["crop_top_left"].tolist() == [8, 0]
    assert item["original_size"].tolist() == [64, 32]


def test_multi_shard_directory_is_read_in_name_order(tmp_path):
    shards = tmp_path / "shards"
    # written out of order on purpose
    write_parquet(shards / "part-2.parquet", colour_rows(2, start=5))
    write_parquet(shards / "part-0.parquet", colour_rows(3, start=0))
    write_parquet(shards / "part-1.parquet", colour_rows(2, start=3))
    (shards / "notes.txt").write_text("not a shard")
    ds = PreferencePairDataset(shards, resolution=16)
    assert len(ds) == 7
    assert ds.captions == [f"caption {i}" for i in range(7)]
    for i in (6, 0, 4, 2):  # random access across shards
        item = ds[i]
        red = (item["image_0"][0, 0, 0] + 1) * 127.5
        assert round(red.item()) == 10 * i
        assert item["label_0"].item() == [1.0, 0.0, 0.5][i % 3]
        assert torch.allclose(item["image_1"], expected_tensor(solid(BLUE)))


def test_jsonl_image_folder_round_trip(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(solid(RED, (20, 20))).save(images / "red.png")
    Image.fromarray(solid(BLUE, (16, 16))).save(images / "blue.png")
    Image.fromarray(solid(GREEN, (16, 16))).save(images / "green.bmp")
    absolute = tmp_path / "elsewhere"
    absolute.mkdir()
    Image.fromarray(solid((255, 255, 0), (16, 16))).convert("L").save(absolute / "grey.png")  # not RGB
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"caption": "red vs blue", "image_0": "images/red.png", "image_1": "images/blue.png", "label_0": 1},
        "",  # blank lines are ignored
        {"caption": "green vs grey", "image_0": "images/green.bmp", "image_1": str(absolute / "grey.png"),
         "label_0": 0.5},
    ])
    ds = PreferencePairDataset(path, resolution=16, allow_outside_paths=True)  # the absolute path
    assert len(ds) == 2
    batch = collate_pairs([ds[0], ds[1]])
    assert batch["captions"] == ["red vs blue", "green vs grey"]
    assert batch["label_0"].tolist() == [1.0, 0.5]
    assert torch.allclose(batch["images_0"][0], expected_tensor(solid(RED)))
    assert torch.allclose(batch["images_1"][0], expected_tensor(solid(BLUE)))
    assert torch.allclose(batch["images_0"][1], expected_tensor(solid(GREEN)))
    grey = batch["images_1"][1]
    assert grey.shape == (3, 16, 16) and torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    assert batch["original_sizes"].tolist() == [[20, 20], [16, 16]]


# --------------------------------------------------------------------------- #
# joint crop / flip, reproducibility
# --------------------------------------------------------------------------- #


def gradient_image(height=16, width=48) -> np.ndarray:
    """Red channel = 5 * column, so a crop's left edge and a flip can be read back."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = (5 * np.arange(width))[None, :]
    image[..., 1] = 60
    return image


def test_random_crop_and_flip_are_joint_for_the_pair(tmp_path):
    image = gradient_image()
    rows = [{"caption": str(i), "jpg_0": image, "jpg_1": image.copy(), "label_0": 1.0} for i in range(24)]
    path = write_parquet(tmp_path / "pairs.parquet", rows)
    ds = PreferencePairDataset(path, resolution=16, center_crop=False, random_flip=True, seed=3)
    flips, lefts = [], []
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["image_0"], item["image_1"]), f"pair {i} got different crops/flips"
        red = torch.round((item["image_0"][0, 0] + 1) * 127.5).long()  # first row, 16 columns
        flipped = bool(red[0] > red[-1])
        top, left = item["crop_top_left"].tolist()
        assert top == 0
        # crop_top_left is in the coordinates of the (flipped) resized image
        expected_first = 5 * (47 - left) if flipped else 5 * left
        assert red[0].item() == expected_first
        assert torch.all((red[1:] - red[:-1]) == (-5 if flipped else 5))
        flips.append(flipped)
        lefts.append(left)
    assert any(flips) and not all(flips), "random_flip should flip about half of the pairs"
    assert len(set(lefts)) > 5, "random crop should move the crop window"
    assert 0 <= min(lefts) and max(lefts) <= 48 - 16


def test_joint_crop_and_flip_for_images_of_different_original_sizes(tmp_path):
    # image 1 is image 0 at twice the size: same relative crop => same content
    small = gradient_image(16, 48)
    large = np.asarray(Image.fromarray(small).resize((96, 32), Image.NEAREST))
    rows = [{"caption": str(i), "jpg_0": small, "jpg_1": large, "label_0": 0.0} for i in range(8)]
    path = write_parquet(tmp_path / "pairs.parquet", rows)
    ds = PreferencePairDataset(path, resolution=16, center_crop=False, random_flip=True)
    for i in range(len(ds)):
        item = ds[i]
        assert torch.allclose(item["image_0"], item["image_1"], atol=0.1)


def test_augmentation_is_reproducible_from_the_seed_and_differs_between_seeds(tmp_path):
    image = gradient_image()
    rows = [{"caption": str(i), "jpg_0": image, "jpg_1": image, "label_0": 1.0} for i in range(16)]
    path = write_parquet(tmp_path / "pairs.parquet", rows)

    def crops(seed):
        ds = PreferencePairDataset(path, resolution=16, center_crop=False, random_flip=True, seed=seed)
        return torch.stack([ds[i]["image_0"] for i in range(len(ds))])

    assert torch.equal(crops(0), crops(0))
    assert not torch.equal(crops(0), crops(1))


def test_centre_crop_without_flip_is_deterministic(tmp_path):
    image = gradient_image()
    path = write_parquet(tmp_path / "p.parquet", [{"caption": "x", "jpg_0": image, "jpg_1": image, "label_0": 1}])
    item = PreferencePairDataset(path, resolution=16)[0]
    assert item["crop_top_left"].tolist() == [0, 16]
    assert round(((item["image_0"][0, 0, 0] + 1) * 127.5).item()) == 5 * 16


def test_workers_give_the_same_items_as_the_main_process(tmp_path):
    image = gradient_image()
    rows = [{"caption": str(i), "jpg_0": image, "jpg_1": image, "label_0": 1.0} for i in range(8)]
    path = write_parquet(tmp_path / "pairs.parquet", rows)
    ds = PreferencePairDataset(path, resolution=16, center_crop=False, random_flip=True)
    ds[0]  # fill the shard cache in the parent: must not break the workers
    serial = next(iter(DataLoader(ds, batch_size=8, collate_fn=ds.collate)))
    parallel = torch.cat([b["images_0"] for b in DataLoader(ds, batch_size=2, num_workers=2,
                                                            collate_fn=ds.collate)])
    assert torch.equal(serial["images_0"], parallel)


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


@pytest.fixture
def image_dir(tmp_path):
    Image.fromarray(solid(RED)).save(tmp_path / "a.png")
    Image.fromarray(solid(BLUE)).save(tmp_path / "b.png")
    return tmp_path


def jsonl_line(**overrides):
    line = {"caption": "c", "image_0": "a.png", "image_1": "b.png", "label_0": 1}
    line.update(overrides)
    return {k: v for k, v in line.items() if v is not ...}


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


# --------------------------------------------------------------------------- #
# DataModule
# --------------------------------------------------------------------------- #


def test_val_split_is_deterministic_disjoint_and_complete(tmp_path):
    path = write_parquet(tmp_path / "picks.parquet", colour_rows(20))

    def split(seed):
        dm = PreferencePairDataModule(str(path), val_fraction=0.25, resolution=16, seed=seed, batch_size=4)
        dm.setup("fit")
        return dm, dm.train_dataset.captions, dm.val_dataset.captions

    dm, train, val = split(0)
    assert len(val) == 5 and len(train) == 15
    assert not set(train) & set(val)
    assert sorted(train + val, key=lambda c: int(c.split()[1])) == [f"caption {i}" for i in range(20)]
    assert split(0)[1:] == (train, val)
    assert split(1)[2] != val

    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train_loader.sampler, EpochSampler) and train_loader.sampler.shuffle and not train_loader.drop_last
    assert isinstance(val_loader.sampler, SequentialSampler)
    val_batches = list(val_loader)
    assert [c for b in val_batches for c in b["captions"]] == val
    assert [c for b in dm.val_dataloader() for c in b["captions"]] == val
    # ties (and all other labels) are passed through untouched
    labels = {c: [1.0, 0.0, 0.5][int(c.split()[1]) % 3] for c in val}
    assert [x for b in val_batches for x in b["label_0"].tolist()] == [labels[c] for c in val]
    train_labels = [x for b in train_loader for x in b["label_0"].tolist()]
    assert len(train_labels) == 15 and 0.5 in train_labels


def test_validation_data_are_never_augmented(tmp_path):
    image = gradient_image()
    rows = [{"caption": str(i), "jpg_0": image, "jpg_1": image, "label_0": 1.0} for i in range(12)]
    path = write_parquet(tmp_path / "pairs.parquet", rows)
    dm = PreferencePairDataModule(str(path), val_fraction=0.5, resolution=16, center_crop=False,
                                  random_flip=True, batch_size=6)
    dm.setup("fit")
    val = next(iter(dm.val_dataloader()))
    assert (val["crop_top_left"] == torch.tensor([0, 16])).all()
    assert torch.equal(val["images_0"], val["images_0"][:1].expand_as(val["images_0"]))
    train = dm.train_dataset
    assert len({tuple(train[i]["crop_top_left"].tolist()) for i in range(len(train))}) > 1


def test_datamodule_with_val_path_and_jsonl(tmp_path, image_dir):
    train = write_parquet(tmp_path / "train.parquet", colour_rows(6))
    val = write_jsonl(image_dir / "val.jsonl", [jsonl_line(caption="v1"), jsonl_line(caption="v2", label_0=0.5)])
    dm = PreferencePairDataModule(str(train), val_path=str(val), resolution=16, batch_size=4, val_batch_size=1)
    dm.setup("fit")
    assert len(dm.train_dataset) == 6 and dm.val_dataset.captions == ["v1", "v2"]
    val_batches = list(dm.val_dataloader())
    assert [b["label_0"].tolist() for b in val_batches] == [[1.0], [0.5]]
    assert [len(b["captions"]) for b in dm.train_dataloader()] == [4, 2]  # drop_last=False


def test_datamodule_arguments(tmp_path):
    path = write_parquet(tmp_path / "picks.parquet", colour_rows(4))
    with pytest.raises(ValueError, match="val_path or val_fraction"):
        PreferencePairDataModule(str(path), val_path=str(path), val_fraction=0.1)
    dm = PreferencePairDataModule(str(path), resolution=16, num_workers=2)
    dm.setup("fit")
    assert dm.train_dataloader().persistent_workers
    assert dm.val_dataloader() == []  # no validation set


def test_every_init_argument_is_documented():
    import inspect

    for cls in (PreferencePairDataModule, SyntheticPreferenceDataModule):
        doc = inspect.getdoc(cls)
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name == "self":
                continue
            assert f"    {name}:" in doc, f"{cls.__name__}: argument {name} is not documented"
            assert param.annotation is not inspect.Parameter.empty


# --------------------------------------------------------------------------- #
# synthetic pairs
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


def test_parquet_rows_across_small_row_groups_with_bounded_cache(tmp_path):
    """Rows are read one row group at a time; every row lands right, and the cache stays bounded."""
    from lit_pref.datamodules.preference_pairs import CACHED_ROW_GROUPS

    def png(value: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="png")
        return buf.getvalue()

    n = 10
    table = pa.table({"caption": [f"c{i}" for i in range(n)], "jpg_0": [png(20 * i) for i in range(n)],
                      "jpg_1": [png(255 - 20 * i) for i in range(n)], "label_0": [1.0] * n})
    pq.write_table(table, tmp_path / "rg.parquet", row_group_size=3)  # groups of 3, 3, 3, 1 rows
    ds = PreferencePairDataset(str(tmp_path / "rg.parquet"), resolution=8)
    for i in reversed(range(n)):
        item = ds[i]
        assert round(float((item["image_0"][0, 0, 0] + 1) * 127.5)) == 20 * i
        assert round(float((item["image_1"][0, 0, 0] + 1) * 127.5)) == 255 - 20 * i
    assert len(ds._tables) == CACHED_ROW_GROUPS


def test_test_split_is_centre_cropped_and_required_for_test(tmp_path):
    path = make_synthetic_pairs(tmp_path / "pairs.parquet", num_pairs=6, resolution=16, seed=0)
    dm = PreferencePairDataModule(train_path=str(path), test_path=str(path), resolution=16, random_flip=True,
                                  center_crop=False, batch_size=6)
    batch = next(iter(dm.test_dataloader()))
    assert batch["images_0"].shape[0] == 6
    assert dm.test_dataset.center_crop and not dm.test_dataset.random_flip
    with pytest.raises(ValueError, match="test_path"):
        PreferencePairDataModule(train_path=str(path), resolution=16).test_dataloader()
