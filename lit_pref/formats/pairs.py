"""The Pick-a-Pic pair layout every pair file of lit_pref uses: the columns and an atomic parquet writer.

Columns: ``caption`` (string), ``jpg_0`` and ``jpg_1`` (encoded image bytes), ``label_0`` (1.0: image 0 preferred,
0.0: image 1, 0.5: a tie). Writers may add columns; :class:`lit_pref.datamodules.PreferencePairDataModule` reads
these four.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lit_pref.io import atomic_dir, atomic_file

__all__ = ["PAIR_SCHEMA", "write_pairs_parquet"]

PAIR_SCHEMA = pa.schema(
    [("caption", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64())]
)


def write_pairs_parquet(table: pa.Table, path: str | os.PathLike, rows_per_file: int | None = None) -> Path:
    """Write a Pick-a-Pic-layout table atomically: a ``.parquet`` file, or with ``rows_per_file`` a folder of
    shards ``part-00000.parquet``, ... An interrupted write never leaves a half-written data set at ``path``."""
    path = Path(path)
    if rows_per_file is None:
        with atomic_file(path) as tmp:
            pq.write_table(table, tmp)
    else:
        with atomic_dir(path) as tmp:
            for shard, start in enumerate(range(0, table.num_rows, rows_per_file)):
                pq.write_table(table.slice(start, rows_per_file), tmp / f"part-{shard:05d}.parquet")
    return path
