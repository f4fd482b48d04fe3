"""One slide's super-resolution, start to end, without Ray: open, plan, read tiles, forward, blend, write.

`super_resolve` runs where it is called: in a Ray task of `srtn.infer.pool` (a cohort, or `srtn predict`
on Ray) or in the caller's process (`executor: local`). The network is behind a `Forwarder`: a local
`TileModel`, or the shared pool of model actors. Up to `batches_in_flight` batches of a slide are with
the forwarder at once: while the model works on them, this slide's next tiles are read and its finished
rows blended and written, so the model never waits on one slide's reading or writing.

Memory is one band of the region's width (`BandAssembler`), the batches in flight and the pyramid
writer's row buffers: it grows with the region's width, never its area.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from srtn import storage
from srtn.errors import ConfigError, SlideError, SrtnError
from srtn.infer.blending import BandAssembler, RowFeeder, TilePlan
from srtn.infer.provenance import provenance_fields
from srtn.infer.tiles import SlideTiles, TileModel

__all__ = [
    "Forwarder",
    "LocalForwarder",
    "Prepared",
    "SlideSettings",
    "prepare",
    "region_in_level",
    "run_item",
    "super_resolve",
]

Region = tuple[int, int, int, int]
logger = logging.getLogger(__name__)


class Forwarder(Protocol):
    """Where a slide's LR batches go through the model: `submit` hands one over, `result` waits for it."""

    def submit(self, lr: np.ndarray, use: np.ndarray) -> Any: ...

    def result(self, handle: Any) -> np.ndarray: ...


class LocalForwarder:
    """The model in this process: `submit` computes at once."""

    def __init__(self, model: TileModel) -> None:
        self.model = model

    def submit(self, lr: np.ndarray, use: np.ndarray) -> np.ndarray:
        return self.model(lr, use)

    def result(self, handle: np.ndarray) -> np.ndarray:
        return handle


@dataclass(frozen=True)
class SlideSettings:
    """What a slide's SR needs besides the model (small, picklable: sent to every slide task).

    `model` describes the network (`uri`, `pinned`, `version`, `name`, `arch`, `scale`), `code` the srtn
    version and git commit, `fingerprint` the settings that change pixels (see `srtn.infer.records`).
    """

    scale: int
    level: int = 0
    region: Region | None = None
    tile_size: int = 128
    overlap: int = 16
    batch_size: int = 8
    batches_in_flight: int = 4
    tissue: Mapping[str, Any] = field(default_factory=lambda: {"min_fraction": 0.0})
    compression: str = "jpeg"
    quality: int = 90
    output_tile_size: int = 256
    model: Mapping[str, Any] = field(default_factory=dict)
    code: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: str = ""


@dataclass(frozen=True)
class Prepared:
    """A slide opened once: its region in level-0 pixels, the tile plan and the tissue mask (or None)."""

    region: Region
    plan: TilePlan
    mpp: float | None  # microns per pixel of the level read
    mask: np.ndarray | None
    mask_downsample: float


def region_in_level(level: int, region: Region | None, info: Any) -> tuple[Region, int, int]:
    """Check `level` and `region` against the slide: (level-0 region, its width and height at `level`)."""
    if level >= (n := len(info.level_dimensions)):
        raise ConfigError(f"level {level} does not exist: {info.path} has levels 0..{n - 1}", key="level")
    w0, h0 = info.dimensions
    x, y, w, h = region or (0, 0, w0, h0)
    if x + w > w0 or y + h > h0:
        where = f"region {x},{y},{w},{h} (level-0 X,Y,W,H) lies outside {info.path}"
        raise ConfigError(f"{where}, whose level 0 is {w0}x{h0}", key="region", path=info.path)
    ds = info.level_downsamples[level]
    lw, lh = int(w / ds), int(h / ds)
    if lw < 1 or lh < 1:
        raise ConfigError(f"region {w}x{h} is less than one pixel at level {level} (x{ds:g})", key="region")
    return (x, y, w, h), lw, lh


