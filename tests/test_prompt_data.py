"""Tests of PromptDataModule (prompt files for predict / sampling)."""

from __future__ import annotations

import inspect
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lit_pref.datamodules import BadRowError, PromptDataModule


def prompts_of(path, **kwargs) -> list[dict]:
    dm = PromptDataModule(str(path), **kwargs)
    dm.setup("predict")
    return list(dm.predict_dataloader())


def flat(batches, key):
    out = []
    for batch in batches:
        value = batch[key]
        out.extend(value.tolist() if isinstance(value, torch.Tensor) else value)
    return out


def test_txt_prompts_skip_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n\n   \na blue square  \nlast line without newline")
    batches = prompts_of(path, batch_size=2)
    assert flat(batches, "prompts") == ["a red circle", "a blue square", "last line without newline"]
    assert [len(b["prompts"]) for b in batches] == [2, 1]


def test_jsonl_prompts_objects_and_strings(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join([json.dumps({"text": "one", "other": 1}), "", json.dumps("two"),
                               json.dumps({"text": "three"})]) + "\n")
    assert flat(prompts_of(path, column="text"), "prompts") == ["one", "two", "three"]


def test_parquet_prompts(tmp_path):
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"caption": ["x", "y"], "jpg_0": [b"", b""]}), path)
    assert flat(prompts_of(path), "prompts") == ["x", "y"]


def test_seeds_and_indices_follow_prompt_and_repeat(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("p0\np1\np2\n")
    batches = prompts_of(path, batch_size=4, num_images_per_prompt=3, seed=100)
    assert [len(b["prompts"]) for b in batches] == [4, 4, 1]
    assert flat(batches, "prompts") == ["p0"] * 3 + ["p1"] * 3 + ["p2"] * 3
    # (prompt i, repeat j) -> seed = seed + i * n + j, index = i * n + j
    expected = [(i, j) for i in range(3) for j in range(3)]
    assert flat(batches, "seeds") == [100 + i * 3 + j for i, j in expected]
    assert flat(batches, "indices") == [i * 3 + j for i, j in expected]
    for batch in batches:
        assert batch["seeds"].dtype == torch.long and batch["indices"].dtype == torch.long
        assert set(batch) == {"prompts", "seeds", "indices"}
    # same result twice (no shuffling)
    assert flat(prompts_of(path, batch_size=2, num_images_per_prompt=3, seed=100), "seeds") == flat(batches, "seeds")


@pytest.mark.parametrize(
    "content, pattern",
    [
        ('{"caption": "ok"}\n{"caption": "broken"\n', r"prompts\.jsonl line 2: invalid JSON"),
        ('{"caption": "ok"}\n\n{"text": "x"}\n', r"prompts\.jsonl line 3: missing key 'caption'"),
        ('{"caption": 5}\n', r"prompts\.jsonl line 1: prompt is not a string"),
        ('"ok"\n[1, 2]\n', r"prompts\.jsonl line 2: prompt is not a string"),
        ("\n\n", r"prompts\.jsonl: no prompts"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, pattern):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(BadRowError, match=pattern):
        prompts_of(path)


def test_parquet_errors_name_file_column_and_row(tmp_path):
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["a"]}), path)
    with pytest.raises(BadRowError, match=r"prompts\.parquet: missing column 'caption'"):
        prompts_of(path)
    pq.write_table(pa.table({"caption": ["a", None, "c"]}), path)
    with pytest.raises(BadRowError, match=r"prompts\.parquet row 1: prompt is not a string"):
        prompts_of(path)
    pq.write_table(pa.table({"caption": [1, 2]}), path)
    with pytest.raises(BadRowError, match=r"prompts\.parquet: column 'caption' has type int64"):
        prompts_of(path)


def test_empty_and_unsupported_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(BadRowError, match=r"empty\.txt: no prompts"):
        prompts_of(empty)
    other = tmp_path / "prompts.csv"
    other.write_text("a\n")
    with pytest.raises(BadRowError, match="unsupported"):
        prompts_of(other)
    with pytest.raises(FileNotFoundError):
        prompts_of(tmp_path / "missing.txt")


def test_arguments_are_typed_and_documented():
    doc = inspect.getdoc(PromptDataModule)
    for name, param in inspect.signature(PromptDataModule.__init__).parameters.items():
        if name != "self":
            assert f"    {name}:" in doc and param.annotation is not inspect.Parameter.empty


def test_inline_prompts_and_shuffled_training_batches():
    prompts = [f"p{i}" for i in range(10)]
    dm = PromptDataModule(prompts=prompts, batch_size=4, seed=3)
    first = [p for batch in dm.train_dataloader() for p in batch["prompts"]]
    again = [p for batch in PromptDataModule(prompts=prompts, batch_size=4, seed=3).train_dataloader()
             for p in batch["prompts"]]
    assert sorted(first) == prompts and first != prompts and first == again  # a seeded permutation
    with pytest.raises(ValueError, match="exactly one"):
        PromptDataModule()
    with pytest.raises(ValueError, match="exactly one"):
        PromptDataModule(path="x.txt", prompts=["a"])
