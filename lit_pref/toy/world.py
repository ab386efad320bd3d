"""The toy world's vocabulary, captions and renderer: procedural captioned images of one coloured shape.

Every image shows one filled shape (circle, square or upright triangle) in one
of the 6 pure colours of :data:`~lit_pref.datamodules.synthetic.COLOURS`, small (7-10
px) or large (14-20 px) at 32 px (ranges scale with the resolution), at a
uniformly random position fully inside the image, on a white or black
background. Its caption is ``"a small red circle on a white background"``.

Three colour-shape combinations (:data:`HELDOUT_COMBOS`) never appear in the
``"train"`` split; the ``"heldout"`` split contains only them (3 combinations
x 2 sizes x 2 backgrounds = 12 prompts), to measure compositional
generalisation. Drawing reuses :mod:`lit_pref.datamodules.synthetic`; :mod:`lit_pref.toy.images` makes
data sets of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lit_pref.datamodules.synthetic import BACKGROUNDS, COLOURS, SHAPES, draw_shape, random_placement

__all__ = [
    "Split",
    "HELDOUT_COMBOS",
    "SIZES",
    "Caption",
    "Scene",
    "caption",
    "parse_caption",
    "prompts",
    "render",
    "sample_scene",
    "split_combos",
]

Split = Literal["train", "heldout", "all"]

SIZES: tuple[str, ...] = ("small", "large")
HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("green", "triangle"), ("blue", "circle"), ("magenta", "square")}
)

_CAPTION_RE = re.compile(
    rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) "
    rf"on a ({'|'.join(BACKGROUNDS)}) background"
)


@dataclass(frozen=True)
class Caption:
    """The attributes a caption names (what :func:`parse_caption` returns)."""

    colour: str
    shape: str
    size: str
    background: str


@dataclass(frozen=True)
class Scene:
    """One toy image: what it shows and where.

    Attributes:
        colour: One of :data:`~lit_pref.datamodules.synthetic.COLOURS`.
        shape: ``"circle"``, ``"square"`` or ``"triangle"``.
        size: ``"small"`` or ``"large"``.
        background: ``"white"`` or ``"black"``.
        side: Side (square, triangle base and height) or diameter in pixels.
        center: ``(row, col)`` of the shape's bounding-box centre in pixels
            (pixel ``i`` spans ``[i, i + 1)``).
    """

    colour: str
    shape: str
    size: str
    background: str
    side: float
    center: tuple[float, float]

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.size, self.background)


def caption(colour: str, shape: str, size: str, background: str) -> str:
    """``caption("red", "circle", "small", "white") == "a small red circle on a white background"``."""
    return f"a {size} {colour} {shape} on a {background} background"


def parse_caption(text: str) -> Caption | None:
    """Inverse of :func:`caption`; None for any text outside its grammar.

    Surrounding whitespace and letter case are ignored; nothing else is.
    """
    if not isinstance(text, str):
        return None
    m = _CAPTION_RE.fullmatch(text.strip().lower())
    if m is None:
        return None
    size, colour, shape, background = m.groups()
    return Caption(colour=colour, shape=shape, size=size, background=background)


def split_combos(split: Split) -> list[tuple[str, str]]:
    """The ``(colour, shape)`` combinations of a split, in a fixed order."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"unknown split {split!r}; expected 'train', 'heldout' or 'all'")
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "train":
        return [cs for cs in combos if cs not in HELDOUT_COMBOS]
    if split == "heldout":
        return [cs for cs in combos if cs in HELDOUT_COMBOS]
    return combos


def prompts(split: Split) -> list[str]:
    """All captions of a split, sorted (``"heldout"``: 12, ``"train"``: 60, ``"all"``: 72)."""
    return sorted(
        caption(c, s, z, b) for c, s in split_combos(split) for z in SIZES for b in BACKGROUNDS
    )


def sample_scene(rng: np.random.Generator, split: Split = "train", resolution: int = 32) -> Scene:
    """A uniformly random scene of a split (combination, size, background, then position)."""
    combos = split_combos(split)
    colour, shape = combos[int(rng.integers(len(combos)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    backgrounds = list(BACKGROUNDS)
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    side, center = random_placement(rng, resolution, size_class=size)
    return Scene(colour=colour, shape=shape, size=size, background=background, side=side, center=center)


def render(scene: Scene, resolution: int = 32) -> np.ndarray:
    """Draws a scene: ``np.uint8 [resolution, resolution, 3]``."""
    return draw_shape(scene.shape, scene.colour, scene.side, scene.center, scene.background, resolution)
