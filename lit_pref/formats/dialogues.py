"""Multi-round dialogues (VCA-PPO): the JSONL format, its validating reader and an append-only writer.

The VCA modules and tools write and read dialogues through this module;
:class:`lit_pref.datamodules.DialogueDataModule` reads them for training.

One dialogue a line::

    {"dialogue_id": "s-0001", "initial_prompt": "a small red circle on a white background",
     "category": "toy",
     "turns": [{"round": 1, "prompt": "a small red circle on a white background",
                "images": ["s-0001/r1_0.png", "s-0001/r1_1.png"], "chosen": 1,
                "user_feedback": "make it green", "satisfaction": 0.25},
               {"round": 2, "prompt": "a small green circle on a white background",
                "user_feedback": "perfect", "satisfaction": 1.0}]}

Turn ``t`` records round ``t`` in the order it happens: the images are generated from ``prompt`` (``P_t``; ``P_1``
is usually ``initial_prompt``), the user picks ``chosen`` (an index into ``images``) and writes ``user_feedback``
about it; the refiner turns ``(P_t, user_feedback, turns so far)`` into ``P_{t+1}``, the prompt of turn ``t + 1``.
The last turn's feedback is what the user said when finishing (e.g. ``"perfect"``, or empty).

Fields (``?`` optional; absent and ``null`` mean the same):

- ``dialogue_id``: non-empty string, unique within a file.
- ``initial_prompt``: string, what the user first typed.
- ``category``?: string (a free label such as ``"toy"`` or ``"portrait"``).
- ``turns``: non-empty list; ``round`` is ``1, 2, ..., T`` in order.
- ``user_feedback``: string (may be empty).
- ``prompt``?: string, the prompt of that round when known.
- ``images``?: list of image file paths (strings), relative to the JSONL file's folder unless absolute;
  :func:`read_dialogues` checks that each exists.
- ``chosen``?: integer index into ``images`` (requires ``images``).
- ``satisfaction``?: number in ``[0, 1]`` (how satisfied the user was with the chosen image).

Unknown keys are **rejected** (an error naming the key): a misspelt ``"choosen"`` would otherwise silently drop the
user's choice from training data. Errors are :class:`DialogueFormatError` naming the file, the 1-based line and the
field (``turns[1].chosen``). Blank lines are skipped. :func:`append_dialogue` writes a whole line with one
``write`` and ``fsync`` s it, and refuses to append after a truncated last line (one not ending in a newline), so a
crash never turns two dialogues into one line that parses.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_pref.formats.jsonl import read_json_line

__all__ = [
    "Dialogue",
    "DialogueFormatError",
    "Turn",
    "append_dialogue",
    "read_dialogues",
]

_DIALOGUE_KEYS = ("dialogue_id", "initial_prompt", "category", "turns")
_TURN_KEYS = ("round", "user_feedback", "prompt", "images", "chosen", "satisfaction")


class DialogueFormatError(ValueError):
    """A dialogue file or line is invalid; the message names the file, the 1-based line and the field."""


def _fail(where: str, field: str, problem: str) -> DialogueFormatError:
    return DialogueFormatError(f"{where}: field '{field}': {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(obj: dict, allowed: tuple[str, ...], where: str, prefix: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise _fail(where, prefix + unknown[0], f"unknown key (allowed: {', '.join(allowed)})")


def _string(obj: dict, key: str, where: str, field: str, optional: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise _fail(where, field, "missing")
    if not isinstance(value, str):
        raise _fail(where, field, f"expected a string, got {value!r}")
    return _utf8(value, where, field)


def _utf8(value: str, where: str, field: str) -> str:
    """``value``, if it can be written as UTF-8 (a lone surrogate, from JSON's ``\\ud800`` or an undecodable
    terminal byte, cannot: the dialogue could never be saved)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _fail(where, field, f"not valid Unicode (a lone surrogate at character {e.start + 1})") from None
    return value


