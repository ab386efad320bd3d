"""Tests of the preference-pair data layer (lit_pref.datamodules: pair rows, batches and the pair data module)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, SequentialSampler

from lit_pref.datamodules import (
    EpochSampler,
    PreferencePairDataModule,
    PreferencePairDataset,
    SyntheticPreferenceDataModule,
    collate_pairs,
    make_synthetic_pairs,
)

from pair_files import RED, GREEN, BLUE, solid, expected_tensor, write_parquet, colour_rows, write_jsonl, jsonl_line


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
