"""The toy world: procedural captioned images of one coloured shape.

Every image shows one filled shape (circle, square or upright triangle) in one
of the 6 pure colours of :data:`~lit_pref.datamodules.synthetic.COLOURS`, small (7-10
px) or large (14-20 px) at 32 px (ranges scale with the resolution), at a
uniformly random position fully inside the image, on a white or black
background. Its caption is ``"a small red circle on a white background"``.

Three colour-shape combinations (:data:`HELDOUT_COMBOS`) never appear in the
``"train"`` split; the ``"heldout"`` split contains only them (3 combinations
x 2 sizes x 2 backgrounds = 12 prompts), to measure compositional
generalisation. Drawing reuses :mod:`lit_pref.datamodules.synthetic`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .synthetic import BACKGROUNDS, COLOURS, SHAPES, draw_shape, random_placement

__all__ = [
    "HELDOUT_COMBOS",
    "SIZES",
    "Caption",
    "Scene",
    "ToyImageDataModule",
    "ToyImageDataset",
    "caption",
    "collate_toy",
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


class ToyImageDataset(Dataset):
    """Captioned toy images generated on the fly; item ``i`` depends only on ``(seed, i)``.

    Items are ``{"pixel_values": FloatTensor[3, R, R] in [-1, 1], "caption": str}``.

    Args:
        num_items: Length of the data set.
        split: ``"train"`` (no held-out combinations), ``"heldout"`` (only
            them) or ``"all"``.
        resolution: Side ``R`` of the square images in pixels.
        seed: Seed; item ``i`` uses the generator seeded with ``(seed, i)``.
    """

    def __init__(self, num_items: int, split: Split = "train", resolution: int = 32, seed: int = 0) -> None:
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}")
        if resolution < 8:
            raise ValueError(f"resolution must be at least 8, got {resolution}")
        split_combos(split)  # validates
        self.num_items = num_items
        self.split = split
        self.resolution = resolution
        self.seed = seed

    def __len__(self) -> int:
        return self.num_items

    def scene(self, index: int) -> Scene:
        """The scene of item ``index``."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        return sample_scene(np.random.default_rng((self.seed, index)), self.split, self.resolution)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.scene(index)
        image = torch.from_numpy(render(scene, self.resolution)).permute(2, 0, 1)
        return {"pixel_values": image.float().div_(127.5).sub_(1.0), "caption": scene.caption}


def collate_toy(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"pixel_values": [B, 3, R, R], "captions": list[str]}``."""
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "captions": [it["caption"] for it in items],
    }


class ToyImageDataModule(pl.LightningDataModule):
    """Captioned toy images for pre-training a tiny text-to-image model.

    Training items come from the ``"train"`` split (held-out colour-shape
    combinations never appear); validation items from the ``"heldout"`` split
    with seed ``seed + 1_000_000``. Batches are ``{"pixel_values":
    FloatTensor[B, 3, R, R] in [-1, 1], "captions": list[str]}``.

    Args:
        num_train: Number of training images per epoch (generated on the fly).
        num_val: Number of validation images (held-out combinations; 0 for none).
        resolution: Side of the square images in pixels.
        batch_size: Batch size of training and validation.
        num_workers: DataLoader worker processes (persistent when > 0).
        seed: Seed of the images and of the training shuffle order.
    """

    VAL_SEED_OFFSET = 1_000_000

    def __init__(
        self,
        num_train: int = 200_000,
        num_val: int = 512,
        resolution: int = 32,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.num_train = num_train
        self.num_val = num_val
        self.resolution = resolution
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_dataset: ToyImageDataset | None = None
        self.val_dataset: ToyImageDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = ToyImageDataset(self.num_train, "train", self.resolution, self.seed)
        self.val_dataset = ToyImageDataset(
            self.num_val, "heldout", self.resolution, self.seed + self.VAL_SEED_OFFSET
        )

    def _loader(self, dataset: ToyImageDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_toy,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            self.setup("validate")
        if len(self.val_dataset) == 0:
            return []
        return self._loader(self.val_dataset, shuffle=False)
