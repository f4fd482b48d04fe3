"""The manifest, the dataset's contract: `OUT/_manifest.json`, built from per-source `OUT/_status/<source>.json`.

What a finished run guarantees (Delta Lake / Iceberg style: the log is the table):
- `files` lists every shard file of the dataset, sorted by path, each `{path, split, source_id, rows, bytes,
  sha256}`; the set of `*.parquet` files under `OUT/split=*/` is exactly that list (the job deletes the rest).
- `fingerprint` is the sha256 of the config keys that change rows; a source is resumed only when its status
  record has the same fingerprint and its listed files are on disk with the recorded sizes (`is_done`).
- every source has a record: `done` (with its `files`), `failed` (with the reason, no files) or `skipped`;
  each keeps its original `path`; inputs left aside (dangling links, other extensions) are in `skipped`.
- the manifest is written last and removed when a run starts: a folder without one is incomplete.

Names start with `_`, so Parquet readers (pandas, pyarrow.dataset, polars, duckdb, Ray) skip them. Each
finished source writes its status record after its shards are in place, so a killed job knows exactly
which sources are done; a failed source is recorded with its reason and never stops the others.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from srtn import storage
from srtn.data.shards import existing_shards, remove_unlisted, safe_name
from srtn.errors import ConfigError
from srtn.vocab import SPLITS

__all__ = [
    "MANIFEST_NAME",
    "LEGACY_MANIFEST_NAME",
    "STATUS_DIR",
    "fingerprint",
    "check_output",
    "status_uri",
    "write_status",
    "read_status",
    "read_statuses",
    "is_done",
    "build_manifest",
    "write_manifest",
    "remove_manifest",
    "commit_manifest",
    "read_manifest",
    "listed_files",
    "manifest_hash",
    "summary_table",
]

MANIFEST_NAME = "_manifest.json"
LEGACY_MANIFEST_NAME = "manifest.json"  # before issue 15; a run deletes it (Parquet readers choke on it)
STATUS_DIR = "_status"


def fingerprint(row_config: Mapping[str, Any]) -> str:
    """sha256 hex of the config that changes rows (canonical JSON: key order does not matter)."""
    text = json.dumps(row_config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_output(output: str, *, key: str = "output") -> None:
    """Before any work: `output` must be a folder or prefix that exists or can be created and takes a probe
    file; else `ConfigError` naming the key and the value."""
    try:
        storage.check_writable_folder(output)
    except ValueError as exc:
        raise ConfigError(f"{key} {output!r} {exc}", key=key, path=output or None) from exc


def status_uri(output: str, source_id: str) -> str:
    return storage.join(output, STATUS_DIR, f"{safe_name(source_id)}.json")


def write_status(output: str, record: Mapping[str, Any]) -> None:
    storage.write_bytes(status_uri(output, record["source_id"]), json.dumps(record, sort_keys=True).encode())


def read_status(output: str, source_id: str) -> dict[str, Any] | None:
    uri = status_uri(output, source_id)
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, OSError):
        return None  # a torn record counts as not done: the source is redone


def read_statuses(output: str) -> dict[str, str]:
    """`{status file name without .json: uri}` of every status record under `OUT/_status/`."""
    names = storage.file_sizes(storage.join(output, STATUS_DIR))
    return {n[: -len(".json")]: storage.join(output, STATUS_DIR, n) for n in names if n.endswith(".json")}


def is_done(
    record: Mapping[str, Any] | None,
    *,
    fingerprint: str,
    existing: Mapping[str, int],
    inputs: str | None = None,
) -> bool:
    """Whether a source can be resumed: `done` with this config's fingerprint (and these inputs, where the
    job records them), every listed file present (`existing`: path -> bytes) with its recorded size."""
    if not record or record.get("status") != "done" or record.get("fingerprint") != fingerprint:
        return False
    if inputs is not None and record.get("inputs") != inputs:
        return False
    files = record.get("files")
    if not isinstance(files, list):
        return False
    return all(existing.get(f.get("path")) == f.get("bytes") for f in files)


def build_manifest(
    config: Mapping[str, Any],
    records: Iterable[Mapping[str, Any]],
    *,
    job: str,
    fingerprint: str = "",
    skipped: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """Totals per split, per status and per rejection reason, every source's record, and every shard file
    of the dataset (`files`, from the `done` records)."""
    records = sorted(records, key=lambda r: r["source_id"])
    per_split: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    seen = kept = 0
    files: list[dict[str, Any]] = []
    for rec in records:
        statuses[rec["status"]] += 1
        per_split.update(rec.get("split_counts", {}))
        rejected.update(rec.get("rejected", {}))
        seen += rec.get("seen", 0)
        kept += rec.get("kept", 0)
        if rec["status"] == "done":
            files.extend(rec.get("files", []))
    return {
        "job": job,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": dict(config),
        "fingerprint": fingerprint,
        "totals": {
            "sources": len(records),
            "status": dict(sorted(statuses.items())),
            "seen": seen,
            "kept": kept,
            "rejected": dict(sorted(rejected.items())),
            "per_split": {s: per_split.get(s, 0) for s in SPLITS},
            "files": len(files),
            "skipped": len(skipped),
        },
        "files": sorted(files, key=lambda f: f["path"]),
        "skipped": [dict(s) for s in skipped],
        "sources": list(records),
    }


def write_manifest(output: str, manifest: Mapping[str, Any]) -> str:
    """Write `OUT/_manifest.json` (whole or not at all) and delete a pre-issue-15 `manifest.json`."""
    uri = storage.join(output, MANIFEST_NAME)
    storage.write_bytes(uri, json.dumps(manifest, indent=2, sort_keys=False).encode())
    storage.delete(storage.join(output, LEGACY_MANIFEST_NAME))
    return uri


def remove_manifest(output: str) -> None:
    """What a run does first: until it has finished, the folder has no manifest (readers refuse it)."""
    storage.delete(storage.join(output, MANIFEST_NAME))
    storage.delete(storage.join(output, LEGACY_MANIFEST_NAME))


def commit_manifest(output: str, manifest: Mapping[str, Any]) -> str:
    """End a run: delete every shard file and status record the manifest does not list, check that the listed
    files are on disk with their sizes, then write the manifest. Raises `OSError` when the folder cannot be
    made to match (the job then exits 1 and writes no manifest)."""
    listed = {f["path"]: f["bytes"] for f in manifest["files"]}
    remove_unlisted(output, listed)
    sources = {safe_name(r["source_id"]) for r in manifest["sources"]}
    for name, uri in read_statuses(output).items():
        if name not in sources:
            storage.delete(uri)
    on_disk = existing_shards(output)
    wrong = sorted(p for p in listed.keys() | on_disk.keys() if listed.get(p) != on_disk.get(p))
    if wrong:
        raise OSError(f"shard files changed while the run wrote them (another writer?): {wrong[:5]}")
    return write_manifest(output, manifest)


def read_manifest(output: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(storage.join(output, MANIFEST_NAME)))


def listed_files(manifest: Mapping[str, Any], split: str | None = None) -> list[dict[str, Any]]:
    """The manifest's shard file entries (of one split), sorted by path."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return [dict(f) for f in manifest.get("files", []) if split is None or f["split"] == split]


