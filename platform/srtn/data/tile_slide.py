"""Slides -> HR/LR tile pairs: the per-slide work, pure Python (no Ray) so tests call it directly.

Read only what is kept: a tissue mask from a small level rules out background without touching
level 0; the remaining candidates are visited in a seeded random order and reading stops at the
cap. That keeps a uniform random sample of the passing tiles (the original's random pick) while
decoding little more than what is kept.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openslide

from srtn import storage
from srtn.config.tile import TileConfig
from srtn.data.barcodes import patient_from_name
from srtn.data.inputs import slide_id
from srtn.data.qc import TileMarks
from srtn.data.quality import downsample, rejection_reason
from srtn.data.schema import empty_row, encode_png, lr_column, tile_id
from srtn.data.slides import SlideInfo, mask_fraction, open_slide, read_rgb, slide_info, tile_grid, tissue_mask
from srtn.data.splits import assign_split, site_group, spatial_block_id
from srtn.errors import SlideError

__all__ = ["SlideResult", "candidate_order", "group_mode", "lr_levels", "source_id_for", "tile_slide"]


@dataclass
class SlideResult:
    """Rows kept from one slide, its manifest record, and for the QC picture where each candidate went (level-0
    boxes, kept out of the record: hundreds per slide) and the tissue mask."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    marks: TileMarks | None = None
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


def tile_slide(local_path: str, *, source_id: str, cfg: TileConfig, group: str = "patient") -> SlideResult:
    """Cut, filter and pair tiles of one slide. Raises `SlideError` if the slide is unusable."""
    _check_readable(local_path)
    reader = _Reader(local_path)
    try:
        return _tile_open_slide(reader, source_id=source_id, cfg=cfg, group=group)
    finally:
        reader.close()


def lr_levels(info: SlideInfo, cfg: TileConfig, path: str) -> dict[int, int]:
    """`lr.method: pyramid`: the level read for each LR scale, the one whose downsample is the scale times that
    of `tiles.level` (within 2%: Aperio stores e.g. 4.0002). A scale without such a level falls back to
    `lr.pyramid_fallback`, or fails the slide naming its downsamples."""
    if cfg.lr.method != "pyramid":
        return {}
    base = info.level_downsamples[cfg.tiles.level]
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
            f"lr.method pyramid: no level at x{missing} of level {cfg.tiles.level} (downsamples {have}); "
            "set lr.pyramid_fallback or another lr.method",
            path=path,
        )
    return levels


def _read_pair(reader: _Reader, cfg: TileConfig, x0: int, y0: int, levels: dict[int, int]) -> tuple[np.ndarray, dict]:
    """The HR tile at level-0 (x0, y0) and its LR partners: the slide's own level for the scales in `levels`
    (the scanner's downsampling), else ours (`lr.method`, or `lr.pyramid_fallback` with `pyramid`)."""
    level, size = cfg.tiles.level, cfg.tiles.size
    hr = read_rgb(reader.slide, x0, y0, level, size, size)
    method = (cfg.lr.pyramid_fallback or "lanczos") if cfg.lr.method == "pyramid" else cfg.lr.method
    lr = {
        s: read_rgb(reader.slide, x0, y0, levels[s], size // s, size // s) if s in levels else None
        for s in cfg.lr.scales
    }
    return hr, {s: img if img is not None else downsample(hr, s, method) for s, img in lr.items()}


def _tile_row(cfg: TileConfig, info: SlideInfo, hr: np.ndarray, lr: dict[int, np.ndarray], **ids: Any) -> dict:
    """One tile row: ids, level-0 position, pixels as PNG."""
    level, size = cfg.tiles.level, cfg.tiles.size
    row = empty_row()
    row.update(
        tile_id=tile_id(ids["source_id"], level, ids["x"], ids["y"], extra=f"s{size}"),
        level=level,
        mpp=info.mpp_at(level),
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


def _tile_open_slide(reader: _Reader, *, source_id: str, cfg: TileConfig, group: str) -> SlideResult:
    info: SlideInfo = slide_info(reader.slide, reader.path)
    level, size, step = cfg.tiles.level, cfg.tiles.size, cfg.tiles.step
    if level >= len(info.level_dimensions):
        n = len(info.level_dimensions)
        raise SlideError(f"tiles.level {level} does not exist (the slide has {n} levels)", path=reader.path)
    levels = lr_levels(info, cfg, reader.path)
    origin = "pyramid" if levels and len(levels) == len(cfg.lr.scales) else "downsampled"
    mask, mask_ds = _tissue(reader, cfg)
    level_ds = info.level_downsamples[level]
    w, h = info.level_dimensions[level]
    grid = tile_grid(w, h, size=size, stride=step)
    size0 = size * level_ds
    candidates = [
        (x, y)
        for x, y in grid
        if mask_fraction(mask, mask_ds, int(x * level_ds), int(y * level_ds), size0) >= cfg.tissue.min_fraction
    ]
    counts: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    marks = TileMarks(size0=round(size0))
    thresholds = cfg.filters.thresholds()
    name = storage.basename(reader.path)
    for x, y in candidate_order(candidates, source_id=source_id, seed=cfg.seed):
        if len(rows) >= cfg.max_tiles_per_slide:
            break
        x0, y0 = round(x * level_ds), round(y * level_ds)
        try:
            hr, lr = _read_pair(reader, cfg, x0, y0, levels)
        except openslide.OpenSlideError as exc:
            counts["read_error"] += 1
            marks.rejected.append((x0, y0, "read_error"))
            if counts["read_error"] >= cfg.execution.max_read_errors:
                raise SlideError(f"{counts['read_error']} tile reads failed, last: {exc}", path=reader.path) from exc
            reader.reopen()
            continue
        counts["decoded"] += 1
        reason = rejection_reason(hr, thresholds)
        if reason:
            counts[reason] += 1
            marks.rejected.append((x0, y0, reason))
            continue
        grp = _group_for(group, source_id, name, x0, y0, cfg.split.block_size)
        split = assign_split(grp, cfg.split.ratios, salt=cfg.split.salt)
        rows.append(
            _tile_row(cfg, info, hr, lr, source_id=source_id, group_id=grp, split=split, x=x0, y=y0, origin=origin)
        )
        marks.kept.append((x0, y0, split))

    rejected = {k: v for k, v in counts.items() if k not in ("decoded",)}
    record = {
        "source_id": source_id,
        "status": "done",
        "grid_tiles": len(grid),
        "tissue_candidates": len(candidates),
        "seen": counts["decoded"],
        "decoded": counts["decoded"],
        "kept": len(rows),
        "rejected": dict(sorted(rejected.items())),
        "mpp": info.mpp,
        "vendor": info.vendor,
        "dimensions": list(info.dimensions),
    }
    if levels:
        record["lr_levels"] = {f"x{s}": lvl for s, lvl in levels.items()}
    if not rows:  # still done (nothing is wrong with the file), but the summary says so
        record["warning"] = _no_tiles_reason(len(grid), len(candidates), counts["decoded"], size, level)
    return SlideResult(rows=rows, record=record, marks=marks, mask=mask)
