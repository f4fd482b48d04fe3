"""Writing one source's shard files: rows stream into one Parquet file per split, row group by row group, and
are published all at once or not at all.

A slide cut whole holds tens of thousands of tiles (several GB of PNG bytes): `SourceShardWriter` never holds
more than `row_group_rows` rows per split. Files are written under hidden temporary names in their split
folders (names Parquet readers skip; `shards.remove_unlisted` deletes those a killed run left) and renamed
into place by `publish`; on S3 a finished local file is uploaded to the temporary key and then moved (an S3
output stream closed after an error would publish a truncated object). If anything fails, the temporary files
and every file the source had are removed: a failed source publishes nothing.

Region tasks of one slide (`srtn.data.regions`) each write their part of every split the same way and
`append_part` streams each part, in region order, into the slide's writer (`regions.RegionMerger`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from srtn import storage
from srtn.data.schema import FILE_SCHEMA, IMAGE_COLUMNS
from srtn.data.shards import remove_source_files, rows_to_table, shard_path, shard_uri
from srtn.vocab import SPLITS

__all__ = [
    "SourceShardWriter",
    "append_part",
    "write_source_files",
    "write_source_shards",
    "write_tile_table",
    "parquet_options",
]


def parquet_options(columns: Sequence[str]) -> dict[str, Any]:
    """zstd and dictionaries on the small columns only: the PNG columns are already compressed, so zstd and
    dictionary attempts on them cost CPU (about a tenth of tiling time) for no gain. Statistics stay on for
    every column: readers use the null counts (`reader.check_shards`)."""
    return {
        "compression": {c: ("none" if c in IMAGE_COLUMNS else "zstd") for c in columns},
        "use_dictionary": [c for c in columns if c not in IMAGE_COLUMNS],
    }


def write_tile_table(table: pa.Table, sink: Any) -> None:
    """A whole table as one Parquet file with the shard options (`parquet_options`)."""
    pq.write_table(table, sink, **parquet_options(table.column_names))


def _hidden(uri: str, tag: str) -> str:
    """A temporary name beside `uri` that Parquet readers skip and `shards.remove_unlisted` recognises."""
    parent, name = uri.rsplit("/", 1) if "/" in uri else ("", uri)
    hidden = f".{name}{'.' + tag if tag else ''}.tmp-{uuid.uuid4().hex[:8]}"
    return f"{parent}/{hidden}" if parent else hidden


class _HashingFile(io.RawIOBase):
    """A local file that hashes what is written to it: a published file's sha256 comes with writing it, not
    from reading it back (that read was 1.1 s of one busy CPU after the last region of a 40k slide)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._fh = open(path, "wb")  # noqa: SIM115 (closed by close(), which the Parquet writer calls)
        self.hash, self.size = hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.hash.update(data)
        n = self._fh.write(data)
        self.size += n
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
            super().close()


