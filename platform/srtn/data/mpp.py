"""Microns per pixel: which slide is at what scale, and which level and region a physical tile is read from.

`tiles.mpp` asks for tiles of one physical size whatever the scan (TCGA-KIRC mixes 40x at ~0.25 um/px and
20x at ~0.5 um/px). A slide's level-0 MPP comes from its file (`openslide.mpp-x`) or, for files that carry
none, from `slide_mpp` (a mapping or CSV: slide id or file-name glob -> um/px). A slide with neither fails
with the reason "no MPP" instead of being tiled at a wrong scale.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

from srtn import storage
from srtn.data.slides import tile_grid
from srtn.errors import ConfigError

__all__ = ["TileGeometry", "load_slide_mpp", "lookup_mpp", "tile_geometry", "LEVEL_TOLERANCE"]

LEVEL_TOLERANCE = 0.01
"""A level counts as fine enough for a target MPP up to 1% coarser: Aperio stores downsamples like 4.0002."""


def load_slide_mpp(spec: Mapping[str, float] | str | None) -> dict[str, float]:
    """`slide_mpp` as a dict: a mapping as given, or a CSV file (local or s3://) with columns `slide,mpp`.
    Raises `ConfigError` naming the file, row or value (called by the driver, before any Ray work)."""
    if spec is None:
        return {}
    if not isinstance(spec, str):
        return {str(k): float(v) for k, v in spec.items()}
    try:
        text = storage.read_bytes(spec).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"slide_mpp: cannot read {spec}: {exc}", key="slide_mpp") from exc
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"slide", "mpp"} <= {f.strip() for f in reader.fieldnames}:
        raise ConfigError(f"slide_mpp: {spec} needs a header with columns slide,mpp", key="slide_mpp")
    table: dict[str, float] = {}
    for line, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        try:
            value = float(row["mpp"])
        except ValueError:
            value = math.nan
        if not row["slide"] or not value > 0:
            raise ConfigError(
                f"slide_mpp: {spec} line {line}: need a slide and a positive mpp, got {row}", key="slide_mpp"
            )
        table[row["slide"]] = value
    return table


def lookup_mpp(table: Mapping[str, float], *, source_id: str, name: str) -> float | None:
    """The MPP `slide_mpp` gives a slide: its id or file name exactly, else the first glob matching either."""
    for key in (source_id, name):
        if key in table:
            return table[key]
    for pattern, value in table.items():
        if fnmatch.fnmatchcase(source_id, pattern) or fnmatch.fnmatchcase(name, pattern):
            return value
    return None


@dataclass(frozen=True)
class TileGeometry:
    """Where a slide's HR tiles come from: read `read_size` px of `level` per tile, covering `size0` level-0 px
    in steps of `step0`, resampled to the HR size when `read_size` differs. `mpp` is what the rows record."""

    level: int
    read_size: int
    size0: float
    step0: float
    mpp: float | None
    downsample: float  # level-0 pixels per HR pixel (what `lr.method: pyramid` multiplies by the scale)
    step: int  # HR pixels between tiles
    mpp_target: float | None  # tiles.mpp (None: pixels of `level`)

    def grid(self, level_dimensions: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
        """Level-0 top-left corners of the full tiles, row-major (partial tiles at the edges left out): the grid
        of `level`'s pixels without a target MPP (as before MPP existed), else a level-0 grid of `step0`."""
        if self.mpp_target is None:
            ds = self.size0 / self.read_size
            w, h = level_dimensions[self.level]
            return [(round(x * ds), round(y * ds)) for x, y in tile_grid(w, h, size=self.read_size, stride=self.step)]
        width0, height0 = level_dimensions[0]
        nx = int((width0 - self.size0) // self.step0) + 1 if width0 >= self.size0 else 0
        ny = int((height0 - self.size0) // self.step0) + 1 if height0 >= self.size0 else 0
        return [(round(i * self.step0), round(j * self.step0)) for j in range(ny) for i in range(nx)]


def tile_geometry(
    *,
    size: int,
    step: int,
    level: int,
    target_mpp: float | None,
    slide_mpp: float | None,
    downsamples: tuple[float, ...],
) -> TileGeometry:
    """Pixels of `level` (target_mpp None), or the level that best covers `target_mpp`: the coarsest whose MPP is
    at or below it (so nothing is upsampled), read over the target's footprint and resampled down."""
    if target_mpp is None:
        ds = downsamples[level]
        mpp = None if slide_mpp is None else slide_mpp * ds
        return TileGeometry(level, size, size * ds, step * ds, mpp, ds, step, None)
    if slide_mpp is None:
        raise ValueError("no MPP: the file has none and slide_mpp has no entry for it (tiles.mpp needs it)")
    ds = target_mpp / slide_mpp  # level-0 pixels per HR pixel
    if ds < 1 - LEVEL_TOLERANCE:
        raise ValueError(
            f"level 0 is at {slide_mpp:g} um/px, coarser than tiles.mpp {target_mpp:g}: its tiles would be upsampled"
        )
    fine = [i for i, d in enumerate(downsamples) if d <= ds * (1 + LEVEL_TOLERANCE)]
    best = max(fine, key=lambda i: downsamples[i]) if fine else 0
    read = max(1, round(size * ds / downsamples[best]))
    return TileGeometry(best, read, size * ds, step * ds, target_mpp, ds, step, target_mpp)
