"""Benchmark prompt suites read from small files written in their published formats, and their bad rows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_pref.datamodules.pair_rows import BadRowError
from lit_pref.suites import PromptSuite, SuitePrompt, hpsv2_style_report


def write_hpsv2(folder, per_style: dict[str, list]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for style, prompts in per_style.items():
        (folder / f"{style}.json").write_text(json.dumps(prompts))


def test_hpsv2_benchmark_reads_the_four_style_lists_in_order(tmp_path):
    write_hpsv2(tmp_path, {"anime": ["a fox, anime", "a cat"], "concept-art": ["a castle"],
                           "paintings": ["a river at dusk"], "photo": ["a red bus"]})
    items = PromptSuite("hpsv2", str(tmp_path)).read()
    assert [(i.prompt, i.category) for i in items] == [
        ("a fox, anime", "anime"), ("a cat", "anime"), ("a castle", "concept-art"), ("a river at dusk", "paintings"),
        ("a red bus", "photo")]
    assert [i.prompt for i in PromptSuite("hpsv2", str(tmp_path), categories=["photo", "anime"]).read()] == [
        "a fox, anime", "a cat", "a red bus"]
    assert len(PromptSuite("hpsv2", str(tmp_path), max_prompts=2).read()) == 2


def test_hpsv2_benchmark_errors_name_the_file_and_index(tmp_path):
    write_hpsv2(tmp_path, {"anime": ["ok", 3], "concept-art": ["a"], "paintings": ["b"], "photo": ["c"]})
    with pytest.raises(BadRowError, match=r"anime\.json index 1"):
        PromptSuite("hpsv2", str(tmp_path)).read()
    write_hpsv2(tmp_path, {"anime": ["a"]})
    with pytest.raises(ValueError, match="no prompt of categories"):
        PromptSuite("hpsv2", str(tmp_path), categories=["sketch"]).read()
    (tmp_path / "photo.json").unlink()
    with pytest.raises(FileNotFoundError, match="photo.json"):
        PromptSuite("hpsv2", str(tmp_path)).read()


def test_partiprompts_tsv_keeps_category_and_challenge(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\tChallenge\tNote\n"
                    "bond\tAbstract\tBasic\t\n"
                    "A photo of a kangaroo wearing an orange hoodie\tAnimals\tImagination\tfrom the paper\n"
                    '"a sign that says ""hello, world"""\tWorld Knowledge\tWriting & Symbols\t\n', encoding="utf-8")
    items = PromptSuite("partiprompts", str(path)).read()
    assert items == [SuitePrompt("bond", "Abstract", "Basic"),
                     SuitePrompt("A photo of a kangaroo wearing an orange hoodie", "Animals", "Imagination"),
                     SuitePrompt('a sign that says "hello, world"', "World Knowledge", "Writing & Symbols")]
    path.write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\n\t\tBasic\t\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=r"PartiPrompts\.tsv line 3: Prompt"):
        PromptSuite("partiprompts", str(path)).read()
    path.write_text("Prompt\tCategory\nbond\tAbstract\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=r"lacks column\(s\) \['Challenge', 'Note'\]"):
        PromptSuite("partiprompts", str(path)).read()


def test_drawbench_csv(tmp_path):
    path = tmp_path / "drawbench.csv"
    path.write_text('Prompts,Category\n"A red colored car.",Colors\n'
                    '"A pizza cooking an oven, with a hat.",Conflicting\n', encoding="utf-8")
    assert PromptSuite("drawbench", str(path)).read() == [SuitePrompt("A red colored car.", "Colors"),
                                                          SuitePrompt("A pizza cooking an oven, with a hat.", "Conflicting")]
    path.write_text('Prompts,Category\n"A red colored car.",\n', encoding="utf-8")
    with pytest.raises(BadRowError, match=r"drawbench\.csv line 2: Category"):
        PromptSuite("drawbench", str(path)).read()


def test_pickapic_test_unique_captions_from_parquet_shards(tmp_path):
    folder = tmp_path / "test_unique"
    folder.mkdir()
    jpg = b"\xff\xd8\xff\xd9"
    for k, captions in enumerate([["a cat in a hat", "a dog"], ["a dog", "sunset over the sea"]]):
        n = len(captions)
        pq.write_table(pa.table({  # the columns of the published Pick-a-Pic v2 shards that matter here
            "ranking_id": np.arange(n, dtype=np.int64), "caption": captions, "jpg_0": [jpg] * n, "jpg_1": [jpg] * n,
            "label_0": [1.0] * n, "label_1": [0.0] * n, "has_label": [True] * n, "are_different": [True] * n,
        }), folder / f"test_unique-0000{k}-of-00002.parquet")
    assert [i.prompt for i in PromptSuite("pickapic", str(folder)).read()] == ["a cat in a hat", "a dog",
                                                                               "sunset over the sea"]
    pq.write_table(pa.table({"caption": ["fine", None]}), folder / "test_unique-00002-of-00002.parquet")
    with pytest.raises(BadRowError, match=r"00002-of-00002\.parquet row 1: caption"):
        PromptSuite("pickapic", str(folder)).read()


def test_hpsv2_style_report_is_mean_and_std_of_80_prompt_block_means_times_100():
    scores = [0.2] * 80 + [0.3] * 80 + [0.25] * 10
    report = hpsv2_style_report(scores, ["photo"] * 170)
    blocks = np.array([20.0, 30.0, 25.0])  # three blocks (the last one short), each mean x 100
    assert report["photo"] == pytest.approx((blocks.mean(), blocks.std()))
    two = hpsv2_style_report([0.1, 0.3], ["anime", "photo"])
    assert list(two) == ["anime", "photo"]
    assert two["anime"] == pytest.approx((10.0, 0.0)) and two["photo"] == pytest.approx((30.0, 0.0))
