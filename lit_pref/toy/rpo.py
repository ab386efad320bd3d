"""The toy world's offline critic and editor: rich feedback without any download.

:class:`ToyCritic` reads an image with the toy judge and writes, in words, what it shows, what departs from the
prompt and how to fix it; :class:`ToyEditor` carries out those instructions by drawing the corrected scene. The
instructions follow a small grammar (the ``*_instruction`` functions below) that both sides share, the way a real
critic's words must be ones a real editor understands.

What the critic knows: the caption grammar (colour, shape, size, background) and one rule of composition, "a
subject is best centred". That rule is also the toy world's hidden human's taste, on purpose: it stands for the
part of people's taste that a vision-language critic knows from its training (a real VLM critic knows about
framing, anatomy and artifacts). It never sees the hidden reward or its weights. ``ToyCritic(centre_tolerance=None)``
is the critic without that rule (taste-blind): it checks the prompt's attributes only and never says where a shape
should go.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from lit_pref.datamodules.synthetic import BACKGROUNDS, COLOURS, SHAPES, SIZE_RANGES, draw_shape
from lit_pref.rpo.critic import Box, Critic, Critique
from lit_pref.rpo.editor import Editor
from lit_pref.toy.judge import ToyJudge
from lit_pref.toy.world import SIZES, parse_caption

_COLOUR_NAMES = tuple(COLOURS)
_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_SHAPE_BY_CODE = ("triangle", "circle", "square")  # ToyJudge's shape codes
_WORDS = {"colour": "|".join(COLOURS), "shape": "|".join(SHAPES), "size": "|".join(SIZES),
          "background": "|".join(BACKGROUNDS)}


def colour_instruction(colour: str) -> str:
    return f"make the shape {colour}"


def shape_instruction(read: str, wanted: str) -> str:
    return f"change the {read} into a {wanted}"


def size_instruction(size: str) -> str:
    return f"make the shape {size}"


def background_instruction(background: str) -> str:
    return f"make the background {background}"


def draw_instruction(size: str, colour: str, shape: str, centred: bool = True) -> str:
    return f"draw a {size} {colour} {shape}" + (" in the centre" if centred else "")


CENTRE_INSTRUCTION = "move the shape to the centre"


def middle_side(size: str, resolution: int) -> float:
    """The side, in pixels, in the middle of a size class's range at ``resolution``: what a new shape of that size
    gets."""
    low, high = (bound * resolution for bound in SIZE_RANGES[size])
    return (low + high) / 2


_GRAMMAR = [
    (re.compile(rf"make the shape ({_WORDS['colour']})"), "colour"),
    (re.compile(rf"change the (?:{_WORDS['shape']}) into a ({_WORDS['shape']})"), "shape"),
    (re.compile(rf"make the shape ({_WORDS['size']})"), "size"),
    (re.compile(rf"make the background ({_WORDS['background']})"), "background"),
    (re.compile(rf"draw a ({_WORDS['size']}) ({_WORDS['colour']}) ({_WORDS['shape']})( in the centre)?"), "draw"),
    (re.compile(re.escape(CENTRE_INSTRUCTION)), "centre"),
]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _direction(dy: float, dx: float) -> str:
    """``"the upper left"``, ``"the right"``...: where an offset (rows down, columns right) points."""
    vertical = "upper" if dy < 0 else "lower"
    horizontal = "left" if dx < 0 else "right"
    if abs(dy) < 0.5 * abs(dx):
        return f"the {horizontal}"
    if abs(dx) < 0.5 * abs(dy):
        return "the top" if dy < 0 else "the bottom"
    return f"the {vertical} {horizontal}"


def shape_box(centroid: tuple[float, float], side: float, shape: str, height: int, width: int) -> Box:
    """The bounding box (a :data:`~lit_pref.rpo.critic.Box`, clipped to the image) of a ``side``-pixel shape whose
    centroid is at ``centroid`` (row, col): an upright triangle's centroid lies ``side / 6`` below its box's centre."""
    row, col = centroid
    if shape == "triangle":
        row -= side / 6
    half = side / 2
    top, bottom = max(row - half, 0.0) / height, min(row + half, height) / height
    left, right = max(col - half, 0.0) / width, min(col + half, width) / width
    return top, left, bottom, right


def _translate(image: Tensor, rows: int, cols: int) -> Tensor:
    """``image`` shifted by whole pixels (down, right), the uncovered border filled with its border's median colour."""
    border = torch.cat([image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]], dim=1)
    out = border.median(dim=1).values.view(-1, 1, 1).expand_as(image).clone()
    height, width = image.shape[-2:]
    out[:, max(rows, 0):height + min(rows, 0), max(cols, 0):width + min(cols, 0)] = \
        image[:, max(-rows, 0):height - max(rows, 0), max(-cols, 0):width - max(cols, 0)]
    return out


