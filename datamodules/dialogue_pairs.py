"""Recorded dialogues as preference pairs: every round with ``images`` and ``chosen`` gives one pair per unchosen
image (chosen ≻ unchosen, captioned with the round's prompt), so the pair methods and the reward model train on what
people recorded.

- :func:`dialogue_pairs` lists the pairs of a file's dialogues and counts the rounds that give none (no ``images``,
  no ``chosen``, fewer than 2 images, or no known prompt: neither ``prompt`` nor, in round 1, ``initial_prompt``).
- :class:`DialoguePairDataset` loads them in the item format of
  :class:`~lit_pref.datamodules.preference_pairs.PreferencePairDataset`; its :meth:`~DialoguePairDataset.collate` makes the
  batches of :class:`~lit_pref.datamodules.preference_pairs.PreferencePairDataModule` (``images_0``, ``images_1``,
  ``label_0``, ``captions``, ...) plus ``satisfaction`` ``[B]``: the recorded satisfaction of the round's chosen
  image (NaN where the round recorded none), which :class:`lit_pref.modules.RewardModel` can regress as an extra
  target (``satisfaction_weight``).
- ``python -m lit_pref dialogues-to-pairs IN.jsonl OUT_DIR`` (:func:`main`) writes the pairs as a Pick-a-Pic-style
  parquet shard (``caption``, ``jpg_0``, ``jpg_1`` as PNG bytes, ``label_0``, plus ``satisfaction``, ``dialogue_id``
  and ``round``), which ``PreferencePairDataModule(train_path=OUT_DIR)`` reads.

Image order: the ``j``-th pair of a file puts the chosen image first (``label_0 = 1``) when ``j`` is even and second
(``label_0 = 0``) when odd, so a model cannot learn the position instead of the preference.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset

from lit_pref.commands import function_parser
from lit_pref.formats.dialogues import Dialogue, read_dialogues
from lit_pref.io import atomic_file

from .image_modes import image_to_tensor, resize_shorter
from .pair_batches import collate_pairs

__all__ = ["DialoguePair", "DialoguePairDataset", "dialogue_pairs", "export_pairs", "main", "round_prompt"]

ROUNDS_WITHOUT_PAIRS = "data/dialogue_rounds_without_pairs"


@dataclass(frozen=True)
class DialoguePair:
    """One preference pair of a recorded round.

    Attributes:
        caption: The round's prompt.
        image_0: Path of the first image.
        image_1: Path of the second image.
        label_0: 1.0 when ``image_0`` is the chosen one, 0.0 when ``image_1`` is.
        satisfaction: The recorded satisfaction with the chosen image, or None.
        dialogue_id: The dialogue it comes from.
        round: The 1-based round it comes from.
    """

    caption: str
    image_0: str
    image_1: str
    label_0: float
    satisfaction: float | None
    dialogue_id: str
    round: int


def round_prompt(dialogue: Dialogue, index: int) -> str | None:
    """The prompt of turn ``index`` (0-based): its ``prompt``, else ``initial_prompt`` for the first turn, else None."""
    turn = dialogue.turns[index]
    if turn.prompt is not None:
        return turn.prompt
    return dialogue.initial_prompt if index == 0 else None


def dialogue_pairs(dialogues: Sequence[Dialogue], root: str | os.PathLike) -> tuple[list[DialoguePair], int]:
    """The pairs of ``dialogues`` (image paths resolved against ``root``, the JSONL file's folder) and the number of
    rounds that give none (no ``images`` or ``chosen``, fewer than 2 images, or no known prompt)."""
    pairs: list[DialoguePair] = []
    without = 0
    base = Path(root)
    for dialogue in dialogues:
        for i, turn in enumerate(dialogue.turns):
            caption = round_prompt(dialogue, i)
            if turn.images is None or turn.chosen is None or len(turn.images) < 2 or caption is None:
                without += 1
                continue
            winner = str(base / turn.images[turn.chosen])
            for j, image in enumerate(turn.images):
                if j == turn.chosen:
                    continue
                loser = str(base / image)
                first = len(pairs) % 2 == 0
                pairs.append(DialoguePair(caption, winner if first else loser, loser if first else winner,
                                          1.0 if first else 0.0, turn.satisfaction, dialogue.dialogue_id, turn.round))
    return pairs, without


class DialoguePairDataset(Dataset):
    """The preference pairs of a dialogue file, items as :class:`~lit_pref.datamodules.PreferencePairDataset` makes them.

    Items: ``{"image_0", "image_1"}`` (``FloatTensor[3, R, R]`` in ``[-1, 1]``: shorter side resized to
    ``resolution``, centre-cropped), ``label_0``, ``caption``, ``original_size``, ``crop_top_left``, ``index`` and
    ``satisfaction`` (NaN when not recorded).

    Args:
        path: A dialogue ``.jsonl`` file (:mod:`lit_pref.formats.dialogues` format).
        resolution: Side of the square output images.
        check_images: Check that every listed image file exists when reading (an error names the file and line).
    """

    def __init__(self, path: str | os.PathLike, resolution: int = 512, check_images: bool = True) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.path = Path(path)
        self.resolution = resolution
        self.pairs, self.rounds_without_pairs = dialogue_pairs(read_dialogues(path, check_images), self.path.parent)

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, path: str) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """The image, its original ``(height, width)`` and the crop's ``(top, left)``."""
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        r = self.resolution
        resized = resize_shorter(rgb, r)
        w, h = resized.size
        top, left = int(round((h - r) / 2)), int(round((w - r) / 2))
        return image_to_tensor(resized.crop((left, top, left + r, top + r))), (rgb.height, rgb.width), (top, left)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        image_0, size, (top, left) = self._load(pair.image_0)
        image_1, _, _ = self._load(pair.image_1)
        return {
            "image_0": image_0, "image_1": image_1,
            "label_0": torch.tensor(pair.label_0, dtype=torch.float32),
            "caption": pair.caption,
            "original_size": torch.tensor(size, dtype=torch.long),
            "crop_top_left": torch.tensor((top, left), dtype=torch.long),
            "index": index,
            "satisfaction": math.nan if pair.satisfaction is None else pair.satisfaction,
        }

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """:func:`~lit_pref.datamodules.preference_pairs.collate_pairs` plus ``satisfaction`` ``[B]`` (NaN: not recorded)."""
        batch = collate_pairs(items, resolution=self.resolution)
        batch["satisfaction"] = torch.tensor([item["satisfaction"] for item in items], dtype=torch.float32)
        return batch


def _png(path: str) -> bytes:
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def export_pairs(path: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[int, int]:
    """Writes the pairs of a dialogue file to ``out_dir/part-0000000.parquet`` (Pick-a-Pic columns ``caption``,
    ``jpg_0``, ``jpg_1`` (PNG bytes), ``label_0``, plus ``satisfaction``, ``dialogue_id``, ``round``).

    Args:
        path: The dialogue JSONL file.
        out_dir: The output folder (gets part-0000000.parquet).

    Returns:
        ``(pairs written, rounds without pairs)``.

    Raises:
        DialogueFormatError: for an invalid dialogue file or a missing image (naming the file and line).
        ValueError: when no round gives a pair.
    """
    pairs, without = dialogue_pairs(read_dialogues(path), Path(path).parent)
    if not pairs:
        raise ValueError(f"{path}: no round has 'images' (at least 2) and 'chosen'; no pairs to write "
                         f"({without} rounds without pairs)")
    table = pa.table({
        "caption": [p.caption for p in pairs],
        "jpg_0": [_png(p.image_0) for p in pairs],
        "jpg_1": [_png(p.image_1) for p in pairs],
        "label_0": [p.label_0 for p in pairs],
        "satisfaction": pa.array([p.satisfaction for p in pairs], type=pa.float64()),
        "dialogue_id": [p.dialogue_id for p in pairs],
        "round": [p.round for p in pairs],
    })
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "part-0000000.parquet") as tmp:
        pq.write_table(table, tmp, row_group_size=256)
    return len(pairs), without


def main(argv: list[str]) -> None:
    """``python -m lit_pref dialogues-to-pairs IN.jsonl OUT_DIR``: :func:`export_pairs`, then what it wrote."""
    parser = function_parser(export_pairs, "dialogues-to-pairs", "Write a dialogue file's preference pairs as "
                             "Pick-a-Pic parquet.", positional=True)
    config = parser.parse_args(argv)
    written, without = export_pairs(config.path, config.out_dir)
    print(f"{written} pairs written to {Path(config.out_dir) / 'part-0000000.parquet'}; "
          f"{ROUNDS_WITHOUT_PAIRS} = {without}")
