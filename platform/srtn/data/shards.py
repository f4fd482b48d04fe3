"""Parquet shard files: one file per source (slide or patient) per split, published all at once or not at all.

Layout: `OUT/split=<split>/<source_id>.parquet`. Per-source files make reruns idempotent (a rerun rewrites
the same names instead of appending, the trap of `write_parquet`'s uuid names) and give resume the natural
granularity of one slide. A source's splits are first written to hidden temporary files in their split
folders (names Parquet readers skip), then renamed into place; if any write fails (a full disk), the
temporary files and every file the source had are removed, so a failed source publishes nothing.

Each published file is described by a manifest entry `{path, split, source_id, rows, bytes, sha256}`
(`path` relative to OUT, "/"-separated); `remove_unlisted` deletes every shard file a run's manifest does
not list, which is what makes the folder exactly what the manifest says.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from srtn import storage
from srtn.data.schema import FILE_SCHEMA, IMAGE_COLUMNS, TILE_SCHEMA
from srtn.vocab import SPLITS

__all__ = [
    "safe_name",
    "split_dir",
    "shard_uri",
    "shard_path",
    "rows_to_table",
    "write_tile_table",
    "write_source_files",
    "write_source_shards",
    "describe_source_files",
    "remove_source_files",
    "existing_shards",
    "remove_unlisted",
    "shard_files",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TEMP = re.compile(r"\.tmp-[0-9a-f]{8}$")  # ours (hidden) and storage.atomic_output's: debris of a killed run


def safe_name(source_id: str) -> str:
    """A file-name-safe form of a source id. Tiling ids are safe by construction (`data.inputs`), so this is
    the identity for them; it guards ids from elsewhere (BreakHis patients, synthetic sources)."""
    return _UNSAFE.sub("_", source_id).strip("._") or "source"


def split_dir(output: str, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return storage.join(output, f"split={split}")


def shard_path(split: str, source_id: str) -> str:
    """The shard's path relative to OUT, as the manifest lists it: `split=<split>/<name>.parquet`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return f"split={split}/{safe_name(source_id)}.parquet"


def shard_uri(output: str, split: str, source_id: str) -> str:
    return storage.join(output, *shard_path(split, source_id).split("/"))


def rows_to_table(rows: Iterable[Mapping[str, Any]], *, schema: pa.Schema = TILE_SCHEMA) -> pa.Table:
    """Rows (missing keys = null) as a table of `schema` (a shard file's: `FILE_SCHEMA`); built column by
    column, which is 8x faster than `Table.from_pylist` on rows of PNG bytes."""
    rows = list(rows)
    columns = [pa.array([row.get(f.name) for row in rows], type=f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


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


def _sha256_file(uri: str) -> tuple[str, int]:
    fs, path = storage.resolve(uri)
    digest, size = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@dataclass
class _Staged:
    """One split's file, written but not yet published: a local temp file, or the bytes for one put."""

    entry: dict[str, Any]
    uri: str
    tmp: str | None = None
    data: bytes | None = None

    def publish(self) -> None:
        if self.tmp is not None:
            os.replace(self.tmp, storage.resolve(self.uri)[1])
            self.tmp = None
        else:
            storage.write_bytes(self.uri, self.data or b"")

    def discard(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.tmp)


def _stage(output: str, split: str, source_id: str, rows: list[Mapping[str, Any]]) -> _Staged:
    uri = shard_uri(output, split, source_id)
    entry: dict[str, Any] = {"path": shard_path(split, source_id), "split": split, "source_id": source_id}
    entry["rows"] = len(rows)
    table = rows_to_table(rows, schema=FILE_SCHEMA)  # the split is the folder
    if storage.is_remote(uri):
        sink = pa.BufferOutputStream()
        write_tile_table(table, sink)
        data = sink.getvalue().to_pybytes()
        entry |= {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return _Staged(entry, uri, data=data)
    final = storage.resolve(uri)[1]
    os.makedirs(os.path.dirname(final), exist_ok=True)
    staged = _Staged(entry, uri, tmp=os.path.join(os.path.dirname(final), f".{os.path.basename(final)}"))
    staged.tmp = f"{staged.tmp}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(staged.tmp, "wb") as f:  # straight to the file: no second copy of ~15 MB per slide
            write_tile_table(table, f)
        entry["sha256"], entry["bytes"] = _sha256_file(staged.tmp)
    except BaseException:
        staged.discard()
        raise
    return staged


def write_source_files(rows: Iterable[Mapping[str, Any]], output: str, source_id: str) -> list[dict[str, Any]]:
    """Write one source's rows, one file per split, all or nothing; return their manifest entries.

    Files of splits the source no longer has are removed. On any error (the disk is full, the store refuses)
    nothing of the source stays published, not even its files from an earlier run, and the error propagates.
    """
    by_split: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    staged: list[_Staged] = []
    try:
        for split in SPLITS:
            if by_split.get(split):
                staged.append(_stage(output, split, source_id, by_split[split]))
        for item in staged:
            item.publish()
    except BaseException:
        for item in staged:
            item.discard()
        remove_source_files(output, source_id)
        raise
    for split in SPLITS:
        if not by_split.get(split):
            storage.delete(shard_uri(output, split, source_id))
    return [item.entry for item in staged]


def write_source_shards(rows: Iterable[Mapping[str, Any]], output: str, source_id: str) -> dict[str, int]:
    """`write_source_files`, returning the row count per split (what status records keep as `split_counts`)."""
    return {e["split"]: e["rows"] for e in write_source_files(rows, output, source_id)}


def describe_source_files(output: str, source_id: str, split_counts: Mapping[str, int]) -> list[dict[str, Any]]:
    """Manifest entries of a source's published files (read back to hash them), from its row counts."""
    entries = []
    for split in SPLITS:
        rows = int(split_counts.get(split, 0))
        if rows:
            sha, size = _sha256_file(shard_uri(output, split, source_id))
            path = shard_path(split, source_id)
            entries.append({"path": path, "split": split, "source_id": source_id, "rows": rows, "bytes": size})
            entries[-1]["sha256"] = sha
    return entries


def remove_source_files(output: str, source_id: str) -> None:
    """Unpublish a source: its file in every split."""
    for split in SPLITS:
        storage.delete(shard_uri(output, split, source_id))


def existing_shards(output: str) -> dict[str, int]:
    """`{path: bytes}` of every `*.parquet` under `OUT/split=*/` (paths as the manifest lists them)."""
    return {p: n for p, n in storage.file_sizes(output).items() if p.startswith("split=") and p.endswith(".parquet")}


def remove_unlisted(output: str, listed: Collection[str]) -> list[str]:
    """Delete every shard file under `OUT/split=*/` that `listed` (manifest paths) does not name, and the
    temporary files a killed run left; returns the paths removed."""
    keep = set(listed)
    removed = []
    for path in storage.file_sizes(output):
        if not path.startswith("split="):
            continue
        if (path.endswith(".parquet") and path not in keep) or _TEMP.search(path):
            storage.delete(storage.join(output, *path.split("/")))
            removed.append(path)
    return sorted(removed)


def shard_files(output: str, split: str) -> list[str]:
    """Parquet files of one split (sorted; empty if the split has none)."""
    directory = split_dir(output, split)
    if not storage.exists(directory):
        return []
    return storage.list_files(directory, extensions=[".parquet"], recursive=False)
