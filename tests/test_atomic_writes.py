"""Writes that a kill or a full disk cannot leave broken: folder swaps, dialogue appends, file modes."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from lit_pref.formats.dialogues import Dialogue, Turn, append_dialogue, read_dialogues
from lit_pref.io import atomic_dir, atomic_file


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (atomic_dir has no cleanup after its yield)."""


def write_dir(path: Path, text: str) -> None:
    with atomic_dir(path) as tmp:
        (tmp / "weights").write_text(text)


def test_a_kill_between_the_two_renames_of_a_folder_swap_is_recovered(tmp_path, monkeypatch, caplog):
    export = tmp_path / "lora"
    write_dir(export, "v1")
    real_replace = os.replace

    def killed_moving_the_new_folder_in(src, dst):
        if Path(dst) == export:
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_moving_the_new_folder_in)
    with pytest.raises(Killed):
        write_dir(export, "v2")
    monkeypatch.setattr(os, "replace", real_replace)
    assert not export.exists()  # the old export is aside, the new one not yet in place

    with caplog.at_level(logging.WARNING, logger="lit_pref.io"), pytest.raises(RuntimeError):
        with atomic_dir(export):  # the next write of the export recovers the swap first (then fails here)
            raise RuntimeError("the new write fails")
    assert (export / "weights").read_text() == "v2"  # the new folder was complete: it is moved in
    assert [p.name for p in tmp_path.iterdir()] == ["lora"]  # no .partial left over
    assert "completed a folder swap" in caplog.text


def test_append_dialogue_on_a_full_disk_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    append_dialogue(path, Dialogue("a", "p", [Turn(1, "f")]))
    real_write = os.write

    def disk_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        append_dialogue(path, Dialogue("b", "p" * 1000, [Turn(1, "f")]))
    monkeypatch.setattr(os, "write", real_write)
    assert [d.dialogue_id for d in read_dialogues(path)] == ["a"]
    append_dialogue(path, Dialogue("c", "p", [Turn(1, "f")]))  # appends still work
    assert [d.dialogue_id for d in read_dialogues(path)] == ["a", "c"]


def test_files_are_created_0644_not_executable(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "x.ckpt") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "x.ckpt").stat().st_mode & 0o777 == 0o644