class ToyCritic(Critic):
    """Critiques toy images by reading them with :class:`~lit_pref.toy.ToyJudge`.

    Every attribute the prompt names (colour, shape, size, background) that the image gets wrong is an issue with
    its fix ("the shape is a circle but the prompt asks for a triangle" -> "change the circle into a triangle"); an
    image without a shape gets "draw a ... in the centre" (taste-blind, ``centre_tolerance=None``: "draw a ...",
    anywhere); a shape whose centroid is farther than ``centre_tolerance`` half-diagonals from the image centre gets
    "move the shape to the centre". A prompt outside the toy grammar gets a critique without instructions.

    Each instruction comes with its kind and region, as a grounding VLM gives them: colour, shape and size fixes are
    ``local`` to the shape's bounding box (for a new shape or size, the union of the old and new boxes), a move is
    ``composition`` over where the shape is and where it goes, a background change is ``global`` without a region,
    and drawing a missing shape is ``local`` to the box it will occupy in the centre (taste-blind: the whole
    image, as the shape may go anywhere).

    Args:
        centre_tolerance: Largest distance of the shape's centroid from the image centre, as a fraction of the
            half-diagonal, that the critic accepts as centred; ``None`` switches the composition rule off (the
            critic then judges fidelity to the prompt only, and a missing shape may be drawn anywhere).
        judge: The judge that reads the images; ``None``: ``ToyJudge()``.
    """

    def __init__(self, centre_tolerance: float | None = 0.1, judge: ToyJudge | None = None) -> None:
        self.centre_tolerance = centre_tolerance
        self.judge = judge if judge is not None else ToyJudge()

    def critique(self, image: Tensor, prompt: str) -> Critique:
        wanted = parse_caption(prompt)
        if wanted is None:
            return Critique(text=f"The prompt {prompt!r} is outside the toy world's captions; no critique.")
        reading = self.judge.read_tensors(image[None].float())
        if not bool(reading["found"][0]):
            background = _BACKGROUND_NAMES[int(reading["background"][0])]
            issue = (f"the image shows no shape but the prompt asks for {_article(wanted.size)} {wanted.size} "
                     f"{wanted.colour} {wanted.shape}")
            height, width = image.shape[-2:]
            centred = self.centre_tolerance is not None
            target = (shape_box((height / 2, width / 2), middle_side(wanted.size, max(height, width)), wanted.shape,
                                height, width) if centred
                      else (0.0, 0.0, 1.0, 1.0))
            instructions = [draw_instruction(wanted.size, wanted.colour, wanted.shape, centred)]
            regions, kinds = [[target]], ["local"]
            if background != wanted.background:
                instructions.append(background_instruction(wanted.background))
                regions.append([])
                kinds.append("global")
            return Critique(text=f"The image is an empty {background} canvas. Problem: {issue}.", issues=[issue],
                            instructions=instructions, regions=regions, kinds=kinds)

        colour = _COLOUR_NAMES[int(reading["colour"][0])]
        shape = _SHAPE_BY_CODE[int(reading["shape"][0])]
        size = SIZES[int(reading["size"][0])]
        background = _BACKGROUND_NAMES[int(reading["background"][0])]
        height, width = image.shape[-2:]
        side = float(reading["side"][0])
        centroid = (float(reading["center"][0, 0]), float(reading["center"][0, 1]))
        box = shape_box(centroid, side, shape, height, width)
        issues, instructions, regions, kinds = [], [], [], []
        if colour != wanted.colour:
            issues.append(f"the shape is {colour} but the prompt asks for {wanted.colour}")
            instructions.append(colour_instruction(wanted.colour))
            regions.append([box])
            kinds.append("local")
        if shape != wanted.shape:
            issues.append(f"the shape is {_article(shape)} {shape} but the prompt asks for "
                          f"{_article(wanted.shape)} {wanted.shape}")
            instructions.append(shape_instruction(shape, wanted.shape))
            regions.append([box, shape_box(centroid, side, wanted.shape, height, width)])
            kinds.append("local")
        if size != wanted.size:
            issues.append(f"the shape is {size} but the prompt asks for a {wanted.size} one")
            instructions.append(size_instruction(wanted.size))
            regions.append([box, shape_box(centroid, middle_side(wanted.size, max(height, width)), wanted.shape, height,
                                           width)])
            kinds.append("local")
        if background != wanted.background:
            issues.append(f"the background is {background} but the prompt asks for {wanted.background}")
            instructions.append(background_instruction(wanted.background))
            regions.append([])
            kinds.append("global")
        dy = float(reading["center"][0, 0]) - height / 2
        dx = float(reading["center"][0, 1]) - width / 2
        offset = math.hypot(dy, dx) / (math.hypot(height, width) / 2)
        where = "in the centre"
        if offset > 0.05:
            where = f"towards {_direction(dy, dx)}"
        if self.centre_tolerance is not None and offset > self.centre_tolerance:
            issues.append(f"the shape sits off-centre, towards {_direction(dy, dx)}")
            instructions.append(CENTRE_INSTRUCTION)
            regions.append([box, shape_box((height / 2, width / 2), side, shape, height, width)])
            kinds.append("composition")
        text = f"The image shows {_article(size)} {size} {colour} {shape} on a {background} background, {where}."
        text += (" Problems: " + "; ".join(issues) + ".") if issues else " It matches the prompt."
        return Critique(text=text, issues=issues, instructions=instructions, regions=regions, kinds=kinds)


