"""Tile layout and seamless stitching for whole-slide inference: pure numpy, no Ray, no I/O.

Frames: a `TilePlan` describes the low-resolution (LR) region in pixels of the level being read, with
its origin in level-0 pixels; stitched output is in high-resolution (HR) pixels, `scale` times larger.

Blending (feathered, separable): along each axis a tile's weight is 0 (a 1e-3 floor) in the outer quarter
of the overlap on every side that has a neighbour, rises linearly over the middle half, and is 1 inside;
sides on the region's border keep weight 1. The 1-D weights of every column (row) of tiles are then divided
by their sum, so the weights of all tiles covering a pixel sum to exactly 1 (also where three tiles overlap)
and a constant image goes through unchanged. Discarding the outer quarter drops the pixels a network
computes from zero padding; the ramp hides what remains of the difference between neighbours.

Streaming: `BandAssembler` takes SR tiles in row-major order and accumulates one band (a tile row) in a
float32 strip of `tile_h * scale` HR rows across the full width. When the next tile row starts, every row
above it is final: it is rounded to uint8 and emitted, and the overlap rows are carried over. `RowFeeder`
turns the emitted strips into the `(x, y, w, h)` tile source the pyramid writer pulls in row-major order.
Memory is O(width) (one band plus one output tile row), never O(area).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["TilePlan", "tile_starts", "axis_weights", "BandAssembler", "RowFeeder", "WEIGHT_FLOOR"]

WEIGHT_FLOOR = 1e-3
"""Smallest blending weight: keeps every pixel covered even where all its tiles are near their edges."""


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of side `tile` covering `[0, length)` with at least `overlap` pixels shared.

    Tiles are spread evenly and the last one ends exactly at `length` (no tile leaves the region);
    a region shorter than a tile gets one tile of the region's length.

    >>> tile_starts(256, 128, 16), tile_starts(100, 128, 16), tile_starts(128, 128, 16)
    ([0, 64, 128], [0], [0])
    """
    if length <= 0 or tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need length > 0, tile > 0 and 0 <= overlap < tile; got {length}, {tile}, {overlap}")
    if length <= tile:
        return [0]
    gaps = math.ceil((length - tile) / (tile - overlap))
    return [round(i * (length - tile) / gaps) for i in range(gaps + 1)]


def _ramp(n: int, overlap_hr: int, *, left: bool, right: bool) -> np.ndarray:
    """Un-normalised 1-D weight of one tile of `n` HR pixels (see the module docstring)."""
    w = np.ones(n, np.float64)
    if overlap_hr <= 0:
        return w
    margin, ramp = overlap_hr / 4, max(overlap_hr / 2, 1.0)
    pos = np.arange(n) + 0.5
    dist = np.full(n, np.inf)
    if left:
        dist = np.minimum(dist, pos)
    if right:
        dist = np.minimum(dist, n - pos)
    return np.clip((dist - margin) / ramp, WEIGHT_FLOOR, 1.0)


