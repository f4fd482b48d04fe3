"""One slide on many CPUs: a slide cut whole, or with a cap above one region, split into region tasks (when more
than one can run at once: `regions_possible`).

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

Ray-free: the tiling job's slide task (`srtn.data.region_tasks.run_region_tasks`) runs `process_region` as Ray
tasks and in its own process, and merges as results come in; tests call these functions directly.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from srtn import storage
from srtn.config.tile import TileConfig
from srtn.data.qc import TileMarks
from srtn.data.shard_writer import SourceShardWriter, append_part
from srtn.data.tile_slide import SlidePlan, SlideResult, cut_slide, opened, slide_record
from srtn.errors import SlideError
from srtn.runtime import current_node_id

__all__ = [
    "RegionMerger",
    "needs_regions",
    "next_regions",
    "process_region",
    "region_bounds",
    "region_items",
    "regions_possible",
]


def region_bounds(n_candidates: int, region_tiles: int, *, slots: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of about equal contiguous chunks of at most `region_tiles` candidates each; when there are
    more chunks than `slots` (region tasks that can run at once), a multiple of `slots` of them, so the last
    round of regions keeps every slot busy."""
    k = max(1, math.ceil(n_candidates / region_tiles))
    if k > slots > 1:
        k = math.ceil(k / slots) * slots
    edges = [round(i * n_candidates / k) for i in range(k + 1)]
    return list(itertools.pairwise(edges))


def regions_possible(cfg: TileConfig, *, slots: int) -> bool:
    """True when this config cuts some slides by regions: slides cut whole, or with a cap larger than one region,
    and more than one region task can run at once (`slots`). With one, regions would run one after another and
    only add the merge: a part file written, read back and rewritten per region (a fifth more time for one 20k
    slide on one CPU here), so the slide is cut in one task."""
    cap = cfg.max_tiles_per_slide
    return slots > 1 and (cap is None or cap > cfg.execution.region_tiles)


def needs_regions(plan: SlidePlan, cfg: TileConfig) -> bool:
    """A slide whose candidates exceed one region, cut whole or with a cap larger than one region: cut by regions
    where more than one region task can run at once (`regions_possible`)."""
    return len(plan.candidates) > cfg.execution.region_tiles and regions_possible(cfg, slots=2)


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


def region_items(
    item: Mapping[str, Any], plan: SlidePlan, cfg: TileConfig, *, slots: int = 1, staged: str | None = None
) -> list[dict[str, Any]]:
    """The work items of a slide's regions (small: uri, id and the candidate range). `slots` (region tasks
    that can run at once) shapes a slide cut whole; under a cap, regions run in waves and keep their size.
    `staged`: the slide task's local copy of a remote slide, which region tasks on its node read instead of
    downloading the slide again."""
    slots = slots if cfg.max_tiles_per_slide is None else 1
    bounds = region_bounds(len(plan.candidates), cfg.execution.region_tiles, slots=slots)
    where = {"staged": staged, "node": current_node_id()} if staged else {}
    return [
        {"uri": item["uri"], "source_id": item["source_id"], "region": i, "regions": len(bounds), "start": a, "stop": b}
        | where
        for i, (a, b) in enumerate(bounds)
    ]


@contextlib.contextmanager
def _slide_copy(item: Mapping[str, Any]) -> Iterator[str]:
    """A local path of the region's slide: the slide task's own staged copy when this task runs on its node
    (an `s3://` slide is downloaded once per node, not once per region), else staged here."""
    staged = item.get("staged")
    if staged and item.get("node") == current_node_id() and os.path.isfile(staged):
        yield staged
        return
    with storage.stage_local(item["uri"]) as local:
        yield local


def process_region(item: Mapping[str, Any], *, cfg: TileConfig, group: str, plan: SlidePlan) -> dict[str, Any]:
    """Cut one region of a slide into hidden part files; never raises (an error is the result's `error`).
    `plan` is the slide task's (`tile_slide.plan_slide`), not made again per region: its tissue mask and
    candidate grid grow with the slide's area, as does the number of regions (a 40k slide: 0.3 CPU-s of 14
    regions' each). Its visits (for the record and the QC picture) travel back as JSON text."""
    start = time.perf_counter()
    out: dict[str, Any] = {"source_id": item["source_id"], "region": int(item["region"]), "error": ""}
    try:
        with _slide_copy(item) as local, opened(local) as reader:
            part = f"r{int(item['region']):05d}"
            with SourceShardWriter(
                cfg.output, item["source_id"], row_group_rows=cfg.execution.row_group_rows, part=part
            ) as w:
                region = (int(item["start"]), int(item["stop"]))
                sid = item["source_id"]
                result = cut_slide(reader, plan, source_id=sid, cfg=cfg, group=group, sink=w.add, region=region)
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


