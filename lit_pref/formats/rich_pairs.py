"""Rich preference pairs (RPO): the shard layout :class:`lit_pref.rpo.PairSynthesizer` writes and
:class:`lit_pref.datamodules.RichPreferenceDataModule` reads.

A synthesis folder holds ``part-NNNNNNN.parquet`` shards whose schema metadata (``METADATA_KEY``) lists every item
of the shard's batch, kept or not, and, once the run is complete, ``_stats.json`` (:class:`SynthesisStats`). The
shards have the Pick-a-Pic columns (:data:`lit_pref.formats.pairs.PAIR_SCHEMA`; ``jpg_0`` is the edit, ``jpg_1``
the original) plus :data:`RICH_PAIR_SCHEMA`'s. An iterative run keeps one folder per round: ``round-0000``,
``round-0001``...
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import Tensor

from lit_pref.formats.pairs import PAIR_SCHEMA

STATS_FILE = "_stats.json"  # written when a synthesis run is complete


def round_dir(pairs_dir: str | Path, index: int) -> Path:
    """The folder of synthesis round ``index``: ``<pairs_dir>/round-0000``, ``round-0001``..."""
    return Path(pairs_dir) / f"round-{index:04d}"


def complete_rounds(pairs_dir: str | Path) -> list[Path]:
    """The round folders of ``pairs_dir`` whose synthesis finished (they hold ``_stats.json``), oldest first."""
    folder = Path(pairs_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("round-[0-9][0-9][0-9][0-9]") if (p / STATS_FILE).is_file())


FORMAT_VERSION = 2  # 2: edit_mask column, two-sided relabelling
METADATA_KEY = b"lit_pref.rpo.items"
SHARD_GLOB = "part-*.parquet"
RICH_PAIR_SCHEMA = pa.schema(list(PAIR_SCHEMA) + [
    pa.field("critique", pa.string()),
    pa.field("issues", pa.list_(pa.string())),
    pa.field("instructions", pa.list_(pa.string())),
    pa.field("item", pa.int64()),
    pa.field("seed", pa.int64()),
    pa.field("reward_0", pa.float64()),
    pa.field("reward_1", pa.float64()),
    pa.field("edit_mask", pa.binary()),
])


@dataclass
class SynthesisStats:
    """Counts and gains of a synthesis run.

    Attributes:
        sampled: Items sampled and critiqued.
        proposed: Pairs proposed: items whose critique had instructions, so an edit was made.
        kept: Pairs kept: ``kept_edit_wins + kept_original_wins``.
        mean_gain: Mean scorer gain of the kept pairs' winner over their loser (NaN when none); with one-sided
            relabelling, the mean gain of the kept edits.
        mean_gain_proposed: Mean gain (edit minus original) of all proposed pairs (NaN when none).
        kept_edit_wins: Pairs kept with the edit as the winner (its gain above the margin).
        kept_original_wins: Pairs kept with the original as the winner (two-sided relabelling: the edit lost more
            than the margin).
        seconds: Wall time of the call that returned them (0 when read back from ``_stats.json``).
    """

    sampled: int
    proposed: int
    kept: int
    mean_gain: float
    mean_gain_proposed: float
    kept_edit_wins: int = 0
    kept_original_wins: int = 0
    seconds: float = 0.0

    @property
    def kept_per_second(self) -> float:
        return self.kept / self.seconds if self.seconds > 0 else math.nan


def png_bytes(image: Tensor) -> bytes:
    """``[3, H, W]`` in ``[0, 1]`` -> PNG bytes (lossless: 8-bit values survive the round trip)."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png_bytes(mask: Tensor) -> bytes:
    """``[1, H, W]`` in ``[0, 1]`` -> PNG bytes of a greyscale image (255 = repainted)."""
    array = (mask.detach().float().clamp(0, 1)[0] * 255).round().to(torch.uint8).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def read_items(output_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Every finished item recorded in the shards of ``output_dir`` (item index -> its record)."""
    items: dict[int, dict[str, Any]] = {}
    for shard in sorted(Path(output_dir).glob(SHARD_GLOB)):
        metadata = pq.read_schema(shard).metadata or {}
        if METADATA_KEY not in metadata:
            raise ValueError(f"{shard}: not a shard written by PairSynthesizer (no {METADATA_KEY.decode()} metadata)")
        for record in json.loads(metadata[METADATA_KEY]):
            if record["item"] in items:
                raise ValueError(f"{shard}: item {record['item']} is also in another shard of {output_dir}")
            items[record["item"]] = record
    return items


def summarise(records: Sequence[dict[str, Any]], seconds: float = 0.0) -> SynthesisStats:
    """:class:`SynthesisStats` of item records."""
    proposed = [r["gain"] for r in records if r["gain"] is not None]
    kept = [r["gain"] if r["winner"] == "edit" else -r["gain"] for r in records if r["kept"]]
    return SynthesisStats(
        sampled=len(records),
        proposed=len(proposed),
        kept=len(kept),
        mean_gain=sum(kept) / len(kept) if kept else math.nan,
        mean_gain_proposed=sum(proposed) / len(proposed) if proposed else math.nan,
        kept_edit_wins=sum(r["winner"] == "edit" for r in records),
        kept_original_wins=sum(r["winner"] == "original" for r in records),
        seconds=seconds,
    )


def read_stats(output_dir: str | Path) -> SynthesisStats | None:
    """The statistics of a complete run (its ``_stats.json``), or None while it is incomplete."""
    path = Path(output_dir) / STATS_FILE
    if not path.is_file():
        return None
    return SynthesisStats(**json.loads(path.read_text()))