class ToyEditor(Editor):
    """Carries out :class:`ToyCritic`'s instructions on the scene read from the image.

    The scene is read with the judge (colour, shape, size class and side, background, centroid); each instruction of
    the toy grammar changes one attribute (``make the shape red``, ``change the circle into a triangle``, ``make the
    shape large``, ``make the background white``, ``move the shape to the centre``, ``draw a small red circle in the
    centre``, ``draw a small red circle``: anywhere, its centroid drawn uniformly where the shape fits, from
    ``seed``). A move alone shifts the image's own pixels by whole pixels so that the centroid lands on the centre:
    the pair then differs in position only, as a good instruction editor's minimal edit would. Any other change
    redraws the scene as the toy world's renderer draws its training images, with the attributes no instruction names
    kept as read (the side within its size class; a new size class gets the middle of its range; "centre" puts the
    centroid on the image centre). Instructions outside the grammar are ignored; when none is understood the image
    comes back unchanged.

    A programmatic edit rather than SDEdit with the toy base: the toy text encoder knows only captions, so there is
    no "corrected prompt" that says *where* a shape should be, and re-noising toward the same caption only re-rolls
    the sample (small gains, mostly chance). The edit is deterministic given ``seed``, which only an un-located
    "draw" uses (``None``: 0).

    Args:
        judge: The judge that reads the scene; ``None``: ``ToyJudge()``.
    """

    def __init__(self, judge: ToyJudge | None = None) -> None:
        self.judge = judge if judge is not None else ToyJudge()

    @staticmethod
    def _anywhere(size: str, height: int, width: int, seed: int | None) -> tuple[float, float]:
        """A centroid drawn uniformly where a shape of ``size`` (the middle of its range) fits, from ``seed``."""
        half = middle_side(size, max(height, width)) / 2
        u = torch.rand(2, generator=torch.Generator().manual_seed(0 if seed is None else seed))
        return half + float(u[0]) * (height - 2 * half), half + float(u[1]) * (width - 2 * half)

    def edit(self, image: Tensor, instructions: list[str], prompt: str, seed: int | None = None) -> Tensor:
        height, width = image.shape[-2:]
        resolution = max(height, width)
        reading = self.judge.read_tensors(image[None].float())
        found = bool(reading["found"][0])
        scene = {"background": _BACKGROUND_NAMES[int(reading["background"][0])]}
        if found:
            scene.update(colour=_COLOUR_NAMES[int(reading["colour"][0])],
                         shape=_SHAPE_BY_CODE[int(reading["shape"][0])], size=SIZES[int(reading["size"][0])],
                         side=float(reading["side"][0]), centroid=tuple(float(v) for v in reading["center"][0]))
        before = dict(scene)
        understood = False
        for instruction in instructions:
            for pattern, action in _GRAMMAR:
                match = pattern.fullmatch(instruction.strip().lower())
                if match is None:
                    continue
                understood = True
                if action == "draw":
                    size, colour, shape, centre = match.groups()
                    centroid = (height / 2, width / 2) if centre else self._anywhere(size, height, width, seed)
                    scene.update(size=size, colour=colour, shape=shape, side=None, centroid=centroid)
                elif action == "centre":
                    scene["centroid"] = (height / 2, width / 2)
                elif action == "size" and match.group(1) != scene.get("size"):
                    scene.update(size=match.group(1), side=None)
                else:
                    scene[action] = match.group(1)
                break
        if not understood or "shape" not in scene or "centroid" not in scene:
            return image.clone()
        if found and all(scene[k] == before[k] for k in scene if k != "centroid"):  # a move only
            shift = [round(target - now) for target, now in zip(scene["centroid"], before["centroid"])]
            return _translate(image, *shift)
        low, high = (bound * resolution for bound in SIZE_RANGES[scene["size"]])
        side = (low + high) / 2 if scene["side"] is None else min(max(scene["side"], low), high)
        row, col = scene["centroid"]
        if scene["shape"] == "triangle":
            row -= side / 6  # an upright triangle's centroid lies side/6 below its bounding box's centre
        half = side / 2
        center = (min(max(row, half), height - half), min(max(col, half), width - half))
        drawn = draw_shape(scene["shape"], scene["colour"], side, center, scene["background"], resolution)
        return torch.from_numpy(drawn).permute(2, 0, 1).float().div(255.0)[:, :height, :width].to(image.device)
