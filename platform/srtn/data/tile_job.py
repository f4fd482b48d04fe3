"""`srtn tile`: the Ray Data pipeline over slides, resume, manifest and summary.

One Ray task per slide (never per tile): each task tiles its slide and publishes that slide's shard files
(all splits or none) and then its status record, so memory does not grow with the number of slides and the
driver only ever holds small status records. A slide larger than one region (`srtn.data.regions`) is cut by
Ray tasks that its slide task launches and by the slide task itself, and merged by the slide task as they
come in (`srtn.data.region_tasks`).

The folder is what `OUT/_manifest.json` says (`srtn.data.manifest`): before Ray starts, the input is listed
(ids that cannot collide, `data.inputs`) and the output checked (writable, not a file); a slide is resumed
only if its record has this config's fingerprint and its files are on disk with their recorded sizes, else
it is re-tiled; at the end every shard file and status record the run did not produce or keep is deleted
and the manifest written. Exit codes: 2 bad arguments (before any work), 1 when slides failed beyond
`strict`/all-failed or an output could not be written, 0 otherwise.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

from srtn import storage
from srtn.config.tile import TileConfig
from srtn.data.inputs import list_inputs
from srtn.data.manifest import (
    build_manifest,
    check_output,
    commit_manifest,
    fingerprint,
    is_done,
    read_status,
    remove_manifest,
    summary_table,
    write_status,
)
from srtn.data.mpp import load_slide_mpp
from srtn.data.qc import write_slide_qc
from srtn.data.qc_index import write_qc_index
from srtn.data.region_progress import region_progress, teller
from srtn.data.region_tasks import region_slots, run_region_tasks
from srtn.data.regions import RegionMerger, needs_regions, next_regions, region_items
from srtn.data.shard_writer import SourceShardWriter
from srtn.data.shards import existing_shards, remove_source_files
from srtn.data.splits import site_groups
from srtn.data.tile_slide import SlidePlan, SlideResult, cut_slide, group_mode, opened, plan_slide
from srtn.errors import SlideError

__all__ = ["NOT_ROW_KEYS", "tile_fingerprint", "process_slide", "run_tiling", "tile_dataset", "exit_code"]

logger = logging.getLogger(__name__)


NOT_ROW_KEYS: tuple[str, ...] = ("input", "output", "extensions", "execution", "qc", "overwrite", "strict")
"""Config keys that never change a slide's rows; every other key is in the fingerprint (a new key is too,
so forgetting one here costs a re-tile, never a stale shard)."""


def tile_fingerprint(cfg: TileConfig, group: str) -> str:
    """Fingerprint of what changes rows: tiles, filters, tissue, lr, split (with `auto` resolved, since one
    slide is split spatially and more by patient), max_tiles_per_slide, seed."""
    rows = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NOT_ROW_KEYS}
    return fingerprint(rows | {"split_mode": group})


def _failed(output: str, source_id: str, error: str, *, output_error: bool = False) -> dict[str, Any]:
    """A failed slide's record; whatever it had published before is withdrawn (a failure publishes nothing)."""
    record: dict[str, Any] = {"source_id": source_id, "status": "failed", "error": error, "kept": 0, "seen": 0}
    record |= {"files": [], "split_counts": {}}
    if output_error:
        record["output_error"] = True
    try:
        remove_source_files(output, source_id)
    except OSError as exc:
        record |= {"output_error": True, "error": f"{error}; and its old shards cannot be removed: {exc}"}
    return record


def _add_qc(record: dict[str, Any], cfg: TileConfig, local: str, result: SlideResult | None) -> dict[str, Any]:
    """The slide's QC picture under `OUT/_qc/` (failed slides too); a QC failure never fails the slide."""
    if not cfg.qc.enabled:
        return record
    try:
        marks, mask = (result.marks, result.mask) if result is not None else (None, None)
        tissue = cfg.tissue.model_dump(exclude={"min_fraction"})
        record["qc"] = write_slide_qc(
            cfg.output, local, record, marks, mask=mask, max_size=cfg.qc.max_size, tissue=tissue
        )
    except Exception as exc:  # the store refused, an odd slide: the index draws a card instead
        record["qc_error"] = f"{type(exc).__name__}: {exc}"
    return record


class _WriteError(Exception):
    """A shard write failed while the slide was being cut (the store, not the slide, is at fault)."""


