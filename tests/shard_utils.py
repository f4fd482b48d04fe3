"""Test helpers for shard folders: the manifest contract (`assert_folder_is_manifest`), and listing a
hand-made shard file in a folder's `_manifest.json`.

Readers read what the manifest lists and refuse anything else under `split=*/`, so a test that drops a file
of its own into a shard folder (a mislabelled row, a file written without statistics) lists it the way
`srtn tile` would: path relative to the folder, split, source, footer row count, size and content hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

from srtn.data.manifest import MANIFEST_NAME, read_manifest
from srtn.data.shards import safe_name


def file_entry(output: str | Path, path: str, *, source_id: str) -> dict:
    """The manifest entry of `OUT/<path>` (`path` as `split=<split>/<name>.parquet`)."""
    full = Path(output) / path
    data = full.read_bytes()
    split = path.split("/", 1)[0].removeprefix("split=")
    rows = pq.ParquetFile(full).metadata.num_rows
    return {"path": path, "split": split, "source_id": source_id, "rows": rows, "bytes": len(data)} | {
        "sha256": hashlib.sha256(data).hexdigest()
    }


def list_in_manifest(output: str | Path, path: str, *, source_id: str) -> None:
    """Add (or replace) the entry of `OUT/<path>` in `OUT/_manifest.json` (started with no files if missing)."""
    uri = Path(output) / MANIFEST_NAME
    manifest = json.loads(uri.read_text()) if uri.exists() else {"files": []}
    files = [f for f in manifest.get("files", []) if f["path"] != path]
    files.append(file_entry(output, path, source_id=source_id))
    manifest["files"] = sorted(files, key=lambda f: f["path"])
    uri.write_text(json.dumps(manifest, indent=2))


def assert_folder_is_manifest(out: Path, *, source_column: str = "source_id") -> dict:
    """The contract: the `*.parquet` files under `split=*/` are exactly the listed ones, each with its
    recorded size, hash, row count, split and source; one status record per source; totals add up.
    (`source_column`: the row column that names a file's source; BreakHis files are per patient: `group_id`.)"""
    manifest = read_manifest(str(out))
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(out).as_posix(): p for p in out.glob("split=*/**/*") if p.is_file()}
    assert set(on_disk) == set(listed), "files on disk differ from the manifest"
    for path, entry in listed.items():
        file = on_disk[path]
        data = file.read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], path
        table = pq.read_table(file, columns=[source_column])
        assert table.num_rows == entry["rows"], path
        assert path.startswith(f"split={entry['split']}/"), path  # the split is the folder, not a column
        assert set(table[source_column].to_pylist()) == {entry["source_id"]}, path
    sources = manifest["sources"]
    assert {p.stem for p in (out / "_status").glob("*.json")} == {safe_name(r["source_id"]) for r in sources}
    for rec in sources:
        own = sorted(f["path"] for f in manifest["files"] if f["source_id"] == rec["source_id"])
        assert sorted(f["path"] for f in rec.get("files", [])) == own
        assert rec["status"] == "done" or not own  # a failure publishes nothing
        assert rec["fingerprint"] == manifest["fingerprint"]
    assert sum(f["rows"] for f in manifest["files"]) == manifest["totals"]["kept"]
    assert not (out / "manifest.json").exists()
    return manifest