class RegionMerger:
    """A slide's region results merged in region order as they arrive: each region's parts are streamed into
    the slide's (still unpublished) files as soon as every region before it is in, so on a wide machine the
    merge of early regions overlaps the cutting of later ones instead of rewriting the whole slide after.

    Under a cap it keeps the visits one task would have made (all, or up to the cap-th kept tile) and only
    those rows of each part. A failed region fails the slide: later parts are deleted as they arrive and
    `finish` raises `SlideError` with nothing published; a part that cannot be written makes `finish` raise
    that error (the store's fault, not the slide's). Not thread-safe: one caller at a time."""

    def __init__(
        self,
        local: str,
        source_id: str,
        *,
        cfg: TileConfig,
        plan: SlidePlan,
        on_merge: Callable[[int, int], None] | None = None,
    ) -> None:
        self.local, self.source_id, self.cfg, self.plan = local, source_id, cfg, plan
        self.on_merge = on_merge  # (regions merged, tiles kept) after each merge, e.g. for the driver's bar
        self._writer = SourceShardWriter(cfg.output, source_id, row_group_rows=cfg.execution.row_group_rows)
        self._pending: dict[int, Mapping[str, Any]] = {}
        self._next, self._added, self._kept = 0, 0, 0
        self._visits: list[tuple[int, int, str, bool]] = []
        self._errors: list[str] = []
        self._broken: Exception | None = None  # a part could not be written into the slide's files

    def add(self, result: Mapping[str, Any]) -> None:
        """One region's result (`process_region`), in any order; merged once the regions before it are in."""
        self._pending[int(result["region"])] = result
        merged = self._next
        while self._next in self._pending:
            self._merge(self._pending.pop(self._next))
            self._next += 1
        if self.on_merge is not None and self._next > merged:
            self.on_merge(self._added, self._kept)

    def _merge(self, r: Mapping[str, Any]) -> None:
        self._added += 1
        parts = json.loads(r.get("parts") or "[]")
        if r.get("error"):
            self._errors.append(f"region {r['region']}: {r['error']}")
        take = self._take(r) if not (self._errors or self._broken) else {}
        for part in parts:  # every part is deleted, merged or not
            if self._errors or self._broken:
                storage.delete(part["uri"])
                continue
            try:
                append_part(self._writer, part, limit=take.get(part["split"], 0))
            except Exception as exc:  # the store refused: finish() raises it, later parts are only deleted
                self._broken = exc
                with contextlib.suppress(Exception):
                    storage.delete(part["uri"])

    def _take(self, r: Mapping[str, Any]) -> dict[str, int]:
        """How many rows of each of the region's parts the slide keeps (all, or up to the cap-th kept tile of
        the slide's order), recording the visits one task would have made."""
        cap, take = self.cfg.max_tiles_per_slide, Counter[str]()
        for x, y, label, is_kept in json.loads(r["visits"]):
            if cap is not None and self._kept >= cap:
                break
            self._visits.append((int(x), int(y), str(label), bool(is_kept)))
            if is_kept:
                take[str(label)] += 1
                self._kept += 1
        return dict(take)

    def finish(self) -> tuple[dict[str, Any], SlideResult]:
        """Publish the slide's files; returns (record, result for the QC picture). Raises `SlideError` when a
        region failed or one never arrived (nothing published)."""
        if self._pending and not self._errors:
            self._errors.append(f"regions {sorted(self._pending)} came without region {self._next}")
        if self._broken is not None:
            self.discard()
            raise self._broken
        if self._errors:
            self.discard()
            n = self._added + len(self._pending)
            raise SlideError(f"{len(self._errors)} of {n} regions failed, first: {self._errors[0]}", path=self.local)
        visits = self._visits
        marks = TileMarks.from_visits(round(self.plan.geometry.size0), visits)
        counts: Counter[str] = Counter(label for _, _, label, is_kept in visits if not is_kept)
        counts["decoded"] = sum(label != "read_error" for _, _, label, _ in visits)
        files = self._writer.publish()
        record = slide_record(self.plan, self.cfg, self.source_id, counts, len(marks.kept))
        record |= {"regions": self._added, "split_counts": {f["split"]: f["rows"] for f in files}, "files": files}
        return record, SlideResult(record=record, marks=marks, mask=self.plan.mask)

    def discard(self) -> None:
        """Drop what was merged (temporary files) and the parts still waiting."""
        self._writer.discard()
        for r in self._pending.values():
            for part in json.loads(r.get("parts") or "[]"):
                storage.delete(part["uri"])
        self._pending.clear()
