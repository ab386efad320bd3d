"""One line of a JSONL file, decoded without exceptions: what is wrong with it comes back as a reason."""

from __future__ import annotations

import json
from typing import Any


def read_json_line(raw: bytes) -> tuple[Any, str | None]:
    """``(value, None)`` for one line of a JSONL file (bytes, as read in binary mode), or ``(None, reason)``:
    invalid UTF-8, invalid JSON and nesting too deep for the parser are reasons, never exceptions."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
    try:
        return json.loads(line), None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e})"
    except RecursionError:
        return None, "invalid JSON (nested too deeply)"
