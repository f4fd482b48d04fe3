"""Test helpers for shard folders: list a hand-made shard file in a folder's `_manifest.json`.

Readers read what the manifest lists and refuse anything else under `split=*/`, so a test that drops a file
of its own into a shard folder (a mislabelled row, a file written without statistics) lists it the way
`srtn tile` would: path relative to the folder, split, source, footer row count, size and content hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

from srtn.data.manifest import MANIFEST_NAME


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
