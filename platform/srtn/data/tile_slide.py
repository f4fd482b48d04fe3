"""Slides -> HR/LR tile pairs: the per-slide work, pure Python (no Ray) so tests call it directly.

Read only what is kept: a tissue mask from a small level rules out background without touching
level 0; with a cap the remaining candidates are visited in a seeded random order and reading stops at
the cap. That keeps a uniform random sample of the passing tiles (the original's random pick) while
decoding little more than what is kept. Without a cap (`max_tiles_per_slide: null`) every candidate is
visited in row-major order (reads stay local in OpenSlide's tile cache) and kept rows go straight to a
`SourceShardWriter`, so memory is bounded by a row group, not by the slide; a `region` (start, stop) of the
candidate list lets several tasks share one slide (`srtn.data.regions`).

Physical size (`tiles.mpp`): `srtn.data.mpp.tile_geometry` picks the level and footprint per slide; the HR
tile is that footprint resampled with an anti-aliased filter (cv2 INTER_AREA).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import openslide

from srtn import storage
from srtn.config.tile import TileConfig
from srtn.data.barcodes import patient_from_name
from srtn.data.inputs import slide_id
from srtn.data.mpp import TileGeometry, load_slide_mpp, lookup_mpp, tile_geometry
from srtn.data.qc import TileMarks
from srtn.data.quality import downsample, rejection_reason
from srtn.data.schema import empty_row, encode_png, lr_column, tile_id
from srtn.data.slides import SlideInfo, mask_fraction, open_slide, read_rgb, slide_info, tissue_mask
from srtn.data.splits import assign_split, site_group, spatial_block_id
from srtn.errors import SlideError

__all__ = [
    "SlidePlan",
    "SlideResult",
    "candidate_order",
    "cut_slide",
    "group_mode",
    "lr_levels",
    "opened",
    "plan_slide",
    "slide_record",
    "source_id_for",
    "tile_slide",
    "visit_order",
]


@dataclass
class SlideResult:
    """Rows kept from one slide, its manifest record, and for the QC picture where each candidate went (level-0
    boxes, kept out of the record: hundreds per slide) and the tissue mask."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    marks: TileMarks | None = None
    visits: list[tuple[int, int, str, bool]] = field(default_factory=list)  # (x, y, split or reason, kept), in order
    mask: np.ndarray | None = None


def source_id_for(uri: str) -> str:
    """Slide id of a file named on its own: its name without the extension (TCGA barcodes keep their dots),
    made safe and unique as every id is (`srtn.data.inputs.slide_id`)."""
    return slide_id(storage.basename(uri))


def group_mode(cfg: TileConfig, n_slides: int) -> str:
    """Resolve `split.by: auto`: spatial blocks for a single-slide dataset, else patient/slide."""
    if cfg.split.by != "auto":
        return cfg.split.by
    return "spatial" if n_slides == 1 else "patient"


