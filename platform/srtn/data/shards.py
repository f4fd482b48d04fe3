"""Parquet shard files: one file per source (slide or patient) per split, replaced atomically.

Per-source files make reruns idempotent (a rerun rewrites the same names instead of appending, the
trap of `write_parquet`'s uuid names) and give resume the natural granularity of one slide.
Layout: `OUT/split=<split>/<source_id>.parquet`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from srtn import storage
from srtn.data.schema import IMAGE_COLUMNS, TILE_SCHEMA
from srtn.vocab import SPLITS

__all__ = [
    "safe_name",
    "split_dir",
    "shard_uri",
    "rows_to_table",
    "write_tile_table",
    "write_source_shards",
    "shard_files",
    "read_split_table",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(source_id: str) -> str:
    """A file-name-safe form of a source id (ids are already mostly safe: TCGA barcodes, file stems)."""
    return _UNSAFE.sub("_", source_id).strip("._") or "source"


def split_dir(output: str, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return storage.join(output, f"split={split}")


def shard_uri(output: str, split: str, source_id: str) -> str:
    return storage.join(split_dir(output, split), f"{safe_name(source_id)}.parquet")


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (missing keys = null) as a TILE_SCHEMA table; built column by column, which is 8x faster than
    `Table.from_pylist` on rows of PNG bytes."""
    rows = list(rows)
    columns = [pa.array([row.get(f.name) for row in rows], type=f.type) for f in TILE_SCHEMA]
    return pa.Table.from_arrays(columns, schema=TILE_SCHEMA)


def write_tile_table(table: pa.Table, sink: Any) -> None:
    """Parquet with zstd and dictionaries on the small columns only: the PNG columns are already compressed,
    so zstd and dictionary attempts on them cost CPU (about a tenth of tiling time) for no gain. Statistics
    stay on for every column: readers use the null counts (`reader.check_shards`)."""
    pq.write_table(
        table,
        sink,
        compression={c: ("none" if c in IMAGE_COLUMNS else "zstd") for c in table.column_names},
        use_dictionary=[c for c in table.column_names if c not in IMAGE_COLUMNS],
    )


def write_source_shards(rows: Iterable[Mapping[str, Any]], output: str, source_id: str) -> dict[str, int]:
    """Write one source's rows, one file per split; stale files of other splits are removed.

    Returns the row count per split.
    """
    by_split: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    counts: dict[str, int] = {}
    for split in SPLITS:
        uri = shard_uri(output, split, source_id)
        split_rows = by_split.get(split)
        if not split_rows:
            storage.delete(uri)
            continue
        with storage.atomic_output(uri) as f:  # straight to the file: no second copy of ~15 MB per slide
            write_tile_table(rows_to_table(split_rows), f)
        counts[split] = len(split_rows)
    return counts


def shard_files(output: str, split: str) -> list[str]:
    """Parquet files of one split (sorted; empty if the split has none)."""
    directory = split_dir(output, split)
    if not storage.exists(directory):
        return []
    return storage.list_files(directory, extensions=[".parquet"], recursive=False)


def read_split_table(output: str, split: str, *, columns: list[str] | None = None) -> pa.Table:
    """The whole split as one table (tests, small datasets); training streams with Ray Data instead."""
    files = shard_files(output, split)
    if not files:
        return TILE_SCHEMA.empty_table().select(columns) if columns else TILE_SCHEMA.empty_table()
    tables = []
    for uri in files:
        fs, path = storage.resolve(uri)
        tables.append(pq.read_table(path, filesystem=fs, columns=columns, schema=TILE_SCHEMA))
    return pa.concat_tables(tables)