class _SplitFile:
    """One split's file being written: a local file (beside the target, or a temp file for S3 targets),
    hashed as it is written unless it is a region's part (`tag`: merged, then deleted)."""

    def __init__(self, target: str, tag: str, row_group_rows: int) -> None:
        self.target, self.rows, self.row_group_rows = target, 0, row_group_rows
        self.remote = storage.is_remote(target)
        self.uri = _hidden(target, tag)  # where it lies until published (remote: uploaded there by `finish`)
        if self.remote:
            fd, self.local = tempfile.mkstemp(prefix="srtn-shard-", suffix=".parquet")
            os.close(fd)
        else:
            self.local = storage.resolve(self.uri)[1]
            os.makedirs(os.path.dirname(self.local) or ".", exist_ok=True)
        self._sink = None if tag else _HashingFile(self.local)
        self._writer = pq.ParquetWriter(self._sink or self.local, FILE_SCHEMA, **parquet_options(FILE_SCHEMA.names))
        self._buffer: list[Mapping[str, Any]] = []
        self.sha256, self.bytes = "", 0

    def add(self, row: Mapping[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.row_group_rows:
            self.flush()

    def add_table(self, table: pa.Table) -> None:
        self.flush()
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self.rows += table.num_rows

    def flush(self) -> None:
        if self._buffer:
            table = rows_to_table(self._buffer, schema=FILE_SCHEMA)  # the split is the folder
            self._writer.write_table(table, row_group_size=table.num_rows)
            self.rows += table.num_rows
            self._buffer = []

    def finish(self) -> None:
        """Close the file and (S3) upload it to its temporary key."""
        self.flush()
        self._writer.close()
        if self._sink is not None:
            self._sink.close()
            self.sha256, self.bytes = self._sink.hash.hexdigest(), self._sink.size
        if self.remote:
            fs, path = storage.resolve(self.uri)
            with open(self.local, "rb") as src, fs.open_output_stream(path) as dst:
                shutil.copyfileobj(src, dst, length=8 << 20)
            self._remove_local()

    def publish(self) -> None:
        fs, path = storage.resolve(self.uri)
        final = storage.resolve(self.target)[1]
        if isinstance(fs, pafs.LocalFileSystem):
            os.replace(path, final)
        else:
            fs.move(path, final)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        if self._sink is not None:
            self._sink.close()
        self._remove_local()
        with contextlib.suppress(Exception):
            storage.delete(self.uri)

    def _remove_local(self) -> None:
        if self.remote:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.local)


class SourceShardWriter:
    """Streams one source's rows into its split files. `publish()` renames them into place and returns their
    manifest entries; `finish_parts()` (region tasks) leaves them under temporary names for `append_part`.
    Use it as a context manager: leaving on an error discards everything written."""

    def __init__(self, output: str, source_id: str, *, row_group_rows: int = 128, part: str = "") -> None:
        self.output, self.source_id, self.part, self.row_group_rows = output, source_id, part, row_group_rows
        self._files: dict[str, _SplitFile] = {}

    def __enter__(self) -> SourceShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.discard()
            if not self.part:  # a failed source publishes nothing, not even its files of an earlier run
                remove_source_files(self.output, self.source_id)

    def _file(self, split: str) -> _SplitFile:
        if split not in self._files:
            target = shard_uri(self.output, split, self.source_id)
            self._files[split] = _SplitFile(target, self.part, self.row_group_rows)
        return self._files[split]

    def add(self, row: Mapping[str, Any]) -> None:
        self._file(row["split"]).add(row)

    def add_table(self, split: str, table: pa.Table) -> None:
        self._file(split).add_table(table)

    def finish_parts(self) -> list[dict[str, Any]]:
        """Close every split file and leave it unpublished: `[{split, uri, rows}]` for `append_part`."""
        try:
            for f in self._files.values():
                f.finish()
        except BaseException:
            self.discard()
            raise
        return [{"split": s, "uri": f.uri, "rows": f.rows} for s, f in self._files.items() if f.rows]

    def publish(self) -> list[dict[str, Any]]:
        """Publish all splits or none; remove the source's files of splits it no longer has."""
        try:
            for f in self._files.values():
                f.finish()
            for f in self._files.values():
                f.publish()
        except BaseException:
            self.discard()
            remove_source_files(self.output, self.source_id)
            raise
        for split in SPLITS:
            if split not in self._files:
                storage.delete(shard_uri(self.output, split, self.source_id))
        return [self._entry(s, f) for s in SPLITS if (f := self._files.get(s)) is not None]

    def _entry(self, split: str, f: _SplitFile) -> dict[str, Any]:
        entry = {"path": shard_path(split, self.source_id), "split": split, "source_id": self.source_id}
        return entry | {"rows": f.rows, "bytes": f.bytes, "sha256": f.sha256}

    def discard(self) -> None:
        for f in self._files.values():
            f.discard()


def append_part(writer: SourceShardWriter, part: Mapping[str, Any], *, limit: int | None = None) -> None:
    """Stream one region part (a `finish_parts` entry) into `writer`, one row group at a time, keeping its first
    `limit` rows (all when None; a capped slide's last region keeps fewer), then delete the part."""
    try:
        left = part["rows"] if limit is None else limit
        if left > 0:
            fs, path = storage.resolve(part["uri"])
            with fs.open_input_file(path) as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=writer.row_group_rows):
                    batch = batch.slice(0, left)
                    writer.add_table(part["split"], pa.Table.from_batches([batch], schema=FILE_SCHEMA))
                    left -= batch.num_rows
                    if left <= 0:
                        break
    finally:
        with contextlib.suppress(Exception):
            storage.delete(part["uri"])


def write_source_files(
    rows: Iterable[Mapping[str, Any]], output: str, source_id: str, *, row_group_rows: int = 128
) -> list[dict[str, Any]]:
    """Write one source's rows, one file per split, all or nothing; return their manifest entries.

    Files of splits the source no longer has are removed. On any error (the disk is full, the store refuses)
    nothing of the source stays published, not even its files from an earlier run, and the error propagates.
    """
    with SourceShardWriter(output, source_id, row_group_rows=row_group_rows) as writer:
        for row in rows:
            writer.add(row)
        return writer.publish()


def write_source_shards(rows: Iterable[Mapping[str, Any]], output: str, source_id: str) -> dict[str, int]:
    """`write_source_files`, returning the row count per split (what status records keep as `split_counts`)."""
    return {e["split"]: e["rows"] for e in write_source_files(rows, output, source_id)}
