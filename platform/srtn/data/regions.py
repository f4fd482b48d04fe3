"""One slide on many CPUs: whole-slide extraction split into region tasks over the slide's candidate list.

With `max_tiles_per_slide: null` every passing tile is kept, so the tile set does not depend on the visiting
order and the row-major candidate list can be cut into contiguous regions of about `execution.region_tiles`
candidates. Each region task cuts its candidates and streams its rows into hidden part files (one per split,
in the output store, so a task on any node can write them); the slide's merge task then streams the parts,
in region order, into the slide's published files and writes its record. The tile set is the same as one
task's, and so are the resume and manifest contract: the slide is done when merged, failed if any region
failed (its parts are deleted, nothing is published).

Ray-free: the tiling job (`srtn.data.tile_job`) maps these functions with Ray Data; tests call them directly.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from srtn import storage
from srtn.config.tile import TileConfig
from srtn.data.qc import TileMarks
from srtn.data.shard_writer import SourceShardWriter, merge_parts
from srtn.data.tile_slide import SlidePlan, SlideResult, open_and_plan, slide_record, tile_slide
from srtn.errors import SlideError

__all__ = ["region_bounds", "needs_regions", "process_region", "merge_regions", "region_items"]


def region_bounds(n_candidates: int, region_tiles: int) -> list[tuple[int, int]]:
    """(start, stop) of about equal contiguous chunks of at most `region_tiles` candidates each."""
    k = max(1, math.ceil(n_candidates / region_tiles))
    edges = [round(i * n_candidates / k) for i in range(k + 1)]
    return list(itertools.pairwise(edges))


def needs_regions(plan: SlidePlan, cfg: TileConfig) -> bool:
    """A slide cut whole whose candidates exceed one region."""
    return cfg.max_tiles_per_slide is None and len(plan.candidates) > cfg.execution.region_tiles


def region_items(item: Mapping[str, Any], plan: SlidePlan, cfg: TileConfig) -> list[dict[str, Any]]:
    """The work items of a slide's regions (small: uri, id and the candidate range)."""
    bounds = region_bounds(len(plan.candidates), cfg.execution.region_tiles)
    return [
        {"uri": item["uri"], "source_id": item["source_id"], "region": i, "regions": len(bounds), "start": a, "stop": b}
        for i, (a, b) in enumerate(bounds)
    ]


def process_region(item: Mapping[str, Any], *, cfg: TileConfig, group: str) -> dict[str, Any]:
    """Cut one region of a slide into hidden part files; never raises (an error is the result's `error`).
    Counts and QC marks travel back as JSON text (Ray Data rows stay flat)."""
    start = time.perf_counter()
    out: dict[str, Any] = {"source_id": item["source_id"], "region": int(item["region"]), "error": ""}
    try:
        with storage.stage_local(item["uri"]) as local:
            part = f"r{int(item['region']):05d}"
            with SourceShardWriter(
                cfg.output, item["source_id"], row_group_rows=cfg.execution.row_group_rows, part=part
            ) as w:
                region = (int(item["start"]), int(item["stop"]))
                result = tile_slide(local, source_id=item["source_id"], cfg=cfg, group=group, sink=w.add, region=region)
                parts = w.finish_parts()
        counts = {k: result.record[k] for k in ("seen", "decoded", "kept")} | {"rejected": result.record["rejected"]}
        marks = result.marks or TileMarks(size0=0)
        out |= {"parts": json.dumps(parts), "counts": json.dumps(counts)}
        out["marks"] = json.dumps({"kept": list(marks.kept), "rejected": list(marks.rejected)})
    except SlideError as exc:
        out["error"] = exc.reason
    except Exception as exc:  # one region must not kill the job: the slide fails with this reason
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc(limit=5)
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


def _discard_parts(results: Sequence[Mapping[str, Any]]) -> None:
    for r in results:
        for part in json.loads(r.get("parts") or "[]"):
            storage.delete(part["uri"])


def merge_regions(
    local: str, source_id: str, results: Sequence[Mapping[str, Any]], *, cfg: TileConfig
) -> tuple[dict[str, Any], SlideResult]:
    """Merge a slide's region results into its published files; returns (record, result for the QC picture).
    Raises `SlideError` (after deleting every part) when a region failed."""
    results = sorted(results, key=lambda r: int(r["region"]))
    errors = [f"region {r['region']}: {r['error']}" for r in results if r.get("error")]
    if errors:
        _discard_parts(results)
        raise SlideError(f"{len(errors)} of {len(results)} regions failed, first: {errors[0]}", path=local)
    plan = open_and_plan(local, source_id=source_id, cfg=cfg)
    counts: Counter[str] = Counter()
    marks = TileMarks(size0=round(plan.geometry.size0), kept=[], rejected=[])
    kept = 0
    for r in results:
        c = json.loads(r["counts"])
        counts.update({"decoded": c["decoded"]} | c["rejected"])
        kept += c["kept"]
        m = json.loads(r["marks"])
        marks.kept.extend((int(x), int(y), str(s)) for x, y, s in m["kept"])  # type: ignore[attr-defined]
        marks.rejected.extend((int(x), int(y), str(s)) for x, y, s in m["rejected"])  # type: ignore[attr-defined]
    parts = [p for r in results for p in json.loads(r["parts"])]
    files = merge_parts(cfg.output, source_id, parts, row_group_rows=cfg.execution.row_group_rows)
    record = slide_record(plan, cfg, source_id, counts, kept)
    record |= {"regions": len(results), "split_counts": {f["split"]: f["rows"] for f in files}, "files": files}
    return record, SlideResult(record=record, marks=marks, mask=plan.mask)