def _cut_and_publish(reader: Any, plan: Any, source_id: str, cfg: TileConfig, group: str) -> dict[str, Any]:
    """Cut a planned slide straight into its shard writer (memory: a row group), then publish its files."""
    with SourceShardWriter(cfg.output, source_id, row_group_rows=cfg.execution.row_group_rows) as writer:

        def sink(row: dict[str, Any]) -> None:
            try:
                writer.add(row)
            except Exception as exc:
                raise _WriteError(exc) from exc

        result = cut_slide(reader, plan, source_id=source_id, cfg=cfg, group=group, sink=sink)
        try:
            files = writer.publish()
        except Exception as exc:
            raise _WriteError(exc) from exc
    record = result.record | {"split_counts": {f["split"]: f["rows"] for f in files}, "files": files}
    return _add_qc(record, cfg, reader.path, result)


def _cut_by_regions(
    item: Mapping[str, Any], local: str, plan: SlidePlan, cfg: TileConfig, group: str, progress: Any, slots: int
) -> dict:
    """A slide larger than a region: its regions in waves (`regions.next_regions`) over `slots` region tasks, each
    merged into its files as it comes in (`regions.RegionMerger`), published once all are in; `progress` (the
    driver's region bar, `srtn.data.region_progress`) is told as they are merged."""
    staged = local if storage.is_remote(item["uri"]) else None  # this task's copy, for region tasks on its node
    items, results = region_items(item, plan, cfg, slots=slots, staged=staged), []
    tell = teller(progress, item["source_id"])
    tell("started", len(items))
    merger = RegionMerger(local, item["source_id"], cfg=cfg, plan=plan, on_merge=functools.partial(tell, "merged"))
    try:
        wave = next_regions(items, [], cfg.max_tiles_per_slide)
        while wave:
            results += run_region_tasks(wave, cfg=cfg, group=group, plan=plan, merger=merger, slots=slots)
            wave = next_regions(items, results, cfg.max_tiles_per_slide)
    except BaseException:
        merger.discard()
        raise
    finally:
        tell("finished")  # stored before the slide's record reaches the driver
    try:
        record, result = merger.finish()
    except SlideError:
        raise
    except Exception as exc:  # the merge could not write: the store, not the slide, is at fault
        raise _WriteError(exc) from exc
    return _add_qc(record, cfg, local, result)


def _tile_and_publish(item: Mapping[str, Any], cfg: TileConfig, group: str, progress: Any) -> dict[str, Any]:
    uri, source_id = item["uri"], item["source_id"]
    try:
        with storage.stage_local(uri) as local:
            try:
                with opened(local) as reader:
                    plan = plan_slide(reader, source_id=source_id, cfg=cfg)
                    slots = region_slots(cfg) if needs_regions(plan, cfg) else 1  # a cluster query: large slides only
                    if slots < 2:  # one region task at a time would only add the merge (`regions_possible`)
                        return _cut_and_publish(reader, plan, source_id, cfg, group)
                return _cut_by_regions(item, local, plan, cfg, group, progress, slots)
            except SlideError as exc:
                return _add_qc(_failed(cfg.output, source_id, exc.reason), cfg, local, None)
    except _WriteError as exc:  # OSError / ArrowIOError (disk full, store refuses): the run must not exit 0
        return _failed(cfg.output, source_id, f"cannot write its shards: {exc.__cause__}", output_error=True)
    except SlideError as exc:
        return _failed(cfg.output, source_id, exc.reason)
    except Exception as exc:  # a slide must never kill the job: record what happened
        return _failed(cfg.output, source_id, f"{type(exc).__name__}: {exc}")


def process_slide(item: Mapping[str, Any], *, cfg: TileConfig, group: str, progress: Any = None) -> dict[str, Any]:
    """Tile one slide (by region tasks when it is larger than a region), publish its shards, then its status
    record; never raises for a bad slide or a bad write (both become a `failed` record). `progress`: the
    driver's region bar (`srtn.data.region_progress`), told how the slide's regions go."""
    uri, source_id = item["uri"], item["source_id"]
    start = time.perf_counter()
    record = _tile_and_publish(item, cfg, group, progress)
    record |= {"uri": uri, "path": uri, "fingerprint": tile_fingerprint(cfg, group)}
    record["seconds"] = round(time.perf_counter() - start, 3)
    try:
        write_status(cfg.output, record)
    except Exception as exc:  # without its record the slide cannot be resumed: count it as not written
        record = _failed(cfg.output, source_id, f"cannot write its status record: {exc}", output_error=True)
        record |= {"uri": uri, "path": uri, "fingerprint": tile_fingerprint(cfg, group)}
    return record


