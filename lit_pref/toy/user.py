"""The toy world's simulated user, and a generator of toy dialogues.

:class:`ToySimulatedUser` has a hidden target caption, picks the image closest to it (the toy world's hidden-human
reward, :class:`~lit_pref.toy.ToyGroundTruthReward`, which includes a taste for centred shapes) and asks for one
attribute change at a time. :func:`make_toy_dialogues` plays whole dialogues between it and
:class:`~lit_pref.toy.ToyRefiner` on rendered toy images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lit_pref.commands import call, function_parser
from lit_pref.datamodules.synthetic import BACKGROUNDS, COLOURS, SHAPES, random_placement
from lit_pref.formats.dialogues import Dialogue
from lit_pref.io import atomic_dir, atomic_file
from lit_pref.toy.human import ToyGroundTruthReward
from lit_pref.toy.judge import ToyJudge
from lit_pref.toy.refiner import ToyRefiner
from lit_pref.toy.world import (
    Caption,
    SIZES,
    Scene,
    caption as toy_caption,
    parse_caption,
    prompts as toy_prompts,
    render,
)
from lit_pref.vca.refiner import PromptRefiner
from lit_pref.vca.user import SimulatedUser, play_dialogue

__all__ = ["ToySimulatedUser", "main", "make_toy_dialogues", "toy_start"]

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "background")
_CHOICES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "size": SIZES,
    "background": tuple(BACKGROUNDS),
}


class ToySimulatedUser(SimulatedUser):
    """The toy world's user, who wants an image of ``target_caption`` with the shape near the centre.

    - ``choose``: the image with the highest :class:`ToyGroundTruthReward` against the *target* caption (attribute
      matches plus centredness; ties go to the lowest index). The prompt is not used: the user judges against what
      it wants, not what was asked for.
    - ``feedback``: the first attribute, in the order colour, shape, size, background, where the :class:`ToyJudge`
      reading differs from the target, as one phrase: ``"make it green"``, ``"make the shape a triangle"``,
      ``"make it large"``, ``"use a black background"``; with all four right but the centredness below
      ``min_centredness``, ``"move it to the centre"``; else ``"perfect"``. An image where nothing is found gets
      the colour phrase.
    - ``satisfied``: all four attributes right and centredness ``>= min_centredness`` (centredness is ``1 - distance
      of the shape's centroid from the image centre / half the diagonal``; 0.8 is within 4.5 px at 32 px).

    Args:
        target_caption: The hidden target, a toy caption such as ``"a large green triangle on a black background"``.
        min_centredness: Centredness at or above which the position is right.
        reward: The hidden-human reward used to choose; None uses ``ToyGroundTruthReward()`` (its judge also reads
            the feedback's attributes).
    """

    def __init__(
        self, target_caption: str, min_centredness: float = 0.8, reward: ToyGroundTruthReward | None = None
    ) -> None:
        target = parse_caption(target_caption)
        if target is None:
            raise ValueError(f"target_caption {target_caption!r} is not a toy caption ('a small red circle on a white background')")
        self.target_caption = target_caption
        self.target: Caption = target
        self.min_centredness = min_centredness
        self.reward = reward if reward is not None else ToyGroundTruthReward()
        self.judge: ToyJudge = self.reward.judge

    def choose(self, images: Tensor, prompt: str = "") -> int:
        if images.ndim != 4 or images.shape[0] < 1:
            raise ValueError(f"expected images [K, 3, H, W] with K >= 1, got shape {tuple(images.shape)}")
        scores = self.reward(images, [self.target_caption] * images.shape[0])
        return int(torch.argmax(scores).item())  # first maximum

    def _centredness(self, image: Tensor) -> float:
        return float(self.reward.components(image[None], [self.target_caption])["centredness"][0])

    def feedback(self, image: Tensor, prompt: str = "") -> str:
        reading = self.judge.read(image[None])[0]
        for attribute in ATTRIBUTES:
            want = getattr(self.target, attribute)
            if getattr(reading, attribute) != want:
                return {
                    "colour": f"make it {want}",
                    "shape": f"make the shape a {want}",
                    "size": f"make it {want}",
                    "background": f"use a {want} background",
                }[attribute]
        if self._centredness(image) < self.min_centredness:
            return "move it to the centre"
        return "perfect"

    def satisfied(self, image: Tensor) -> bool:
        return self.feedback(image) == "perfect"

    def satisfaction(self, image: Tensor) -> float:
        """Share of the five wishes (four attributes and the position) that ``image`` meets, in ``[0, 1]``."""
        reading = self.judge.read(image[None])[0]
        hits = sum(getattr(reading, a) == getattr(self.target, a) for a in ATTRIBUTES)
        hits += reading.center is not None and self._centredness(image) >= self.min_centredness
        return hits / 5


def _render_prompt(prompt: str, rng: np.random.Generator, resolution: int) -> Tensor:
    """A toy image ``[3, R, R]`` in ``[0, 1]`` of a toy caption at a random position (a blank canvas otherwise)."""
    c = parse_caption(prompt)
    if c is None:
        return torch.ones(3, resolution, resolution)
    side, center = random_placement(rng, resolution, size_class=c.size)
    pixels = render(Scene(c.colour, c.shape, c.size, c.background, side, center), resolution)
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0


def _save_png(image: Tensor, path: Path) -> None:
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path)


def toy_start(rng: np.random.Generator, max_changes: int = 3) -> tuple[str, str]:
    """A random toy dialogue start: ``(target caption, initial prompt)``.

    The target is drawn uniformly from all 72 toy captions; the initial prompt differs from it in ``1..max_changes``
    attributes (uniform count, then uniform attributes and uniform other values).
    """
    if not 1 <= max_changes <= len(ATTRIBUTES):
        raise ValueError(f"max_changes must be in 1..{len(ATTRIBUTES)}, got {max_changes}")
    captions = toy_prompts("all")
    target_caption = captions[int(rng.integers(len(captions)))]
    target = parse_caption(target_caption)
    start = {a: getattr(target, a) for a in ATTRIBUTES}
    changed = rng.choice(len(ATTRIBUTES), size=int(rng.integers(1, max_changes + 1)), replace=False)
    for a in (ATTRIBUTES[int(j)] for j in changed):
        others = [v for v in _CHOICES[a] if v != start[a]]
        start[a] = others[int(rng.integers(len(others)))]
    return target_caption, toy_caption(start["colour"], start["shape"], start["size"], start["background"])


def make_toy_dialogues(
    path: str | os.PathLike,
    n: int,
    rounds: int = 5,
    seed: int = 0,
    num_images: int = 4,
    max_changes: int = 3,
    resolution: int = 32,
    save_images: bool = False,
    refiner: PromptRefiner | None = None,
) -> list[Dialogue]:
    """Plays ``n`` toy dialogues between :class:`ToySimulatedUser` and a refiner on rendered images; writes JSONL.

    Dialogue ``i`` starts from :func:`toy_start` (a hidden target; an initial prompt differing from it in
    ``1..max_changes`` attributes) and is played by :func:`play_dialogue` on ``num_images`` toy images of each
    prompt (:func:`lit_pref.toy.world.render`, random positions) with the refiner (default :class:`~lit_pref.toy.ToyRefiner`):
    it ends after the round whose chosen image satisfies the user (feedback ``"perfect"``) or after ``rounds``
    rounds. Each turn records ``prompt``, ``user_feedback`` and ``satisfaction``
    (:meth:`ToySimulatedUser.satisfaction`), and with ``save_images`` also ``images`` (PNG files in the folder
    ``<stem>_images/`` beside the file) and ``chosen``. Category ``"toy"``; ids ``toy-<seed>-<i>``. Deterministic
    in ``seed``. The file (and image folder) are replaced atomically.

    Args:
        path: Output ``.jsonl`` file.
        n: Number of dialogues.
        rounds: Maximum rounds per dialogue.
        seed: Seed of targets, initial prompts and positions.
        num_images: Images per round (``K``).
        max_changes: Maximum number of attributes in which the initial prompt differs from the target (1..4).
        resolution: Side of the rendered images.
        save_images: Write the images and record ``images`` and ``chosen``.
        refiner: Prompt refiner; None uses :class:`~lit_pref.toy.ToyRefiner`.

    Returns:
        The dialogues written.
    """
    if n < 0 or rounds < 1 or num_images < 1:
        raise ValueError(f"need n >= 0, rounds >= 1, num_images >= 1; got {n}, {rounds}, {num_images}")
    path = Path(path)
    refiner = refiner if refiner is not None else ToyRefiner()
    rng = np.random.default_rng(seed)
    image_dir = path.parent / f"{path.stem}_images"

    def generate(prompt: str, t: int) -> Tensor:
        return torch.stack([_render_prompt(prompt, rng, resolution) for _ in range(num_images)])

    dialogues: list[Dialogue] = []
    pending_images: list[tuple[str, Tensor]] = []
    for i in range(n):
        target_caption, initial = toy_start(rng, max_changes)
        dialogue_id = f"toy-{seed}-{i}"
        turns, shown = play_dialogue(generate, ToySimulatedUser(target_caption), refiner, initial, rounds)
        for turn, images in zip(turns, shown):
            if save_images:
                turn.images = [f"{image_dir.name}/{dialogue_id}_r{turn.round}_{j}.png" for j in range(num_images)]
                pending_images += [(name.split("/", 1)[1], image) for name, image in zip(turn.images, images)]
            else:
                turn.chosen = None
        dialogues.append(Dialogue(dialogue_id, initial, turns, category="toy"))
    if save_images:
        with atomic_dir(image_dir) as tmp:
            for name, image in pending_images:
                _save_png(image, tmp / name)
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(d.to_json()) + "\n" for d in dialogues), encoding="utf-8")
    return dialogues


def main(argv: list[str]) -> None:
    """``python -m lit_pref make-toy-dialogues --path FILE.jsonl --n N [--rounds R ...]``: :func:`make_toy_dialogues`,
    then how many dialogues and rounds it wrote."""
    parser = function_parser(make_toy_dialogues, "make-toy-dialogues", "Play toy dialogues between the toy world's "
                             "simulated user and a refiner on rendered images; write them as dialogue JSONL.")
    config = parser.parse_args(argv)
    dialogues = call(make_toy_dialogues, parser, config)
    print(f"{len(dialogues)} dialogues ({sum(len(d.turns) for d in dialogues)} rounds) written to {config.path}")