def manifest_hash(output: str) -> str:
    """Hash of what the shards hold (their listed paths, rows and content hashes, not timestamps): tags
    training runs with their data."""
    manifest = read_manifest(output)
    stable = [{k: f.get(k) for k in ("path", "rows", "sha256")} for f in manifest.get("files", [])]
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def summary_table(manifest: Mapping[str, Any]) -> str:
    """A closing summary for the console: sources by status, tiles kept and rejected, per split, failures,
    sources that gave no tiles and inputs left aside."""
    totals = manifest["totals"]
    lines = [
        f"sources: {totals['sources']}  " + "  ".join(f"{k}={v}" for k, v in totals["status"].items()),
        f"tiles seen: {totals['seen']}  kept: {totals['kept']}",
    ]
    for reason, n in totals["rejected"].items():
        lines.append(f"  rejected {reason:<14} {n}")
    lines.append("per split: " + "  ".join(f"{s}={n}" for s, n in totals["per_split"].items()))
    for rec in manifest["sources"]:
        if rec["status"] == "failed":
            lines.append(f"  FAILED {rec['source_id']}: {rec.get('error', '?')}")
        elif rec.get("warning"):
            lines.append(f"  WARNING {rec['source_id']}: {rec['warning']}")
    skipped = manifest.get("skipped", [])
    if skipped:
        kinds = Counter(s["reason"] for s in skipped)
        lines.append(f"  SKIPPED {len(skipped)} input file(s): " + ", ".join(f"{k} ({n})" for k, n in kinds.items()))
    return "\n".join(lines)