def tile_dataset(cfg: TileConfig, todo: list[dict[str, str]], group: str) -> list[dict[str, Any]]:
    """Run `process_slide` over `todo` with Ray Data, one task per slide (a large slide's task fans out its
    region tasks, `srtn.data.regions`, under a bar of their own, `srtn.data.region_progress`); returns the
    records."""
    from srtn.data.per_item import map_items, start_ray_for

    start_ray_for(process_slide)  # the region bar needs Ray connected
    with region_progress(cfg) as progress:
        return map_items(
            process_slide,
            todo,
            fn_kwargs={"cfg": cfg, "group": group, "progress": progress},
            num_cpus=cfg.execution.num_cpus_per_task,
            concurrency=cfg.execution.concurrency,
            desc="tiling",
            unit="slide",
        )


def exit_code(records: list[Mapping[str, Any]], *, strict: bool, what: str = "slides") -> int:
    """1 when an output could not be written, every source failed, or any failed with `strict`; else 0."""
    failed = [r for r in records if r["status"] == "failed"]
    if any(r.get("output_error") for r in failed):
        logger.error("outputs of %d %s could not be written; see the manifest", len(failed), what)
        return 1
    if failed:
        logger.warning("%d of %d %s failed; see the manifest", len(failed), len(records), what)
    return 1 if failed and (strict or len(failed) == len(records)) else 0


def run_tiling(cfg: TileConfig) -> int:
    """The `srtn tile` job (exit codes in the module docstring). Bad input or output: `ConfigError` before
    Ray starts."""
    found = list_inputs(cfg.input, extensions=cfg.extensions, output=cfg.output)  # first: it writes nothing
    check_output(cfg.output)
    if isinstance(cfg.slide_mpp, str):  # a CSV: read (and checked) once here; tasks get the mapping
        cfg = cfg.model_copy(update={"slide_mpp": load_slide_mpp(cfg.slide_mpp)})
    group = group_mode(cfg, len(found.slides))
    if group == "site":
        site_groups([storage.basename(s.uri) for s in found.slides])  # names without a TCGA site: exit 2
    fp = tile_fingerprint(cfg, group)
    existing = existing_shards(cfg.output)
    remove_manifest(cfg.output)  # from here until the end the folder is "being written"
    todo, records = [], []
    for slide in found.slides:
        previous = None if cfg.overwrite else read_status(cfg.output, slide.source_id)
        if is_done(previous, fingerprint=fp, existing=existing):
            records.append(previous | {"resumed": True, "uri": slide.uri, "path": slide.uri})
        else:
            todo.append({"uri": slide.uri, "source_id": slide.source_id})
    print(f"srtn tile: {len(found.slides)} slides, {len(records)} already done, {len(todo)} to tile -> {cfg.output}")
    if todo:
        records.extend(tile_dataset(cfg, todo, group))
    config = cfg.model_dump(mode="json") | {"split_mode": group}
    manifest = build_manifest(config, records, job="tile", fingerprint=fp, skipped=found.skipped)
    try:
        uri = commit_manifest(cfg.output, manifest)
    except OSError as exc:
        print(summary_table(manifest))
        logger.error("the shard folder %s could not be completed, no manifest written: %s", cfg.output, exc)
        return 1
    print(summary_table(manifest))
    print(f"manifest: {uri}")
    _write_qc_index(cfg, manifest)
    return exit_code(manifest["sources"], strict=cfg.strict)


def _write_qc_index(cfg: TileConfig, manifest: Mapping[str, Any]) -> None:
    """`OUT/_qc/index.html` over every slide (opens from disk); the job's last line says where."""
    if not cfg.qc.enabled:
        return
    try:
        print(f"QC report: {write_qc_index(cfg.output, manifest['sources'], title=f'srtn tile: {cfg.output}')}")
    except OSError as exc:
        logger.warning("QC report not written: %s", exc)
