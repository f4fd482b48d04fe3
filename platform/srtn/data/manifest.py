"""Run manifests: per-source status records and the `OUT/manifest.json` summary.

Each finished source writes `OUT/_status/<source>.json` after its shards are in place, so a killed
job knows exactly which sources are done; `manifest.json` is rebuilt from those records at the end.
A failed source is recorded with its reason and never stops the others.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from srtn import storage
from srtn.data.shards import safe_name
from srtn.vocab import SPLITS

__all__ = [
    "status_uri",
    "write_status",
    "read_status",
    "build_manifest",
    "write_manifest",
    "read_manifest",
    "manifest_hash",
    "summary_table",
]

MANIFEST_NAME = "manifest.json"


def status_uri(output: str, source_id: str) -> str:
    return storage.join(output, "_status", f"{safe_name(source_id)}.json")


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


def build_manifest(config: Mapping[str, Any], records: Iterable[Mapping[str, Any]], *, job: str) -> dict[str, Any]:
    """Totals per split, per status and per rejection reason, plus every source's record."""
    records = sorted(records, key=lambda r: r["source_id"])
    per_split: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    seen = kept = 0
    for rec in records:
        statuses[rec["status"]] += 1
        per_split.update(rec.get("split_counts", {}))
        rejected.update(rec.get("rejected", {}))
        seen += rec.get("seen", 0)
        kept += rec.get("kept", 0)
    return {
        "job": job,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": dict(config),
        "totals": {
            "sources": len(records),
            "status": dict(sorted(statuses.items())),
            "seen": seen,
            "kept": kept,
            "rejected": dict(sorted(rejected.items())),
            "per_split": {s: per_split.get(s, 0) for s in SPLITS},
        },
        "sources": list(records),
    }


def write_manifest(output: str, manifest: Mapping[str, Any]) -> str:
    uri = storage.join(output, MANIFEST_NAME)
    storage.write_bytes(uri, json.dumps(manifest, indent=2, sort_keys=False).encode())
    return uri


def read_manifest(output: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(storage.join(output, MANIFEST_NAME)))


def manifest_hash(output: str) -> str:
    """Hash of what the shards hold (per-source records, not timestamps): tags training runs with their data."""
    manifest = read_manifest(output)
    stable = [
        {k: rec.get(k) for k in ("source_id", "status", "kept", "split_counts")} for rec in manifest.get("sources", [])
    ]
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def summary_table(manifest: Mapping[str, Any]) -> str:
    """A closing summary for the console: sources by status, tiles kept and rejected, per split."""
    totals = manifest["totals"]
    lines = [
        f"sources: {totals['sources']}  " + "  ".join(f"{k}={v}" for k, v in totals["status"].items()),
        f"tiles seen: {totals['seen']}  kept: {totals['kept']}",
    ]
    for reason, n in totals["rejected"].items():
        lines.append(f"  rejected {reason:<14} {n}")
    lines.append("per split: " + "  ".join(f"{s}={n}" for s, n in totals["per_split"].items()))
    failed = [r for r in manifest["sources"] if r["status"] == "failed"]
    for rec in failed:
        lines.append(f"  FAILED {rec['source_id']}: {rec.get('error', '?')}")
    return "\n".join(lines)
