"""Inputs an adversarial user found: high-bit-depth and transparent images, undecodable or deeply nested JSONL
lines, dictionary-encoded and string_view caption columns, image paths leaving the JSONL's folder."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lit_pref.datamodules import BadRowError, DialogueFormatError, PreferencePairDataset, collate_pairs, read_dialogues
from pair_files import encode, solid, write_jsonl

BLUE = (0, 0, 255)


def pair_file(tmp_path, image_0: Image.Image, fmt: str = "PNG"):
    image_0.save(tmp_path / f"a.{fmt.lower()}", format=fmt)
    Image.fromarray(solid(BLUE)).save(tmp_path / "b.png")
    return write_jsonl(tmp_path / "pairs.jsonl", [
        {"caption": "c", "image_0": f"a.{fmt.lower()}", "image_1": "b.png", "label_0": 1}])


def first_image(path, **kwargs) -> torch.Tensor:
    return PreferencePairDataset(path, resolution=16, **kwargs)[0]["image_0"]


def test_sixteen_bit_grey_is_scaled_by_its_range_not_clipped(tmp_path):
    grey = np.full((16, 16), 32768, dtype=np.uint16)  # mid-grey in 16 bits; PIL's convert made it white
    image = first_image(pair_file(tmp_path, Image.fromarray(grey)))
    torch.testing.assert_close(image, torch.full((3, 16, 16), 128 / 127.5 - 1))


def test_float_tiff_with_nan_or_outside_0_1_is_a_bad_row_naming_file_and_line(tmp_path):
    values = np.full((16, 16), 0.25, dtype=np.float32)
    assert first_image(pair_file(tmp_path, Image.fromarray(values), "TIFF")).mean().item() == pytest.approx(
        64 / 127.5 - 1)
    values[3, 4] = np.nan  # PIL's convert made it black
    path = pair_file(tmp_path, Image.fromarray(values), "TIFF")
    with pytest.raises(BadRowError, match=r"pairs\.jsonl line 1: image_0 .*non-finite"):
        first_image(path)
    ds = PreferencePairDataset(path, resolution=16, on_bad_row="skip")
    assert ds[0] is None and collate_pairs([ds[0]])["num_skipped"] == 1
    path = pair_file(tmp_path, Image.fromarray(np.linspace(0, 1000, 256, dtype=np.float32).reshape(16, 16)), "TIFF")
    with pytest.raises(BadRowError, match=r"line 1: image_0 .*outside the mode's range \[0, 1\]"):
        first_image(path)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red ...
    rgba[:, :8, 3] = 255  # ... opaque on the left half, fully transparent on the right half
    image = first_image(pair_file(tmp_path, Image.fromarray(rgba)))
    torch.testing.assert_close(image[:, :, :8], torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 16, 8))
    torch.testing.assert_close(image[:, :, 8:], torch.ones(3, 16, 8))  # white, not the hidden red


def test_jsonl_lines_that_are_not_utf8_or_nest_too_deeply_are_bad_rows(tmp_path):
    Image.fromarray(solid(BLUE)).save(tmp_path / "b.png")
    good = json.dumps({"caption": "c", "image_0": "b.png", "image_1": "b.png", "label_0": 1}).encode()
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"caption": "caf\xe9"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n" + good + b"\n")
    with pytest.raises(BadRowError, match=r"pairs\.jsonl line 1: not valid UTF-8 \(byte 0xe9 at column 17\)"):
        PreferencePairDataset(path, resolution=16)
    ds = PreferencePairDataset(path, resolution=16, on_bad_row="skip")
    assert len(ds) == 1 and ds.skipped_at_setup == 2

    dialogues = tmp_path / "d.jsonl"
    dialogues.write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(DialogueFormatError, match=r"d\.jsonl line 1: invalid JSON \(nested too deeply\)"):
        read_dialogues(dialogues)
    dialogues.write_bytes(b'{"dialogue_id": "caf\xe9"}\n')
    with pytest.raises(DialogueFormatError, match=r"d\.jsonl line 1: not valid UTF-8"):
        read_dialogues(dialogues)


@pytest.mark.parametrize("as_type", [lambda a: a.dictionary_encode(), lambda a: a.cast(pa.string_view()),
                                     lambda a: a.cast(pa.large_string())], ids=["category", "string_view", "large"])
def test_every_arrow_string_type_is_a_caption(tmp_path, as_type):
    image = encode(solid(BLUE))
    table = pa.table({"caption": as_type(pa.array(["a red circle", "a blue square"])),
                      "jpg_0": pa.array([image] * 2, pa.binary()), "jpg_1": pa.array([image] * 2, pa.binary()),
                      "label_0": pa.array([1.0, 0.0])})
    pq.write_table(table, tmp_path / "p.parquet")
    assert PreferencePairDataset(tmp_path / "p.parquet", resolution=16).captions == ["a red circle", "a blue square"]


def test_jsonl_image_paths_stay_in_the_jsonl_folder_unless_allowed(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "secret"
    (data / "img").mkdir(parents=True)
    outside.mkdir()
    for folder in (data / "img", outside):
        Image.fromarray(solid(BLUE)).save(folder / "x.png")
    for escape in ["../secret/x.png", str(outside / "x.png"), "img/../../secret/x.png"]:
        path = write_jsonl(data / "pairs.jsonl", [
            {"caption": "c", "image_0": "img/x.png", "image_1": escape, "label_0": 1}])
        with pytest.raises(BadRowError, match=r"pairs\.jsonl line 1: image_1 = .* is outside the JSONL's folder"):
            PreferencePairDataset(path, resolution=16)
        assert len(PreferencePairDataset(path, resolution=16, allow_outside_paths=True)) == 1
    inside = write_jsonl(data / "pairs.jsonl", [
        {"caption": "c", "image_0": "img/x.png", "image_1": "img/../img/x.png", "label_0": 1}])
    assert len(PreferencePairDataset(inside, resolution=16)) == 1