@dataclass
class Turn:
    """One round of a dialogue (see the module docstring for the order of events).

    Attributes:
        round: 1-based round number.
        user_feedback: What the user wrote about the chosen image of this round (may be empty).
        prompt: The prompt this round's images were generated from, when known.
        images: Image file paths (relative to the JSONL file's folder unless absolute).
        chosen: Index into ``images`` of the image the user picked.
        satisfaction: The user's satisfaction with the chosen image, in ``[0, 1]``.
    """

    round: int
    user_feedback: str
    prompt: str | None = None
    images: list[str] | None = None
    chosen: int | None = None
    satisfaction: float | None = None

    def to_json(self) -> dict:
        """The turn as a JSON object; ``None`` fields are left out."""
        out: dict[str, Any] = {"round": self.round, "user_feedback": self.user_feedback}
        for key in ("prompt", "images", "chosen", "satisfaction"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if key == "images" else value
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str, prefix: str = "") -> Turn:
        """Validates and builds a turn; errors name ``where`` and the field ``prefix + key``."""
        if not isinstance(obj, dict):
            raise _fail(where, prefix.rstrip("."), f"expected an object, got {obj!r}")
        _check_keys(obj, _TURN_KEYS, where, prefix)
        rnd = obj.get("round")
        if not _is_int(rnd):
            raise _fail(where, prefix + "round", "missing" if rnd is None else f"expected an integer, got {rnd!r}")
        feedback = _string(obj, "user_feedback", where, prefix + "user_feedback")
        prompt = _string(obj, "prompt", where, prefix + "prompt", optional=True)
        images = obj.get("images")
        if images is not None:
            if not isinstance(images, list):
                raise _fail(where, prefix + "images", f"expected a list of paths, got {images!r}")
            for j, image in enumerate(images):
                if not isinstance(image, str) or not image:
                    raise _fail(where, f"{prefix}images[{j}]", f"expected a non-empty path string, got {image!r}")
                _utf8(image, where, f"{prefix}images[{j}]")
        chosen = obj.get("chosen")
        if chosen is not None:
            if not _is_int(chosen):
                raise _fail(where, prefix + "chosen", f"expected an integer, got {chosen!r}")
            if images is None:
                raise _fail(where, prefix + "chosen", "given without 'images'")
            if not 0 <= chosen < len(images):
                raise _fail(where, prefix + "chosen", f"{chosen} is not an index into {len(images)} images")
        satisfaction = obj.get("satisfaction")
        if satisfaction is not None:
            if isinstance(satisfaction, bool) or not isinstance(satisfaction, (int, float)):
                raise _fail(where, prefix + "satisfaction", f"expected a number, got {satisfaction!r}")
            if math.isnan(satisfaction) or not 0.0 <= satisfaction <= 1.0:
                raise _fail(where, prefix + "satisfaction", f"{satisfaction!r} is not in [0, 1]")
            satisfaction = float(satisfaction)
        return cls(rnd, feedback, prompt, list(images) if images is not None else None, chosen, satisfaction)