def _seed_for(source_id: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{source_id}".encode()).digest()[:8], "big")


def candidate_order(candidates: list[tuple[int, int]], *, source_id: str, seed: int) -> list[tuple[int, int]]:
    """Candidates in a random order fixed by (seed, slide): the same every run, independent per slide."""
    rng = np.random.default_rng(_seed_for(source_id, seed))
    return [candidates[i] for i in rng.permutation(len(candidates))]


class _Reader:
    """Holds an open slide and reopens it after a failed read (OpenSlide errors are sticky)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._cm = open_slide(path)
        self.slide: openslide.OpenSlide = self._cm.__enter__()

    def reopen(self) -> None:
        self.close()
        self._cm = open_slide(self.path)
        self.slide = self._cm.__enter__()

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def _group_for(mode: str, source_id: str, name: str, x0: int, y0: int, block_size: int) -> str:
    """The split unit of a tile: a spatial block, the patient of a TCGA file name (whatever folder the
    slide's id came from), or the slide."""
    if mode == "spatial":
        return spatial_block_id(source_id, x0, y0, block_size)
    if mode == "patient":
        return patient_from_name(name) or source_id
    if mode == "site":
        return site_group(name) or source_id  # the driver refused names without a site before Ray started
    return source_id


def _check_readable(path: str) -> None:
    """A file this process may not read says so, instead of OpenSlide's "unsupported format"."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError as exc:
        raise SlideError("permission denied", path=path) from exc
    except OSError:
        pass  # missing, a folder, ...: open_slide names those


def _no_tiles_reason(grid: int, candidates: int, decoded: int, size: int, level: int) -> str:
    if not grid:
        return f"no tiles: level {level} is smaller than one {size}x{size} tile"
    if not candidates:
        return f"no tiles: no tissue found in {grid} grid tiles (tissue.*)"
    if not decoded:
        return "no tiles: every candidate tile failed to read"
    return f"no tiles: all {decoded} decoded tiles were rejected by the filters"


@contextlib.contextmanager
def opened(local_path: str) -> Iterator[_Reader]:
    """An open slide for `plan_slide` and `cut_slide` (reopened after a failed read); closed on exit."""
    _check_readable(local_path)
    reader = _Reader(local_path)
    try:
        yield reader
    finally:
        reader.close()


def tile_slide(
    local_path: str,
    *,
    source_id: str,
    cfg: TileConfig,
    group: str = "patient",
    sink: Callable[[dict[str, Any]], None] | None = None,
) -> SlideResult:
    """Cut, filter and pair tiles of one slide. Raises `SlideError` if the slide is unusable.

    Kept rows are collected in the result, or passed one by one to `sink` (then the result's rows stay empty).
    `SlideResult.visits` lists every visited candidate in order. (Region tasks call `cut_slide` with the slide
    task's plan.)"""
    with opened(local_path) as reader:
        plan = plan_slide(reader, source_id=source_id, cfg=cfg)
        return cut_slide(reader, plan, source_id=source_id, cfg=cfg, group=group, sink=sink)


def lr_levels(info: SlideInfo, cfg: TileConfig, path: str, base: float | None = None) -> dict[int, int]:
    """`lr.method: pyramid`: the level read for each LR scale, the one whose downsample is the scale times that
    of an HR pixel (`base`: of `tiles.level`, or of `tiles.mpp`), within 2%: Aperio stores e.g. 4.0002. A scale
    without such a level falls back to `lr.pyramid_fallback`, or fails the slide naming its downsamples."""
    if cfg.lr.method != "pyramid":
        return {}
    base = info.level_downsamples[cfg.tiles.level] if base is None else base
    levels: dict[int, int] = {}
    for scale in cfg.lr.scales:
        want = base * scale
        found = [i for i, ds in enumerate(info.level_downsamples) if abs(ds - want) <= 0.02 * want]
        if found:
            levels[scale] = found[0]
    missing = [s for s in cfg.lr.scales if s not in levels]
    if missing and cfg.lr.pyramid_fallback is None:
        have = ", ".join(f"{ds:g}" for ds in info.level_downsamples)
        raise SlideError(
            f"lr.method pyramid: no level at x{missing} of the HR tiles' downsample {base:g} (downsamples {have}); "
            "set lr.pyramid_fallback or another lr.method",
            path=path,
        )
    return levels


@dataclass
class SlidePlan:
    """What is known of a slide before any level-0 read: its metadata, tile geometry, LR levels, tissue mask
    and the level-0 corners of its tissue candidates (row-major)."""

    info: SlideInfo
    geometry: TileGeometry
    lr_levels: dict[int, int]
    origin: str
    mask: np.ndarray
    mask_downsample: float
    grid_tiles: int
    candidates: list[tuple[int, int]]
    mpp: float | None  # microns per level-0 pixel: the file's, else slide_mpp's
    mpp_source: str | None  # "file", "slide_mpp", or None when unknown


def _slide_mpp(info: SlideInfo, cfg: TileConfig, source_id: str, path: str) -> tuple[float | None, str | None]:
    """Level-0 MPP of the slide: the file's, else `slide_mpp`'s entry (only consulted when the file has none)."""
    if info.mpp is not None:
        return info.mpp, "file"
    if cfg.slide_mpp is None:
        return None, None
    value = lookup_mpp(load_slide_mpp(cfg.slide_mpp), source_id=source_id, name=storage.basename(path))
    return (value, "slide_mpp") if value is not None else (None, None)


def plan_slide(reader: _Reader, *, source_id: str, cfg: TileConfig) -> SlidePlan:
    info: SlideInfo = slide_info(reader.slide, reader.path)
    level = cfg.tiles.level
    if level >= len(info.level_dimensions):
        n = len(info.level_dimensions)
        raise SlideError(f"tiles.level {level} does not exist (the slide has {n} levels)", path=reader.path)
    mpp0, mpp_source = _slide_mpp(info, cfg, source_id, reader.path)
    try:
        geometry = tile_geometry(
            size=cfg.tiles.size,
            step=cfg.tiles.step,
            level=level,
            target_mpp=cfg.tiles.mpp,
            slide_mpp=mpp0,
            downsamples=info.level_downsamples,
        )
    except ValueError as exc:
        raise SlideError(str(exc), path=reader.path) from exc
    levels = lr_levels(info, cfg, reader.path, base=geometry.downsample)
    origin = "pyramid" if levels and len(levels) == len(cfg.lr.scales) else "downsampled"
    mask, mask_ds = _tissue(reader, cfg)
    grid = geometry.grid(info.level_dimensions)
    size0 = geometry.size0
    candidates = [(x0, y0) for x0, y0 in grid if mask_fraction(mask, mask_ds, x0, y0, size0) >= cfg.tissue.min_fraction]
    return SlidePlan(info, geometry, levels, origin, mask, mask_ds, len(grid), candidates, mpp0, mpp_source)


def _read_pair(reader: _Reader, cfg: TileConfig, plan: SlidePlan, x0: int, y0: int) -> tuple[np.ndarray, dict]:
    """The HR tile at level-0 (x0, y0) and its LR partners: the slide's own level for the scales in
    `plan.lr_levels` (the scanner's downsampling), else ours (`lr.method`, or `lr.pyramid_fallback`)."""
    geo, size, levels = plan.geometry, cfg.tiles.size, plan.lr_levels
    hr = read_rgb(reader.slide, x0, y0, geo.level, geo.read_size, geo.read_size)
    if geo.read_size != size:  # a physical tile size: the footprint, anti-aliased to the HR size
        hr = cv2.resize(hr, (size, size), interpolation=cv2.INTER_AREA)
    method = (cfg.lr.pyramid_fallback or "lanczos") if cfg.lr.method == "pyramid" else cfg.lr.method
    lr = {
        s: read_rgb(reader.slide, x0, y0, levels[s], size // s, size // s) if s in levels else None
        for s in cfg.lr.scales
    }
    return hr, {s: img if img is not None else downsample(hr, s, method) for s, img in lr.items()}


def _tile_row(cfg: TileConfig, plan: SlidePlan, hr: np.ndarray, lr: dict[int, np.ndarray], **ids: Any) -> dict:
    """One tile row: ids, level-0 position, pixels as PNG."""
    geo, size = plan.geometry, cfg.tiles.size
    extra = f"s{size}" if geo.mpp_target is None else f"s{size}m{geo.mpp_target:g}"
    row = empty_row()
    row.update(
        tile_id=tile_id(ids["source_id"], geo.level, ids["x"], ids["y"], extra=extra),
        level=geo.level,
        mpp=geo.mpp,
        hr=encode_png(hr),
        hr_height=size,
        hr_width=size,
        augmented=False,
        **ids,
    )
    row |= {lr_column(scale): encode_png(img) for scale, img in lr.items()}
    return row


def _tissue(reader: _Reader, cfg: TileConfig) -> tuple[np.ndarray, float]:
    try:
        return tissue_mask(
            reader.slide,
            target_size=cfg.tissue.target_size,
            min_saturation=cfg.tissue.min_saturation,
            max_gray=cfg.tissue.max_gray,
        )
    except openslide.OpenSlideError as exc:
        raise SlideError(f"cannot read the low-resolution level for the tissue mask: {exc}", path=reader.path) from exc


def visit_order(plan: SlidePlan, cfg: TileConfig, source_id: str) -> list[tuple[int, int]]:
    """The order candidates are visited in: row-major when every passing tile is kept (reads stay local),
    else seeded random (the kept tiles are then a uniform sample)."""
    if cfg.max_tiles_per_slide is None:
        return plan.candidates
    return candidate_order(plan.candidates, source_id=source_id, seed=cfg.seed)


def _visit_order(plan: SlidePlan, cfg: TileConfig, source_id: str, region: tuple[int, int] | None) -> list:
    order = visit_order(plan, cfg, source_id)
    return order if region is None else order[region[0] : region[1]]


def cut_slide(
    reader: _Reader,
    plan: SlidePlan,
    *,
    source_id: str,
    cfg: TileConfig,
    group: str,
    sink: Callable[[dict[str, Any]], None] | None = None,
    region: tuple[int, int] | None = None,
) -> SlideResult:
    """Cut a planned slide: every candidate (or `region` of them) in order, up to the cap (see `tile_slide`)."""
    counts: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    visits: list[tuple[int, int, str, bool]] = []
    thresholds = cfg.filters.thresholds()
    name = storage.basename(reader.path)
    cap = cfg.max_tiles_per_slide
    kept = 0
    for x0, y0 in _visit_order(plan, cfg, source_id, region):
        if cap is not None and kept >= cap:
            break
        try:
            hr, lr = _read_pair(reader, cfg, plan, x0, y0)
        except openslide.OpenSlideError as exc:
            counts["read_error"] += 1
            visits.append((x0, y0, "read_error", False))
            if counts["read_error"] >= cfg.execution.max_read_errors:
                raise SlideError(f"{counts['read_error']} tile reads failed, last: {exc}", path=reader.path) from exc
            reader.reopen()
            continue
        counts["decoded"] += 1
        reason = rejection_reason(hr, thresholds)
        if reason:
            counts[reason] += 1
            visits.append((x0, y0, reason, False))
            continue
        grp = _group_for(group, source_id, name, x0, y0, cfg.split.block_size)
        split = assign_split(grp, cfg.split.ratios, salt=cfg.split.salt)
        row = _tile_row(
            cfg, plan, hr, lr, source_id=source_id, group_id=grp, split=split, x=x0, y=y0, origin=plan.origin
        )
        if sink is None:
            rows.append(row)
        else:
            sink(row)
        kept += 1
        visits.append((x0, y0, split, True))
    record = slide_record(plan, cfg, source_id, counts, kept)
    marks = TileMarks.from_visits(round(plan.geometry.size0), visits)
    return SlideResult(rows=rows, record=record, marks=marks, mask=plan.mask, visits=visits)


def slide_record(plan: SlidePlan, cfg: TileConfig, source_id: str, counts: Counter[str], kept: int) -> dict[str, Any]:
    info, geo = plan.info, plan.geometry
    rejected = {k: v for k, v in counts.items() if k not in ("decoded",)}
    record = {
        "source_id": source_id,
        "status": "done",
        "grid_tiles": plan.grid_tiles,
        "tissue_candidates": len(plan.candidates),
        "seen": counts["decoded"],
        "decoded": counts["decoded"],
        "kept": kept,
        "rejected": dict(sorted(rejected.items())),
        "mpp": plan.mpp,
        "vendor": info.vendor,
        "dimensions": list(info.dimensions),
    }
    if cfg.tiles.mpp is not None:
        record |= {"tile_mpp": geo.mpp, "tile_level": geo.level, "mpp_source": plan.mpp_source}
    if plan.lr_levels:
        record["lr_levels"] = {f"x{s}": lvl for s, lvl in plan.lr_levels.items()}
    if not kept:  # still done (nothing is wrong with the file), but the summary says so
        grid, cands = plan.grid_tiles, len(plan.candidates)
        record["warning"] = _no_tiles_reason(grid, cands, counts["decoded"], cfg.tiles.size, geo.level)
    return record
