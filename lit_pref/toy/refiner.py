"""The toy world's prompt refiner: it understands the feedback phrases of :class:`~lit_pref.toy.ToySimulatedUser`
(``"make it green"``, ``"make the shape a triangle"``...) and rewrites toy captions with them."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Sequence

from lit_pref.datamodules.synthetic import BACKGROUNDS, COLOURS, SHAPES
from lit_pref.formats.dialogues import Turn
from lit_pref.toy.world import SIZES, caption as toy_caption, parse_caption
from lit_pref.vca.refiner import TemplateRefiner

__all__ = ["ToyRefiner", "toy_edits"]

_ALT = "|".join
# The toy world's feedback phrases (what ToySimulatedUser says), each setting one caption attribute.
_TOY_PHRASES: tuple[tuple[str, re.Pattern], ...] = (
    ("colour", re.compile(rf"make it ({_ALT(COLOURS)})")),
    ("size", re.compile(rf"make it ({_ALT(SIZES)})")),
    ("shape", re.compile(rf"make the shape an? ({_ALT(SHAPES)})")),
    ("background", re.compile(rf"use an? ({_ALT(BACKGROUNDS)}) background")),
    ("position", re.compile(r"move it to the (centre|center)")),
    ("done", re.compile(r"perfect")),
)
_SEPARATORS = re.compile(r"[\s,.;!]|\band\b|\bthen\b")


def toy_edits(feedback: str) -> dict[str, str] | None:
    """The toy attribute edits a feedback text asks for, or None when it is not made of toy phrases only.

    ``toy_edits("make it green and use a black background") == {"colour": "green", "background": "black"}``;
    ``"move it to the centre"`` gives ``{"position": "centre"}`` and ``"perfect"`` gives ``{"done": "perfect"}``.
    Case is ignored; phrases may be joined by commas, semicolons, full stops, "and" or "then". Empty text gives
    ``{}``. A later phrase about the same attribute wins.
    """
    text = feedback.strip().lower()
    edits: dict[str, str] = {}
    covered = [False] * len(text)
    for attribute, pattern in _TOY_PHRASES:
        for m in pattern.finditer(text):
            edits[attribute] = (m.start(), m.group(1) if m.groups() else m.group(0))
            covered[m.start():m.end()] = [True] * (m.end() - m.start())
    rest = "".join(" " if c else ch for ch, c in zip(text, covered))
    if _SEPARATORS.sub("", rest):
        return None
    return {k: v for k, (_, v) in sorted(edits.items(), key=lambda kv: kv[1][0])}


class ToyRefiner(TemplateRefiner):
    """Deterministic toy-world refiner: edits toy captions, otherwise refines as :class:`TemplateRefiner` does.

    1. When ``prompt`` is a toy caption (:func:`lit_pref.toy.parse_caption`) and ``feedback`` consists of toy
       phrases only (:func:`toy_edits`: ``"make it green"``, ``"make it large"``, ``"make the shape a triangle"``,
       ``"use a black background"``, ``"move it to the centre"``, ``"perfect"``, joined by commas or "and"), the
       caption is rewritten with the requested colour, size, shape and background. Position and "perfect" leave it
       unchanged: the toy captions have no words for position (a position word would take the prompt out of the
       grammar the toy model was trained on), so a centred image can only come from the user's choices and training.
    2. Otherwise: feedback that is only ``"perfect"`` keeps the prompt; any other feedback goes to
       :class:`TemplateRefiner` (empty feedback keeps the prompt, other feedback is appended as a clause).

    ``history`` is not used.
    """

    def refine(self, prompt: str, feedback: str, history: Sequence[Turn] = ()) -> str:
        edits = toy_edits(feedback)
        parsed = parse_caption(prompt)
        if parsed is not None and edits is not None:
            new = replace(parsed, **{k: v for k, v in edits.items() if k in ("colour", "shape", "size", "background")})
            return toy_caption(new.colour, new.shape, new.size, new.background)
        if edits == {"done": "perfect"}:
            return prompt
        return super().refine(prompt, feedback, history)

    def feedback_phrases(self) -> list[str]:
        """The toy phrases, with their words."""
        return [
            f"make it <colour> ({', '.join(COLOURS)})", f"make it <size> ({', '.join(SIZES)})",
            f"make the shape a <shape> ({', '.join(SHAPES)})",
            f"use a <background> background ({', '.join(BACKGROUNDS)})",
            "move it to the centre", "perfect",
            "joined by commas or 'and'; other text is appended to the prompt as it is",
        ]
