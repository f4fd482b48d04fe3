"""`OUT/_qc/index.html`: every slide of a tiling run on one static page (thumbnail, status, counts by reason,
a link to its QC picture), which opens from the file system with no server, no script and no network.

Built on the driver from the slides' records alone (the manifest's `sources`); a record without QC pictures
(its task died before drawing, or it ran before QC existed) gets a card saying so, so every slide has an
entry and every link points at a picture.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from srtn import storage
from srtn.data.qc import QC_DIR, REASON_COLOURS, SPLIT_COLOURS, qc_files, write_slide_card
from srtn.vocab import SPLITS

__all__ = ["INDEX_NAME", "write_qc_index", "render_index"]

INDEX_NAME = "index.html"

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:6px 8px;text-align:left;vertical-align:top;font-size:14px}
th{background:#f4f4f4;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed{background:#fdecea} tr.warning{background:#fff8e1}
.status{font-weight:600} .failed .status{color:#b71c1c}
.sw{display:inline-block;width:11px;height:11px;margin:0 4px 0 10px;vertical-align:-1px;border:1px solid #888}
img{border:1px solid #ccc;max-width:256px;max-height:256px}
.note{color:#555;max-width:28em}
"""


def _swatch(colour: tuple[int, int, int]) -> str:
    return f'<span class="sw" style="background:rgb{colour}"></span>'


def _legend(reasons: Iterable[str]) -> str:
    parts = [f"{_swatch(SPLIT_COLOURS[s])}{s} (kept, box)" for s in SPLITS]
    parts += [f"{_swatch(REASON_COLOURS.get(r, (127, 127, 127)))}{html.escape(r)} (rejected, shaded)" for r in reasons]
    return "<p>" + " ".join(parts) + f" {_swatch((0, 170, 170))}tissue mask (outline)</p>"


def _row(rec: Mapping[str, Any]) -> str:
    sid = str(rec["source_id"])
    files = rec.get("qc") or qc_files(sid)
    png, thumb = quote(files["png"].split("/", 1)[1]), quote(files["thumb"].split("/", 1)[1])
    status = str(rec.get("status", "?"))
    css = "slide failed" if status == "failed" else ("slide warning" if rec.get("warning") else "slide")
    counts = rec.get("split_counts", {})
    per_split = "<br>".join(f"{s}: {counts.get(s, 0)}" for s in SPLITS)
    rejected = "<br>".join(f"{html.escape(r)}: {n}" for r, n in sorted(rec.get("rejected", {}).items())) or "-"
    note = html.escape(str(rec.get("error") or rec.get("warning") or ""))
    return (
        f'<tr class="{css}" id="{html.escape(sid)}">'
        f'<td><a href="{png}">{html.escape(sid)}</a></td>'
        f'<td><a href="{png}"><img src="{thumb}" alt="thumbnail of {html.escape(sid)}" loading="lazy"></a></td>'
        f'<td class="status">{html.escape(status)}</td>'
        f'<td class="num">{int(rec.get("kept", 0))}</td><td class="num">{int(rec.get("seen", 0))}</td>'
        f'<td>{per_split}</td><td>{rejected}</td><td class="note">{note}</td></tr>'
    )


def render_index(records: Iterable[Mapping[str, Any]], *, title: str = "srtn tile") -> str:
    """The page for `records` (each a manifest source record, with `qc` file paths where drawn)."""
    recs = sorted(records, key=lambda r: str(r["source_id"]))
    statuses = Counter(str(r.get("status", "?")) for r in recs)
    rejected: Counter[str] = Counter()
    for r in recs:
        rejected.update(r.get("rejected", {}))
    kept, seen = sum(int(r.get("kept", 0)) for r in recs), sum(int(r.get("seen", 0)) for r in recs)
    summary = (
        f"{len(recs)} slides: "
        + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        + f". Tiles kept {kept} of {seen} decoded; rejected: "
        + (", ".join(f"{html.escape(k)} {v}" for k, v in sorted(rejected.items())) or "none")
    )
    head = "<tr><th>slide</th><th>QC picture</th><th>status</th><th>kept</th><th>seen</th><th>per split</th>"
    head += "<th>rejected by reason</th><th>note</th></tr>"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}: QC of {len(recs)} slides</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>{html.escape(title)}: QC report</h1><p>{summary}.</p>"
        f"<p>Written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}. Click a thumbnail for the slide's "
        "picture: kept tiles as boxes coloured by split, rejected candidates shaded by reason.</p>"
        f"{_legend(sorted(set(REASON_COLOURS) | set(rejected)))}\n"
        f"<table><thead>{head}</thead><tbody>\n" + "\n".join(_row(r) for r in recs) + "\n</tbody></table>"
        "</body></html>\n"
    )


def write_qc_index(output: str, records: Iterable[Mapping[str, Any]], *, title: str = "srtn tile") -> str:
    """Write `OUT/_qc/index.html` for `records` and return its URI; a record without a `qc` entry first gets
    a card picture and thumbnail saying why there is none. Raises `OSError` when the store refuses a write."""
    recs = []
    for rec in records:
        if not rec.get("qc"):
            why = str(rec.get("error") or "no QC picture was drawn for this slide")
            rec = dict(rec) | {"qc": write_slide_card(output, rec, why)}
        recs.append(rec)
    uri = storage.join(output, QC_DIR, INDEX_NAME)
    storage.write_bytes(uri, render_index(recs, title=title).encode())
    return uri
