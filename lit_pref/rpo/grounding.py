"""Reading a vision-language model's grounding answer: which region and kind each edit instruction has.

VLMs that ground (Qwen2.5-VL, Qwen2-VL, Florence-style models, most chat VLMs when asked for JSON) answer with boxes
in one of a few shapes, often wrapped in prose or a code fence, sometimes cut off by the token limit:

- Qwen2.5-VL: JSON ``[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]`` in pixels of the image the model was fed
  (after its processor resized it);
- Qwen2-VL: ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`` in thousandths;
- other keys (``bbox``, ``box``, ``box_2d``), single quotes, a bare object instead of a list, pairs of points.

:func:`parse_grounding` reads each ``{...}`` chunk field by field with regular expressions instead of parsing the
whole answer as JSON, so trailing text, a missing bracket or a truncated last object lose at most that object.
"""

from __future__ import annotations

import re
from typing import Literal

Box = tuple[float, float, float, float]
"""A region as fractions of the image: ``(top, left, bottom, right)``, each in ``[0, 1]``."""

ISSUE_KINDS = ("local", "composition", "global")
"""What an instruction changes: ``local`` one object or part in one place (inpainting's job), ``composition`` the
layout (positions, counts, poses), ``global`` the whole image (style, lighting, colours, background, quality)."""


Units = Literal["pixels", "thousandths", "fractions"]

_NUMBER = r"-?\d+(?:\.\d+)?"
_CHUNK = re.compile(r"\{[^{}]*\}?")
_BOX = re.compile(r"""["']?(?:bbox_2d|bbox|box_2d|box)["']?\s*:\s*(\[[^\]]*(?:\][^\]]*)?\]|null|None)""", re.I)
_INDEX = re.compile(r"""["']?(?:instruction|index|id)["']?\s*:\s*["']?(?:instruction\s*)?(\d+)""", re.I)
_LABEL = re.compile(r"""["']?label["']?\s*:\s*["']([^"']*)["']""", re.I)
_KIND = re.compile(r"""["']?(?:kind|type)["']?\s*:\s*["']([a-z]+)["']""", re.I)
_QWEN2 = re.compile(r"(?:<\|object_ref_start\|>(.*?)<\|object_ref_end\|>)?\s*<\|box_start\|>\s*\(\s*(" + _NUMBER +
                    r")\s*,\s*(" + _NUMBER + r")\s*\)\s*,\s*\(\s*(" + _NUMBER + r")\s*,\s*(" + _NUMBER + r")\s*\)")


def to_box(xyxy: list[float], units: Units, width: float, height: float) -> Box | None:
    """``(x1, y1, x2, y2)`` in ``units`` (``pixels`` of a ``width`` x ``height`` image, ``thousandths`` or
    ``fractions``) -> a :data:`Box` clipped to the image, or None when nothing of it is left (or it has no area)."""
    if units == "pixels":
        scale_x, scale_y = float(width), float(height)
    elif units == "thousandths":
        scale_x = scale_y = 1000.0
    else:
        scale_x = scale_y = 1.0
    x1, y1, x2, y2 = xyxy
    left, right = sorted((min(max(x1 / scale_x, 0.0), 1.0), min(max(x2 / scale_x, 0.0), 1.0)))
    top, bottom = sorted((min(max(y1 / scale_y, 0.0), 1.0), min(max(y2 / scale_y, 0.0), 1.0)))
    if bottom <= top or right <= left:
        return None
    return top, left, bottom, right


def _index(chunk: str, count: int) -> int | None:
    """The 0-based instruction index a chunk names (``"instruction": 2``, or a label ``"instruction 2"``/``"2"``)."""
    match = _INDEX.search(chunk)
    if match is None:
        label = _LABEL.search(chunk)
        match = re.fullmatch(r"\s*(?:instruction\s*)?#?(\d+)\b.*", label.group(1), re.I | re.S) if label else None
    if match is None:
        return None
    index = int(match.group(1)) - 1
    return index if 0 <= index < count else None


def parse_grounding(text: str, count: int, width: float, height: float,
                    units: Units = "pixels") -> tuple[list[list[Box]], list[str]]:
    """Regions and kinds of ``count`` numbered instructions from a grounding answer.

    An entry names its instruction with ``"instruction": k`` (also ``index``, ``id``, or a ``label`` that starts
    with the number), 1-based; when no entry names one and there are exactly ``count`` entries, they are taken in
    order. Entries naming no valid instruction, boxes with fewer than four numbers, and unknown kinds are dropped.

    Args:
        text: The model's answer.
        count: How many instructions were asked about.
        width: Width of the image the model saw, for ``pixels`` (Qwen2.5-VL: the processor's resized width).
        height: Its height.
        units: The box coordinates' units.

    Returns:
        ``(regions, kinds)``: for each instruction its boxes (possibly empty) and its kind (``global`` unless the
        answer gave a known one).
    """
    entries: list[tuple[int | None, list[float] | None, str | None, Units]] = []
    for chunk in _CHUNK.findall(text):
        box_match = _BOX.search(chunk)
        kind_match = _KIND.search(chunk)
        if box_match is None and kind_match is None:
            continue
        numbers = [float(v) for v in re.findall(_NUMBER, box_match.group(1))] if box_match else []
        kind = kind_match.group(1).lower() if kind_match else None
        entries.append((_index(chunk, count), numbers[:4] if len(numbers) >= 4 else None, kind, units))
    for match in _QWEN2.finditer(text):
        label = match.group(1) or ""
        number = re.match(r"\s*(?:instruction\s*)?#?(\d+)", label, re.I)
        index = int(number.group(1)) - 1 if number and 0 < int(number.group(1)) <= count else None
        # Qwen2-VL's special-token boxes are in thousandths whatever the JSON boxes use
        entries.append((index, [float(match.group(k)) for k in range(2, 6)], None, "thousandths"))
    if entries and all(entry[0] is None for entry in entries) and len(entries) == count:
        entries = [(k, *entry[1:]) for k, entry in enumerate(entries)]
    regions: list[list[Box]] = [[] for _ in range(count)]
    kinds = ["global"] * count
    for index, numbers, kind, entry_units in entries:
        if index is None:
            continue
        if kind in ISSUE_KINDS:
            kinds[index] = kind
        box = to_box(numbers, entry_units, width, height) if numbers is not None else None
        if box is not None:
            regions[index].append(box)
    return regions, kinds