def prepare(path: str, settings: SlideSettings, *, label: str | None = None) -> Prepared:
    """Open the slide at `path` briefly: metadata, region, tile plan and tissue mask. Every read failure is a
    `SlideError` naming `label` (the slide as the user named it; default `path`)."""
    import openslide

    from srtn.data.slides import open_slide, slide_info, tissue_mask

    label = label or path
    with open_slide(path) as slide:
        info = slide_info(slide, label)
        region, lw, lh = region_in_level(settings.level, settings.region, info)
        mask, mask_ds = None, 1.0
        tissue = dict(settings.tissue)
        if tissue.get("min_fraction", 0) > 0:
            kw = {k: tissue[k] for k in ("target_size", "min_saturation", "max_gray") if k in tissue}
            try:
                mask, mask_ds = tissue_mask(slide, **kw)
            except (openslide.OpenSlideError, OSError, ValueError) as exc:
                reason = f"cannot read the low-resolution level for the tissue mask: {exc}"
                raise SlideError(reason, path=label) from exc
    plan = TilePlan.build(
        level=settings.level, downsample=info.level_downsamples[settings.level], origin=region[:2], width=lw,
        height=lh, tile_size=settings.tile_size, overlap=settings.overlap, scale=settings.scale,
    )  # fmt: skip
    return Prepared(region=region, plan=plan, mpp=info.mpp_at(settings.level), mask=mask, mask_downsample=mask_ds)


def _sr_batches(
    tiles: SlideTiles, forwarder: Forwarder, *, batch_size: int, window: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`(ids, use, sr)` per batch in tile order, keeping up to `window` batches with the forwarder."""
    n = tiles.plan.n_tiles
    starts = iter(range(0, n, batch_size))
    pending: deque[tuple[np.ndarray, np.ndarray, Any]] = deque()

    def fill() -> None:
        while len(pending) < max(1, window) and (start := next(starts, None)) is not None:
            ids = np.arange(start, min(start + batch_size, n))
            lr, use = tiles.read(ids)
            pending.append((ids, use, forwarder.submit(lr, use)))

    fill()
    while pending:
        ids, use, handle = pending.popleft()
        fill()  # the next batch goes out before this one is awaited: the model keeps working
        yield ids, use, forwarder.result(handle)


def _strips(
    batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], plan: TilePlan, counts: dict[str, int], tick: Callable
) -> Iterator[tuple[int, np.ndarray]]:
    """Blend batches of SR tiles (tile order) into finished HR strips."""
    assembler = BandAssembler(plan)
    for ids, use, sr in batches:
        counts["model"] += int(np.count_nonzero(use))
        for i, tile in zip(ids, sr):
            yield from assembler.add(int(i), tile)
        counts["tiles"] += len(ids)
        tick(len(ids))
    yield from assembler.finish()


def super_resolve(
    path: str,
    out: str,
    settings: SlideSettings,
    forwarder: Forwarder,
    *,
    source: str | None = None,
    tick: Callable[[int], Any] = lambda n: None,
) -> dict[str, Any]:
    """Super-resolve the local slide `path` into the pyramidal TIFF `out` (local; published atomically by the
    writer); return what was done (sizes, tiles, seconds). `source` is the slide as the user named it (a
    `s3://` URI, the original path): errors and the file's provenance name it."""
    from srtn.pyramid import write_pyramid

    start = time.perf_counter()
    source = source or path
    prep = prepare(path, settings, label=source)
    plan = prep.plan
    out_w, out_h = plan.out_size
    mpp = None if prep.mpp is None else prep.mpp / settings.scale
    counts = {"tiles": 0, "model": 0}
    about = provenance_fields(
        model={**settings.model, "scale": settings.scale}, source=source, level=settings.level, region=prep.region,
        tile_size=settings.tile_size, overlap=settings.overlap, settings=settings.fingerprint, code=settings.code,
    )  # fmt: skip
    tissue = dict(settings.tissue)
    with SlideTiles(path, plan, mask=prep.mask, mask_downsample=prep.mask_downsample,
                    min_fraction=tissue.get("min_fraction", 0.0), label=source) as tiles:  # fmt: skip
        batches = _sr_batches(tiles, forwarder, batch_size=settings.batch_size, window=settings.batches_in_flight)
        levels = write_pyramid(
            out, RowFeeder(_strips(batches, plan, counts, tick), out_w), width=out_w, height=out_h,
            tile_size=settings.output_tile_size, mpp=mpp, flavor="aperio", compression=settings.compression,  # type: ignore[arg-type]
            quality=settings.quality, description_extra=about,
        )  # fmt: skip
    return {
        "region": list(prep.region),
        "level": settings.level,
        "input_size": [plan.width, plan.height],
        "output_size": [out_w, out_h],
        "levels": levels,
        "mpp": mpp,
        "tiles": counts["tiles"],
        "tiles_model": counts["model"],
        "tiles_bicubic": counts["tiles"] - counts["model"],
        "seconds": round(time.perf_counter() - start, 3),
    }


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, SrtnError):
        reason = getattr(exc, "reason", None) or str(exc)
        return {"error": reason, "error_type": type(exc).__name__, "error_key": getattr(exc, "key", None)}
    return {"error": f"{type(exc).__name__}: {exc}", "error_type": type(exc).__name__, "error_key": None}


