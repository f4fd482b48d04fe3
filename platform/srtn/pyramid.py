"""Streaming pyramidal tiled-TIFF writer (tifffile + imagecodecs) that OpenSlide opens.

Used by the synthetic slide generator and by whole-slide inference, whose outputs can be far larger
than RAM. All coordinates are level-0 pixels unless a name says otherwise.

Levels: each reduced level is the previous one shrunk by `level_factor` f (2, or 4 as real Aperio
scanners store 40x slides: downsamples 1, 4, 16), an f x f box mean (cv2.INTER_AREA). Tile edges fall on
multiples of f (`tile_size % f == 0`), so a level built tile by tile equals the whole level resized.

Memory: level 0 is pulled tile by tile from the caller and never held whole. While level k is
written, its downsample is built one tile row at a time and appended to an unnamed temporary file
next to the output; level k+1 is then read back one tile row at a time. So the writer holds at most one
tile row of the level being written (tile_size x width_k x 3 bytes, none for level 0 beyond one tile)
plus 1/f of a tile row of the next level: memory grows with the slide's width, never with its area.
The spool files take 1/f^2 of level 0's raw size on disk (1/4 for f=2, 1/16 for f=4), at most two
levels at a time.

Layouts:
- ``generic``: tiled level 0, then tiled reduced levels with NewSubfileType=1 (what OpenSlide's
  generic-tiff driver requires). XResolution/YResolution in pixels per centimetre (10000 / mpp) with
  ResolutionUnit=CENTIMETER, which OpenSlide reports as ``openslide.mpp-x``/``mpp-y``.
- ``aperio``: the same plus a stripped thumbnail as the second directory, and an ImageDescription that
  starts with ``Aperio Image Library`` and carries ``AppMag = ..|MPP = ..`` (OpenSlide vendor
  ``aperio``: ``aperio.AppMag``, ``aperio.MPP``, ``openslide.mpp-x``, ``openslide.objective-power``).

Output is byte-for-byte deterministic (no DateTime or Software tag) and appears atomically: it is
written to a temporary name unique to this writer (``.<name>.<random>.part``, next to the output) and renamed
when complete, so a crash never leaves a truncated TIFF under the real name, and two writers of one output
never share a file: each publishes its own complete TIFF (the last rename wins), none can rename or finish
the other's.

Provenance: with ``flavor="aperio"`` every ``description_extra`` field becomes an OpenSlide property
``aperio.<key>`` (OpenSlide's Aperio driver parses ``key = value`` pairs of the description); whole-slide
inference records there what made the file (`srtn.infer.provenance`).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, Literal

import cv2
import numpy as np
import tifffile

__all__ = ["TileSource", "Flavor", "Compression", "level_dimensions", "write_pyramid", "APERIO_PREFIX"]

TileSource = Callable[[int, int, int, int], np.ndarray]
"""``(x, y, width, height)`` in level-0 pixels -> RGB uint8 array of shape ``(height, width, 3)``."""

Flavor = Literal["aperio", "generic"]
Compression = Literal["jpeg", "lossless"]

APERIO_PREFIX = "Aperio Image Library"
_THUMBNAIL_MAX = 1024
_BIGTIFF_RAW_BYTES = 3 << 30  # raw pyramid size above which classic TIFF's 4 GiB offsets may overflow


def level_dimensions(width: int, height: int, *, min_level_size: int = 512, factor: int = 2) -> list[tuple[int, int]]:
    """(width, height) of every level: divided by `factor` (floor) while the longer side stays >= `min_level_size`."""
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    _check_factor(factor)
    dims = [(width, height)]
    while True:
        w, h = dims[-1][0] // factor, dims[-1][1] // factor
        if w < 1 or h < 1 or max(w, h) < min_level_size:
            return dims
        dims.append((w, h))


def _check_factor(factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ValueError(f"level factor must be an integer >= 2 (2, or 4 as Aperio scanners), got {factor!r}")


class _LevelSpool:
    """One level's RGB rows, appended in order to an unnamed temp file and read back a tile row at a time."""

    def __init__(self, fh: IO[bytes], width: int, height: int) -> None:
        self.fh, self.width, self.height = fh, width, height
        self._rows_written = 0
        self._cache_y = -1
        self._cache: np.ndarray | None = None

    def append(self, rows: np.ndarray) -> None:
        self.fh.seek(self._rows_written * self.width * 3)
        self.fh.write(np.ascontiguousarray(rows).tobytes())
        self._rows_written += rows.shape[0]

    def read_rows(self, y: int, n: int) -> np.ndarray:
        if y + n > self._rows_written:
            raise RuntimeError(f"rows {y}..{y + n} not spooled yet ({self._rows_written} written)")
        out = np.empty((n, self.width, 3), np.uint8)
        self.fh.seek(y * self.width * 3)
        if self.fh.readinto(memoryview(out).cast("B")) != out.nbytes:  # type: ignore[attr-defined]
            raise OSError("short read from the pyramid spool file")
        return out

    def tile(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """A TileSource over this level (coordinates in this level's pixels), one read per tile row."""
        if self._cache_y != y or self._cache is None or self._cache.shape[0] != h:
            self._cache, self._cache_y = self.read_rows(y, h), y
        return self._cache[:, x : x + w]


def _downsample(tile: np.ndarray, f: int) -> np.ndarray:
    """x`f` anti-aliased downsample of a tile cropped to multiples of f (an f x f box mean: tiles compose)."""
    hf, wf = tile.shape[0] // f, tile.shape[1] // f
    return cv2.resize(tile[: f * hf, : f * wf], (wf, hf), interpolation=cv2.INTER_AREA)


def _level_tiles(
    src: TileSource, width: int, height: int, tile_size: int, nxt: _LevelSpool | None, f: int
) -> Iterator[np.ndarray]:
    """Yield padded tiles of one level in row-major order; spool its x`f` downsample into `nxt`."""
    for y in range(0, height, tile_size):
        th = min(tile_size, height - y)
        row = np.empty((th // f, width // f, 3), np.uint8) if nxt is not None else None
        for x in range(0, width, tile_size):
            tw = min(tile_size, width - x)
            tile = src(x, y, tw, th)
            if not isinstance(tile, np.ndarray) or tile.shape != (th, tw, 3) or tile.dtype != np.uint8:
                got = (type(tile).__name__, getattr(tile, "shape", None), getattr(tile, "dtype", None))
                raise ValueError(f"tile source gave {got} for x={x} y={y} w={tw} h={th}; need ({th}, {tw}, 3) uint8")
            if row is not None and th >= f and tw >= f:
                row[:, x // f : x // f + tw // f] = _downsample(tile, f)
            if th < tile_size or tw < tile_size:  # edge replicate: no dark seams in JPEG or lower levels
                tile = np.pad(tile, ((0, tile_size - th), (0, tile_size - tw), (0, 0)), mode="edge")
            if nxt is not None and row is not None and x + tile_size >= width:
                nxt.append(row)  # before the last yield: tifffile stops pulling after the last tile
            yield tile


def _thumbnail(level: _LevelSpool, max_size: int = _THUMBNAIL_MAX) -> np.ndarray:
    """Box-downsample a spooled level by a power of two until it fits `max_size`, a few rows at a time."""
    f = 1
    while max(level.width, level.height) // f > max_size:
        f *= 2
    fx, fy = min(f, level.width), min(f, level.height)
    tw, th = level.width // fx, level.height // fy
    chunk = fy * max(1, (8 << 20) // (fy * level.width * 3))  # about 8 MiB of rows per read
    parts = []
    for y in range(0, th * fy, chunk):
        n = min(chunk, th * fy - y)
        rows = level.read_rows(y, n)[:, : tw * fx]
        parts.append(cv2.resize(rows, (tw, n // fy), interpolation=cv2.INTER_AREA))
    return np.concatenate(parts)


def _fmt(value: float) -> str:
    return format(value, ".10g")


def _aperio_description(head: str, *, app_mag: float | None, mpp: float | None, extra: dict[str, Any] | None) -> str:
    fields: list[tuple[str, Any]] = []
    if app_mag is not None:
        fields.append(("AppMag", _fmt(app_mag)))
    if mpp is not None:
        fields.append(("MPP", _fmt(mpp)))
    fields.extend((extra or {}).items())
    for key, value in fields:
        if any(c in f"{key}{value}" for c in "|\r\n") or "=" in str(key):
            raise ValueError(f"Aperio description field {key!r}={value!r} may not contain '|', '=' or newlines")
    return f"{APERIO_PREFIX} (srtn)\r\n{head}" + "".join(f"|{k} = {v}" for k, v in fields)


def _as_source(tiles: TileSource | np.ndarray, width: int, height: int) -> TileSource:
    if isinstance(tiles, np.ndarray):
        if tiles.shape != (height, width, 3) or tiles.dtype != np.uint8:
            raise ValueError(f"array must be ({height}, {width}, 3) uint8, got {tiles.shape} {tiles.dtype}")
        return lambda x, y, w, h: tiles[y : y + h, x : x + w]
    if not callable(tiles):
        raise TypeError(f"tiles must be a callable (x, y, w, h) -> array or an ndarray, got {type(tiles).__name__}")
    return tiles


def _check_args(
    flavor: str,
    compression: str,
    tile_size: int,
    level_factor: int,
    quality: int,
    mpp: float | None,
    app_mag: float | None,
) -> None:
    if flavor not in ("aperio", "generic"):
        raise ValueError(f"flavor must be 'aperio' or 'generic', got {flavor!r}")
    if compression not in ("jpeg", "lossless"):
        raise ValueError(f"compression must be 'jpeg' or 'lossless', got {compression!r}")
    if tile_size < 16 or tile_size % 16:
        raise ValueError(f"tile_size must be a positive multiple of 16 (a TIFF rule), got {tile_size}")
    _check_factor(level_factor)
    if tile_size % level_factor:
        raise ValueError(
            f"tile_size {tile_size} must be a multiple of level_factor {level_factor} (lower levels are built per tile)"
        )
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if mpp is not None and not mpp > 0:
        raise ValueError(f"mpp must be positive or None, got {mpp}")
    if app_mag is not None and not app_mag > 0:
        raise ValueError(f"app_mag must be positive or None, got {app_mag}")


def write_pyramid(
    path: str | os.PathLike[str],
    tiles: TileSource | np.ndarray,
    *,
    width: int,
    height: int,
    tile_size: int = 256,
    mpp: float | None,
    app_mag: float | None = None,
    flavor: Flavor = "generic",
    compression: Compression = "jpeg",
    quality: int = 90,
    min_level_size: int = 512,
    level_factor: int = 2,
    description_extra: dict[str, Any] | None = None,
) -> int:
    """Write a tiled, pyramidal RGB TIFF/SVS that OpenSlide opens; return the number of levels.

    `tiles` is a TileSource called once per level-0 tile in row-major order (edge tiles are clipped to the
    image: the source never sees coordinates outside `width` x `height`), or a whole (height, width, 3)
    uint8 array for small images. Each level is the previous one shrunk by `level_factor` (2; 4 for the
    real Aperio layout; an f x f box mean, so `tile_size` must be a multiple of it) while the longer side
    stays >= `min_level_size`. `compression="lossless"` stores deflate with a horizontal predictor (round-trips
    exactly); `"jpeg"` uses `quality` (YCbCr 4:2:0). `mpp` is microns per level-0 pixel (None: unknown).
    `description_extra` adds ``key = value`` fields to the Aperio description, or keys to the generic
    flavour's JSON description.
    """
    _check_args(flavor, compression, tile_size, level_factor, quality, mpp, app_mag)
    dims = level_dimensions(width, height, min_level_size=min_level_size, factor=level_factor)
    src = _as_source(tiles, width, height)
    path = Path(path)
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")  # this writer's own: never shared

    codec: dict[str, Any] = (
        {"compression": "jpeg", "compressionargs": {"level": quality}}
        if compression == "jpeg"
        else {"compression": "zlib", "compressionargs": {"level": 6}, "predictor": True}
    )
    common: dict[str, Any] = {"photometric": "rgb", "metadata": None, "software": False, **codec}
    codec_name = f"JPEG/RGB Q={quality}" if compression == "jpeg" else "Deflate/RGB"
    raw_bytes = width * height * 3 * 4 // 3
    try:
        with ExitStack() as stack:
            tif = stack.enter_context(tifffile.TiffWriter(part, bigtiff=raw_bytes > _BIGTIFF_RAW_BYTES))
            spools: list[_LevelSpool] = []
            stack.callback(lambda: [s.fh.close() for s in spools])
            f = level_factor
            for k, (w, h) in enumerate(dims):
                make_next = k + 1 < len(dims) or (k == 0 and flavor == "aperio" and w >= f and h >= f)
                nxt = None
                if make_next:
                    fh = tempfile.TemporaryFile(dir=path.parent)  # noqa: SIM115 - closed via `spools`
                    nxt = _LevelSpool(fh, w // f, h // f)
                    spools.append(nxt)
                if flavor == "aperio":
                    head = f"{width}x{height} [0,0 {width}x{height}]" if k == 0 else f"{width}x{height} -> {w}x{h} -"
                    desc = _aperio_description(
                        f"{head} ({tile_size}x{tile_size}) {codec_name}",
                        app_mag=app_mag,
                        mpp=mpp,
                        extra=description_extra,
                    )
                else:
                    meta = {"mpp": mpp, "app_mag": app_mag, "level": k, **(description_extra or {})}
                    desc = json.dumps({"srtn": meta}, sort_keys=True, default=str)
                res = {}
                if mpp is not None:
                    res = {
                        "resolution": (1e4 / (mpp * width / w), 1e4 / (mpp * height / h)),
                        "resolutionunit": "CENTIMETER",
                    }
                tif.write(
                    _level_tiles(src, w, h, tile_size, nxt, f),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(tile_size, tile_size),
                    description=desc,
                    subfiletype=0 if k == 0 else 1,
                    **res,
                    **common,
                )
                if k == 0 and flavor == "aperio" and nxt is not None:
                    thumb = _thumbnail(nxt)
                    head = f"{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} -"
                    tdesc = _aperio_description(head, app_mag=app_mag, mpp=mpp, extra=description_extra)
                    tif.write(thumb, description=tdesc, subfiletype=0, **common)
                if len(spools) >= 2:  # level k is written: its spool is no longer needed
                    spools.pop(0).fh.close()
                if nxt is None:
                    break
                src = nxt.tile
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return len(dims)