def axis_weights(starts: list[int], tile: int, length: int, scale: int, overlap: int) -> list[np.ndarray]:
    """Normalised HR weights (float32) of each tile along one axis; they sum to 1 at every HR pixel."""
    n = tile * scale
    raw = [_ramp(n, overlap * scale, left=s > 0, right=s + tile < length) for s in starts]
    total = np.zeros(length * scale, np.float64)
    for s, w in zip(starts, raw):
        total[s * scale : s * scale + n] += w
    return [(w / total[s * scale : s * scale + n]).astype(np.float32) for s, w in zip(starts, raw)]


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one LR region, in row-major order; small and picklable (sent to every actor).

    `origin` is the region's top-left in level-0 pixels; `width`, `height`, `xs`, `ys`, `tile_w`, `tile_h`
    are pixels of `level`, relative to the region.
    """

    level: int
    downsample: float
    origin: tuple[int, int]
    width: int
    height: int
    tile_w: int
    tile_h: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]
    scale: int
    overlap: int

    @classmethod
    def build(
        cls,
        *,
        level: int,
        downsample: float,
        origin: tuple[int, int],
        width: int,
        height: int,
        tile_size: int,
        overlap: int,
        scale: int,
    ) -> TilePlan:
        tw, th = min(tile_size, width), min(tile_size, height)
        return cls(
            level=level,
            downsample=float(downsample),
            origin=(int(origin[0]), int(origin[1])),
            width=width,
            height=height,
            tile_w=tw,
            tile_h=th,
            xs=tuple(tile_starts(width, tw, min(overlap, tw - 1))),
            ys=tuple(tile_starts(height, th, min(overlap, th - 1))),
            scale=scale,
            overlap=overlap,
        )

    @property
    def n_tiles(self) -> int:
        return len(self.xs) * len(self.ys)

    @property
    def out_size(self) -> tuple[int, int]:
        """(width, height) of the stitched output in HR pixels."""
        return self.width * self.scale, self.height * self.scale

    def tile(self, index: int) -> tuple[int, int, int, int]:
        """`(row, col, x, y)` of tile `index`; x, y in LR pixels relative to the region."""
        row, col = divmod(int(index), len(self.xs))
        return row, col, self.xs[col], self.ys[row]

    def level0(self, x: int, y: int) -> tuple[int, int]:
        """Level-0 coordinates of the LR pixel (x, y) of the region (what `read_rgb` takes)."""
        return self.origin[0] + round(x * self.downsample), self.origin[1] + round(y * self.downsample)


class BandAssembler:
    """Blend SR tiles arriving in row-major order into finished HR rows, one band at a time."""

    def __init__(self, plan: TilePlan) -> None:
        s = plan.scale
        self.plan = plan
        self.out_w, self.out_h = plan.out_size
        self.wx = axis_weights(list(plan.xs), plan.tile_w, plan.width, s, min(plan.overlap, plan.tile_w - 1))
        self.wy = axis_weights(list(plan.ys), plan.tile_h, plan.height, s, min(plan.overlap, plan.tile_h - 1))
        self.band_h = plan.tile_h * s
        self._acc = np.zeros((self.band_h, self.out_w, 3), np.float32)
        # Scratch buffers reused for every tile: no per-tile temporaries (steady memory, no heap churn).
        self._w = np.empty((self.band_h, plan.tile_w * s, 1), np.float32)
        self._t = np.empty((self.band_h, plan.tile_w * s, 3), np.float32)
        self._y0 = 0  # HR row held in _acc[0]
        self._row = 0  # tile row being accumulated
        self._next = 0  # index of the next expected tile

    def add(self, index: int, sr: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add tile `index` (HR uint8 or float, (tile_h*s, tile_w*s, 3)); return the rows it finished."""
        if index != self._next:
            raise ValueError(f"tiles must arrive in row-major order: expected {self._next}, got {index}")
        p, s = self.plan, self.plan.scale
        row, col, x, y = p.tile(index)
        if sr.shape != (self.band_h, p.tile_w * s, 3):
            raise ValueError(f"tile {index}: SR shape {sr.shape}, expected {(self.band_h, p.tile_w * s, 3)}")
        done = self._advance_to(y * s) if row != self._row else []
        self._row = row
        top = y * s - self._y0
        np.multiply(self.wy[row][:, None, None], self.wx[col][None, :, None], out=self._w)
        np.multiply(sr, self._w, out=self._t)
        self._acc[top : top + self.band_h, x * s : x * s + p.tile_w * s] += self._t
        self._next += 1
        return done

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """Emit the last rows; call after the last tile."""
        if self._next != self.plan.n_tiles:
            raise ValueError(f"finish() after {self._next} of {self.plan.n_tiles} tiles")
        return self._advance_to(self.out_h)

    def _advance_to(self, y: int) -> list[tuple[int, np.ndarray]]:
        n = y - self._y0
        if n <= 0:
            return []
        head = self._acc[:n]
        np.clip(np.rint(head, out=head), 0, 255, out=head)  # in place: these rows are final
        done = np.empty(head.shape, np.uint8)
        done[...] = head
        keep = self.band_h - n
        for start in range(0, keep, n):  # shift the carried rows up in non-overlapping chunks (no temporary)
            m = min(n, keep - start)
            self._acc[start : start + m] = self._acc[n + start : n + start + m]
        self._acc[max(keep, 0) :] = 0
        out = [(self._y0, done)]
        self._y0 = y
        return out


class RowFeeder:
    """A pyramid-writer tile source `(x, y, w, h) -> uint8` over finished strips, pulled in row-major order.

    `strips` yields `(y0, rows)` covering the image top to bottom without gaps; only the rows of the
    current output tile row (plus the rest of the last strip) are held.
    """

    def __init__(self, strips: Iterator[tuple[int, np.ndarray]], width: int) -> None:
        self._strips = strips
        self._width = width
        self._parts: list[np.ndarray] = []
        self._y0 = 0  # HR row of the first row held in _parts
        self._cache_y = -1
        self._cache: np.ndarray | None = None

    def _held(self) -> int:
        return sum(p.shape[0] for p in self._parts)

    def __call__(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._cache is None or y != self._cache_y or self._cache.shape[0] < h:
            if y < self._y0:
                raise ValueError(f"row-major order required: rows before {self._y0} are gone (asked for y={y})")
            while self._y0 + self._held() < y + h:
                try:
                    y0, rows = next(self._strips)
                except StopIteration:
                    raise ValueError(f"the image ended at row {self._y0 + self._held()}, asked for {y + h}") from None
                if y0 != self._y0 + self._held() or rows.shape[1] != self._width:
                    raise ValueError(f"strip at row {y0} (width {rows.shape[1]}) does not continue the image")
                self._parts.append(rows)
            rows = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
            start = y - self._y0
            self._cache, self._cache_y = rows[start : start + h], y
            self._parts = [rows[start + h :]] if rows.shape[0] > start + h else []
            self._y0 = y + h
        return self._cache[:h, x : x + w]