def _thumbnail(local: str, target: str, level: int, region: list[int]) -> np.ndarray | None:
    """The LR | SR pair MLflow shows for the run; a picture, so a failure costs the picture, not the slide."""
    from srtn.infer.tracking import lr_sr_pair

    try:
        return lr_sr_pair(local, target, level=level, region=region)
    except Exception as exc:
        logger.warning("no thumbnail pair for %s: %s", local, exc)
        return None


def _stage_and_write(item: Mapping[str, Any], settings: SlideSettings, forwarder: Forwarder) -> dict[str, Any]:
    from srtn.infer.cohort_io import publish

    out = item["output"]
    with storage.stage_local(item["uri"]) as local, tempfile.TemporaryDirectory(prefix="srtn-predict-") as tmp:
        remote = storage.is_remote(out)
        target = os.path.join(tmp, storage.basename(out)) if remote else storage.resolve(out)[1]
        os.makedirs(os.path.dirname(target), exist_ok=True)
        done = super_resolve(local, target, settings, forwarder, source=item["uri"])
        if item.get("thumbnails"):
            done["thumbnail"] = _thumbnail(local, target, settings.level, done["region"])
        done["bytes"] = publish(target, out)  # a local output is in place already (written atomically)
    return done


def run_item(item: Mapping[str, Any], settings: SlideSettings, forwarder: Forwarder) -> dict[str, Any]:
    """One slide of a cohort: stage it (an `s3://` slide is copied locally and removed after), super-resolve,
    publish the output (uploaded whole to `s3://`), write its status record; return the record.

    Never raises for a bad slide: the record says `failed` with the reason, and nothing is published (a stale
    output of an earlier run of that slide is removed). `item` holds `uri`, `slide` (id), `output` (URI),
    `index`, and optionally `status_dir` (write the status record there) and `thumbnails` (add an LR | SR
    thumbnail pair to the returned record, not to the status record).
    """
    from srtn.infer.records import write_status

    start = time.perf_counter()
    record: dict[str, Any] = {"slide": item["slide"], "uri": item["uri"], "output": item["output"]}
    record["fingerprint"] = settings.fingerprint
    try:
        record |= {"status": "done", **_stage_and_write(item, settings, forwarder)}
    except Exception as exc:  # one slide never stops the others: record what happened
        record |= {"status": "failed", **_failure(exc)}
        if item.get("status_dir"):
            storage.delete(item["output"])
    record["seconds"] = round(time.perf_counter() - start, 3)
    if item.get("status_dir"):
        write_status(item["status_dir"], {k: v for k, v in record.items() if k != "thumbnail"})
    return record