@dataclass
class Dialogue:
    """One multi-round dialogue: the first prompt and its turns.

    Attributes:
        dialogue_id: Unique id within its file.
        initial_prompt: What the user first typed.
        turns: The rounds, ``round`` 1..T in order.
        category: Optional free label.
    """

    dialogue_id: str
    initial_prompt: str
    turns: list[Turn]
    category: str | None = None

    def to_json(self) -> dict:
        """The dialogue as a JSON object (one line of the JSONL format); ``None`` fields are left out."""
        out: dict[str, Any] = {"dialogue_id": self.dialogue_id, "initial_prompt": self.initial_prompt}
        if self.category is not None:
            out["category"] = self.category
        out["turns"] = [turn.to_json() for turn in self.turns]
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Dialogue:
        """Validates and builds a dialogue from a parsed JSON line.

        Args:
            obj: The parsed JSON value.
            where: Location for error messages, e.g. ``"dialogues.jsonl line 3"``.

        Raises:
            DialogueFormatError: naming ``where`` and the offending field.
        """
        if not isinstance(obj, dict):
            raise DialogueFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        _check_keys(obj, _DIALOGUE_KEYS, where, "")
        dialogue_id = _string(obj, "dialogue_id", where, "dialogue_id")
        if not dialogue_id:
            raise _fail(where, "dialogue_id", "empty")
        initial_prompt = _string(obj, "initial_prompt", where, "initial_prompt")
        category = _string(obj, "category", where, "category", optional=True)
        raw_turns = obj.get("turns")
        if not isinstance(raw_turns, list) or not raw_turns:
            problem = "missing" if raw_turns is None else f"expected a non-empty list, got {raw_turns!r}"
            raise _fail(where, "turns", problem)
        turns = []
        for i, raw in enumerate(raw_turns):
            turn = Turn.from_json(raw, where, prefix=f"turns[{i}].")
            if turn.round != i + 1:
                raise _fail(where, f"turns[{i}].round", f"expected round {i + 1} (rounds are 1..T in order), got {turn.round}")
            turns.append(turn)
        return cls(dialogue_id, initial_prompt, turns, category)


def read_dialogues(path: str | os.PathLike, check_images: bool = True) -> list[Dialogue]:
    """Reads and validates a dialogue JSONL file (format in the module docstring).

    Args:
        path: The ``.jsonl`` file.
        check_images: Check that every listed image file exists (relative paths against the file's folder).

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        DialogueFormatError: naming the file, the 1-based line and the field of the first problem (invalid JSON,
            including a truncated last line; a bad field; a duplicate ``dialogue_id``; a missing image file).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    dialogues: list[Dialogue] = []
    seen: dict[str, int] = {}
    with open(p, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{p} line {line_no}"
            obj, why = read_json_line(raw)
            if why is not None:
                if not raw.endswith(b"\n") and why.startswith("invalid JSON"):
                    why = "invalid JSON (truncated last line?)" + why.removeprefix("invalid JSON")
                raise DialogueFormatError(f"{where}: {why}")
            dialogue = Dialogue.from_json(obj, where)
            if dialogue.dialogue_id in seen:
                raise _fail(where, "dialogue_id", f"{dialogue.dialogue_id!r} already used on line {seen[dialogue.dialogue_id]}")
            seen[dialogue.dialogue_id] = line_no
            if check_images:
                for i, turn in enumerate(dialogue.turns):
                    for j, image in enumerate(turn.images or []):
                        if not (p.parent / image).is_file():
                            raise _fail(where, f"turns[{i}].images[{j}]", f"no such file {p.parent / image}")
            dialogues.append(dialogue)
    return dialogues


def append_dialogue(path: str | os.PathLike, dialogue: Dialogue) -> None:
    """Appends one dialogue as one line, written with a single ``write`` and ``fsync`` ed.

    The dialogue is validated first (``Dialogue.from_json(dialogue.to_json())``). The file and its folder are
    created when missing.

    Raises:
        DialogueFormatError: when the dialogue is invalid, or when the file's last line is truncated (does not end
            in a newline: an earlier crash); appending then would glue two dialogues into one broken line.
        OSError: when the write fails (a full disk); the file is first cut back to its previous length.
    """
    p = Path(path)
    obj = dialogue.to_json()
    Dialogue.from_json(obj, f"dialogue {dialogue.dialogue_id!r} to append to {p}")
    data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(p, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.seek(0)
                    lines = f.read().count(b"\n") + 1
                    raise DialogueFormatError(
                        f"{p} line {lines}: truncated last line (no newline at the end); repair the file before appending"
                    )
        try:
            written = os.write(fd, data)
            if written != len(data):  # a regular file takes a whole write unless the disk is full
                raise OSError(f"{p}: short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)  # no partial line left behind: the file reads and takes appends as before
            raise
    finally:
        os.close(fd)
