"""The cohort's contract on disk: one output per slide, a status record per slide, and `_manifest.json`.

Layout under `out_dir` (local or `s3://`):

    <slide id>_x<scale>.tiff        one pyramidal TIFF per slide that is `done`
    _status/<slide id>.json         written by the slide's task once its output is published (or it failed)
    _manifest.json                  rebuilt by the driver at the end from every slide's record

Names starting with `_` are the ones Parquet/Arrow readers and most tools skip, as in the tiling job.
A slide counts as done on a rerun only when its record says `done` for the same settings fingerprint
(pinned model URI, scale and every setting that changes pixels) and its output still exists; anything else is
redone. Kept here rather than shared with `srtn.data.manifest`: the tiling manifest lists shard files and
their rows, this one lists slides and their TIFFs, and the two evolve separately.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from srtn import storage

__all__ = [
    "MANIFEST_NAME",
    "STATUS_DIR",
    "build_manifest",
    "is_done",
    "output_uri",
    "read_manifest",
    "read_status",
    "status_uri",
    "summary_table",
    "write_manifest",
    "write_status",
]

MANIFEST_NAME = "_manifest.json"
STATUS_DIR = "_status"


def output_uri(out_dir: str, slide_id: str, scale: int) -> str:
    return storage.join(out_dir, f"{slide_id}_x{scale}.tiff")


def status_uri(out_dir: str, slide_id: str) -> str:
    return storage.join(out_dir, STATUS_DIR, f"{slide_id}.json")


def write_status(out_dir: str, record: Mapping[str, Any]) -> None:
    storage.write_bytes(status_uri(out_dir, record["slide"]), json.dumps(dict(record), sort_keys=True).encode())


def read_status(out_dir: str, slide_id: str) -> dict[str, Any] | None:
    uri = status_uri(out_dir, slide_id)
    try:
        return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None
    except (json.JSONDecodeError, OSError):
        return None  # a torn record counts as not done: the slide is redone


def is_done(record: Mapping[str, Any] | None, fingerprint: str) -> bool:
    """Done with these settings, and the output it names is still there."""
    if not record or record.get("status") != "done" or record.get("fingerprint") != fingerprint:
        return False
    out = record.get("output")
    return bool(out) and storage.exists(out)


def _mpx(size: Any) -> float:
    return size[0] * size[1] / 1e6 if size else 0.0


def build_manifest(
    config: Mapping[str, Any], records: Iterable[Mapping[str, Any]], *, model: Mapping[str, Any], fingerprint: str,
    seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """Every slide's record, the outputs they list and totals (slides by status, Mpx in/out, tiles, speed)."""
    records = sorted((dict(r) for r in records), key=lambda r: r["slide"])
    statuses = Counter(r["status"] for r in records)
    done = [r for r in records if r["status"] == "done"]
    fresh = [r for r in done if not r.get("resumed")]
    mpx_in = sum(_mpx(r.get("input_size")) for r in done)
    mpx_out = sum(_mpx(r.get("output_size")) for r in done)
    fresh_in = sum(_mpx(r.get("input_size")) for r in fresh)
    fresh_out = sum(_mpx(r.get("output_size")) for r in fresh)
    return {
        "job": "predict",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": dict(model),
        "fingerprint": fingerprint,
        "config": dict(config),
        "totals": {
            "slides": len(records),
            "status": dict(sorted(statuses.items())),
            "resumed": sum(1 for r in done if r.get("resumed")),
            "mpx_in": round(mpx_in, 3),
            "mpx_out": round(mpx_out, 3),
            "tiles": sum(r.get("tiles", 0) for r in fresh),
            "tiles_model": sum(r.get("tiles_model", 0) for r in fresh),
            "tiles_bicubic": sum(r.get("tiles_bicubic", 0) for r in fresh),
            "seconds": round(seconds, 3),
            "mpx_in_per_s": round(fresh_in / seconds, 4) if seconds > 0 else None,
            "mpx_out_per_s": round(fresh_out / seconds, 3) if seconds > 0 else None,
        },
        "files": [{"file": r["output"], "slide": r["slide"], "bytes": r.get("bytes")} for r in done],
        "slides": records,
    }


def write_manifest(out_dir: str, manifest: Mapping[str, Any]) -> str:
    uri = storage.join(out_dir, MANIFEST_NAME)
    storage.write_bytes(uri, json.dumps(dict(manifest), indent=2).encode())
    return uri


def read_manifest(out_dir: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(storage.join(out_dir, MANIFEST_NAME)))


def summary_table(manifest: Mapping[str, Any]) -> str:
    """The closing table: slides done/failed, Mpx in/out, tiles, Mpx/s, and every failure with its reason."""
    t = manifest["totals"]
    st = t["status"]
    rows = [
        ("slides", f"{t['slides']}: {st.get('done', 0)} done ({t['resumed']} from earlier runs), "
                   f"{st.get('failed', 0)} failed"),
        ("Mpx", f"{t['mpx_in']:.2f} in -> {t['mpx_out']:.2f} out (done slides)"),
        ("tiles", f"{t['tiles']} this run ({t['tiles_model']} model, {t['tiles_bicubic']} bicubic background)"),
        ("time", f"{t['seconds']:.1f} s"),
    ]  # fmt: skip
    if t.get("mpx_in_per_s") is not None and t["tiles"]:
        rows.append(("speed", f"{t['mpx_in_per_s']:.3f} input Mpx/s, {t['mpx_out_per_s']:.2f} output Mpx/s"))
    lines = [f"{k:<7} {v}" for k, v in rows]
    for rec in manifest["slides"]:
        if rec["status"] == "failed":
            lines.append(f"  FAILED {rec['slide']}: {rec.get('error', '?')}")
    return "\n".join(lines)
