"""One slide on many CPUs: a slide cut whole, or with a cap above one region, split into region tasks.

A slide's visiting order (`tile_slide.visit_order`: row-major when every passing tile is kept, the seeded
random order under a cap) is cut into contiguous regions of about `execution.region_tiles` candidates. Each
region task cuts its candidates and streams its rows into hidden part files (one per split, in the output
store, so a task on any node can write them) and returns its visits in order; the slide's merge task then
streams the parts, in region order, into the slide's published files and writes its record.

Under a cap the kept tiles must be the first `cap` passing candidates of the order, as one task keeps: regions
run in waves over a prefix of the order (`next_regions`: the first wave as many candidates as the cap, later
ones as many as the pass rate so far says are still needed), and the merge keeps exactly the first `cap` kept
visits and counts only the visits before the last of them. So the tile set and the record are the same as one
task's, and so are resume and the manifest: the slide is done when merged, failed if any region failed (its
parts are deleted, nothing is published). Read errors count per region (`execution.max_read_errors`).

Ray-free: the tiling job's slide task (`srtn.data.tile_job.run_region_tasks`) runs `process_region` as Ray
tasks and for its own share in its process, then merges; tests call these functions directly.
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
from srtn.data.tile_slide import SlidePlan, SlideResult, slide_record, tile_slide
from srtn.errors import SlideError

__all__ = ["region_bounds", "needs_regions", "next_regions", "process_region", "merge_regions", "region_items"]


def region_bounds(n_candidates: int, region_tiles: int, *, slots: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of about equal contiguous chunks of at most `region_tiles` candidates each; when there are
    more chunks than `slots` (region tasks that can run at once), a multiple of `slots` of them, so the last
    round of regions keeps every slot busy."""
    k = max(1, math.ceil(n_candidates / region_tiles))
    if k > slots > 1:
        k = math.ceil(k / slots) * slots
    edges = [round(i * n_candidates / k) for i in range(k + 1)]
    return list(itertools.pairwise(edges))


def needs_regions(plan: SlidePlan, cfg: TileConfig) -> bool:
    """A slide whose candidates exceed one region, cut whole or with a cap larger than one region."""
    cap, region = cfg.max_tiles_per_slide, cfg.execution.region_tiles
    return len(plan.candidates) > region and (cap is None or cap > region)


def next_regions(
    items: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]], cap: int | None
) -> list[Mapping[str, Any]]:
    """The slide's regions to run next: all of them without a cap; under a cap, the next ones in order until
    the candidates they hold, at the pass rate seen so far (10% margin), should give the tiles still missing.
    None once a region failed, the cap is reached or the order is exhausted."""
    done = {int(r["region"]) for r in results}
    pending = [it for it in items if int(it["region"]) not in done]
    if cap is None or any(r.get("error") for r in results):
        return [] if results else list(pending)
    kept = sum(json.loads(r["counts"])["kept"] for r in results)
    visited = sum(json.loads(r["counts"])["visited"] for r in results)
    if kept >= cap or not pending:
        return []
    rate = max(kept / visited, 0.05) if visited else 1.0
    need = math.ceil((cap - kept) / rate * (1.1 if visited else 1.0))
    wave = []
    for it in pending:
        wave.append(it)
        need -= int(it["stop"]) - int(it["start"])
        if need <= 0:
            break
    return wave


def region_items(item: Mapping[str, Any], plan: SlidePlan, cfg: TileConfig, *, slots: int = 1) -> list[dict[str, Any]]:
    """The work items of a slide's regions (small: uri, id and the candidate range). `slots` (region tasks
    that can run at once) shapes a slide cut whole; under a cap, regions run in waves and keep their size."""
    slots = slots if cfg.max_tiles_per_slide is None else 1
    bounds = region_bounds(len(plan.candidates), cfg.execution.region_tiles, slots=slots)
    return [
        {"uri": item["uri"], "source_id": item["source_id"], "region": i, "regions": len(bounds), "start": a, "stop": b}
        for i, (a, b) in enumerate(bounds)
    ]


def process_region(item: Mapping[str, Any], *, cfg: TileConfig, group: str) -> dict[str, Any]:
    """Cut one region of a slide into hidden part files; never raises (an error is the result's `error`).
    Its visits (for the record and the QC picture) travel back as JSON text (Ray Data rows stay flat)."""
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
        counts = {"kept": result.record["kept"], "visited": len(result.visits)}
        out |= {"parts": json.dumps(parts), "counts": json.dumps(counts), "visits": json.dumps(result.visits)}
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


def _first_visits(results: Sequence[Mapping[str, Any]], cap: int | None) -> tuple[list, dict[tuple[int, str], int]]:
    """The visits one task would have made (all, or up to the cap-th kept tile) in order, and how many rows of
    each (region, split) part they keep."""
    visits, take, kept = [], Counter[tuple[int, str]](), 0
    for r in results:
        for x, y, label, is_kept in json.loads(r["visits"]):
            if cap is not None and kept >= cap:
                return visits, dict(take)
            visits.append((int(x), int(y), str(label), bool(is_kept)))
            if is_kept:
                take[(int(r["region"]), str(label))] += 1
                kept += 1
    return visits, dict(take)


def merge_regions(
    local: str, source_id: str, results: Sequence[Mapping[str, Any]], *, cfg: TileConfig, plan: SlidePlan
) -> tuple[dict[str, Any], SlideResult]:
    """Merge a slide's region results into its published files; returns (record, result for the QC picture).
    Raises `SlideError` (after deleting every part) when a region failed."""
    results = sorted(results, key=lambda r: int(r["region"]))
    errors = [f"region {r['region']}: {r['error']}" for r in results if r.get("error")]
    if errors:
        _discard_parts(results)
        raise SlideError(f"{len(errors)} of {len(results)} regions failed, first: {errors[0]}", path=local)
    visits, take = _first_visits(results, cfg.max_tiles_per_slide)
    marks = TileMarks.from_visits(round(plan.geometry.size0), visits)
    counts: Counter[str] = Counter(label for _, _, label, is_kept in visits if not is_kept)
    counts["decoded"] = sum(label != "read_error" for _, _, label, _ in visits)
    parts = [
        p | {"limit": take.get((int(r["region"]), p["split"]), 0)} for r in results for p in json.loads(r["parts"])
    ]
    files = merge_parts(cfg.output, source_id, parts, row_group_rows=cfg.execution.row_group_rows)
    record = slide_record(plan, cfg, source_id, counts, len(marks.kept))
    record |= {"regions": len(results), "split_counts": {f["split"]: f["rows"] for f in files}, "files": files}
    return record, SlideResult(record=record, marks=marks, mask=plan.mask)
