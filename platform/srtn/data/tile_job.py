"""`srtn tile`: the Ray Data pipeline over slides, resume, manifest and summary.

One Ray task per slide (never per tile): each task tiles its slide and writes that slide's shard
files and status record itself, so memory does not grow with the number of slides, the driver only
ever holds small status records, and a rerun skips slides whose record says done.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srtn import storage
from srtn.config.tile import TileConfig
from srtn.data.manifest import build_manifest, read_status, summary_table, write_manifest, write_status
from srtn.data.shards import write_source_shards
from srtn.data.tile_slide import group_mode, source_id_for, tile_slide
from srtn.errors import ConfigError, SlideError

__all__ = ["list_slides", "process_slide", "run_tiling", "tile_dataset"]

logger = logging.getLogger(__name__)


def list_slides(cfg: TileConfig) -> list[str]:
    """Slides named by `input`: a folder or s3:// prefix, a .txt file list, a single file, or a list."""
    entries: Sequence[str] = cfg.input if isinstance(cfg.input, list) else [cfg.input]
    uris: list[str] = []
    for entry in entries:
        if entry.endswith((".txt", ".lst")) and storage.exists(entry):
            base = Path(entry).parent
            for line in storage.read_bytes(entry).decode().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    uris.append(line if storage.is_remote(line) or Path(line).is_absolute() else str(base / line))
            continue
        fs, path = storage.resolve(entry)
        info = fs.get_file_info(path)
        if info.type.name == "Directory":
            uris.extend(storage.list_files(entry, extensions=cfg.extensions))
        else:
            uris.append(entry)  # an explicitly named file is always attempted (and fails loudly if bad)
    if not uris:
        raise ConfigError(f"input {cfg.input!r} names no slides (extensions {cfg.extensions})", key="input")
    return uris


def _unique_ids(uris: list[str]) -> list[tuple[str, str]]:
    """(uri, source_id) pairs; two files with one name in different folders get a path-hash suffix."""
    ids = [source_id_for(u) for u in uris]
    dup = {i for i, n in Counter(ids).items() if n > 1}
    return [(u, f"{i}-{hashlib.sha1(u.encode()).hexdigest()[:6]}" if i in dup else i) for u, i in zip(uris, ids)]


def process_slide(item: dict[str, Any], *, cfg: TileConfig, group: str) -> dict[str, Any]:
    """Tile one slide, write its shards and status record; never raises for a bad slide."""
    uri, source_id = item["uri"], item["source_id"]
    start = time.perf_counter()
    try:
        with storage.stage_local(uri) as local:
            result = tile_slide(local, source_id=source_id, cfg=cfg, group=group)
        split_counts = write_source_shards(result.rows, cfg.output, source_id)
        record = result.record | {"split_counts": split_counts}
    except SlideError as exc:
        record = {"source_id": source_id, "status": "failed", "error": exc.reason, "kept": 0, "seen": 0}
    except Exception as exc:  # a slide must never kill the job: record what happened
        record = {"source_id": source_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        record |= {"kept": 0, "seen": 0}
    record |= {"uri": uri, "seconds": round(time.perf_counter() - start, 3)}
    write_status(cfg.output, record)
    return record


def tile_dataset(cfg: TileConfig, todo: list[dict[str, str]], group: str) -> list[dict[str, Any]]:
    """Run `process_slide` over `todo` with Ray Data, one task per slide; returns the records."""
    from srtn.data.per_item import map_items

    return map_items(
        process_slide,
        todo,
        fn_kwargs={"cfg": cfg, "group": group},
        num_cpus=cfg.execution.num_cpus_per_task,
        concurrency=cfg.execution.concurrency,
        desc="tiling",
        unit="slide",
    )


def run_tiling(cfg: TileConfig) -> int:
    """The `srtn tile` job. Exit 0 unless every slide failed, or any failed with `strict`."""
    slides = _unique_ids(list_slides(cfg))
    group = group_mode(cfg, len(slides))
    todo, records = [], []
    for uri, source_id in slides:
        previous = None if cfg.overwrite else read_status(cfg.output, source_id)
        if previous and previous.get("status") == "done":
            records.append(previous | {"resumed": True})
        else:
            todo.append({"uri": uri, "source_id": source_id})
    print(f"srtn tile: {len(slides)} slides, {len(records)} already done, {len(todo)} to tile -> {cfg.output}")
    if todo:
        records.extend(tile_dataset(cfg, todo, group))
    manifest = build_manifest(cfg.model_dump(mode="json") | {"split_mode": group}, records, job="tile")
    uri = write_manifest(cfg.output, manifest)
    print(summary_table(manifest))
    print(f"manifest: {uri}")
    failed = manifest["totals"]["status"].get("failed", 0)
    if failed:
        logger.warning("%d of %d slides failed; see the manifest", failed, len(records))
    if failed and (cfg.strict or failed == len(records)):
        return 1
    return 0
