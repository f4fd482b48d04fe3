"""ratiopath's documented mask-first tiling pipeline, doing srtn's work; runs in ratiopath's own venv.

    runs/bench/ratiopath-venv312/bin/python benchmarks/tiling_ratiopath.py --input LIST --output DIR --cpus 2

The route of ratiopath's docs (docs/examples/pipelines/mask-first-tile-filtering-pipeline.md, ratiopath 1.5):

1. one tissue mask per slide with `ratiopath.masks.tissue_mask` (grayscale, Otsu, closing, opening) on the
   pyramid level closest to 8 um/px (`ratiopath.openslide.OpenSlide.closest_level`), saved as an aligned tiled
   pyramidal TIFF carrying that resolution. Done in a Ray Data `map` over the slides (the docs loop on the
   driver; in parallel is what a competent user does). The level is read with OpenSlide: the pyvips wheel's
   libvips has no OpenSlide loader, and `tissue_mask` takes any `pyvips.Image`;
2. `read_slides(level=0, tile_extent=256, stride=256)` -> `map(row_hash)` -> `flat_map(grid_tiles)` ->
   `repartition(target_num_rows_per_block=128)` -> `with_column(tile_overlay_overlap)` -> filter tissue
   fraction >= 0.5 (srtn's `tissue.min_fraction`) -> `with_column(read_slide_tiles)` -> srtn's seed filters;
3. the cap, without an all-to-all shuffle: the passing coordinates (no pixels) come to the driver, which keeps
   a seeded sample of 100 per slide; those are read again (`read_slide_tiles`, one block per slide), paired
   (LR x4/x8 Lanczos, PNG: srtn's functions) and written with `write_parquet`, PNG columns uncompressed.

Ray Data's operator resource reservation is off and its progress bars too, as srtn runs; Ray is started with
`num_cpus=--cpus` and the console options srtn uses (driver logging at WARNING, no worker output).
Deviations from the docs: no `memory=4 GiB` hints (on a 2-CPU machine they only limit concurrency).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

T_MAIN = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiling_workers import KEEP, SCALES, TILE, emit, read_list, slide_seed, tile_functions  # noqa: E402

MASK_MPP = 8.0  # um/px of the tissue mask, as ratiopath's examples
MIN_TISSUE = 0.5  # srtn's tissue.min_fraction


def make_mask(row: dict[str, Any], *, mask_dir: str) -> dict[str, Any]:
    """`tissue_mask` of one slide at about 8 um/px, saved as an aligned pyramidal TIFF with its resolution."""
    import numpy as np
    import pyvips
    from ratiopath.masks import tissue_mask
    from ratiopath.openslide import OpenSlide

    with OpenSlide(row["path"]) as slide:
        level = slide.closest_level(MASK_MPP)
        mpp = slide.slide_resolution(level)
        rgb = np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB"))
    mask = tissue_mask(slide=pyvips.Image.new_from_array(rgb, interpretation="srgb"), mpp=mpp)
    mask = mask.copy(xres=1000.0 / mpp[0], yres=1000.0 / mpp[1])  # pixels per mm: the overlay's MPP
    out = f"{mask_dir}/{row['id']}.tiff"
    mask.tiffsave(out, tile=True, pyramid=True, bigtiff=True, compression="lzw", keep=pyvips.enums.ForeignKeep.NONE)
    return row | {"mask_path": out}


def expand_tiles(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The docs' `expand_tiles`: one row per full grid tile (`last="drop"`, as srtn and the serial loop)."""
    from ratiopath.tiling import grid_tiles

    return [
        {
            "path": row["path"],
            "mask_path": row["mask_path"],
            "tile_x": int(x),
            "tile_y": int(y),
            "level": row["level"],
            "tile_extent_x": row["tile_extent_x"],
            "tile_extent_y": row["tile_extent_y"],
            "mpp_x": row["mpp_x"],
            "mpp_y": row["mpp_y"],
        }
        for x, y in grid_tiles(
            slide_extent=(row["extent_x"], row["extent_y"]),
            tile_extent=(row["tile_extent_x"], row["tile_extent_y"]),
            stride=(row["stride_x"], row["stride_y"]),
            last="drop",
        )
    ]


def tissue_fraction(row: dict[str, Any]) -> dict[str, Any]:
    """The docs' post-processing: the share of mask value 255 (tissue) under the tile."""
    overlap = row.pop("tissue_overlap") or {}
    return row | {"tissue_fraction": overlap.get("255") or 0.0}


def quality(batch: dict[str, Any]) -> dict[str, Any]:
    """srtn's seed filters on the read tiles; the pixels are dropped (only coordinates go on)."""
    passes, _, _ = tile_functions()
    flags = [passes(t) for t in batch.pop("tile")]
    keep = ("path", "tile_x", "tile_y", "tile_extent_x", "tile_extent_y", "level")
    return {k: batch[k] for k in keep} | {"passes": flags}


def pairs(batch: dict[str, Any]) -> Any:
    """HR + LR x4/x8 PNG of the kept tiles (srtn's Lanczos and encoder)."""
    import pyarrow as pa

    _, lanczos, encode_png = tile_functions()
    hr, lr = [], {s: [] for s in SCALES}
    for rgb in batch["tile"]:
        hr.append(encode_png(rgb))
        for s in SCALES:
            lr[s].append(encode_png(lanczos(rgb, s)))
    cols = {
        "path": pa.array(list(batch["path"]), pa.string()),
        "tile_x": pa.array(batch["tile_x"], pa.int64()),
        "tile_y": pa.array(batch["tile_y"], pa.int64()),
        "hr": pa.array(hr, pa.binary()),
    }
    return pa.table(cols | {f"lr_x{s}": pa.array(lr[s], pa.binary()) for s in SCALES})


def cap(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to KEEP passing tiles per slide, a seeded uniform sample, grouped by slide (one block each)."""
    import random

    by_slide: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_slide.setdefault(r["path"], []).append(r)
    out = []
    for path, rs in sorted(by_slide.items()):
        rs.sort(key=lambda r: (r["tile_y"], r["tile_x"]))
        out.extend(random.Random(slide_seed(Path(path).name)).sample(rs, min(KEEP, len(rs))))
    return out


def read_tiles_expression() -> Any:
    """ratiopath's `read_slide_tiles` expression, except that an empty block gives an empty column: ratiopath
    1.5 raises `ArrowConversionError` (shape (0,)) on one, and Ray Data can hand it one after the tissue
    filter even through a repartition (seen once in the 32 Aperio-like slides of 2026-12-04, not on 12-02)."""
    import numpy as np
    import pyarrow as pa
    from ratiopath.tiling import read_slide_tiles
    from ray.data.datatype import DataType
    from ray.data.expressions import col, udf

    names = ("path", "tile_x", "tile_y", "tile_extent_x", "tile_extent_y", "level")
    inner = read_slide_tiles(*(col(c) for c in names)).fn

    @udf(return_dtype=DataType(np.ndarray))
    def read_tiles(path: Any, tile_x: Any, tile_y: Any, extent_x: Any, extent_y: Any, level: Any) -> Any:
        if len(tile_x) == 0:
            return pa.nulls(0)
        return inner(path, tile_x, tile_y, extent_x, extent_y, level)

    return read_tiles(*(col(c) for c in names))


def start_ray(cpus: int) -> tuple[float, bool]:
    """Ray as srtn starts it (local, the console options of `srtn.console.ray_init_options`); (seconds, dashboard)."""
    import ray

    t0 = time.perf_counter()
    ctx = ray.init(address="local", num_cpus=cpus, logging_level="WARNING", configure_logging=True, log_to_driver=False)
    import ray.data

    data = ray.data.DataContext.get_current()
    data.op_resource_reservation_enabled = False  # as srtn.data.per_item
    data.enable_progress_bars = False
    if hasattr(data, "enable_operator_progress_bars"):
        data.enable_operator_progress_bars = False
    return time.perf_counter() - t0, bool(getattr(ctx, "dashboard_url", None))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    import ray.data
    from ratiopath.ray import read_slides
    from ratiopath.tiling import tile_overlay_overlap
    from ratiopath.tiling.utils import row_hash
    from ray.data.expressions import col
    from shapely.geometry import box

    t_imports = time.time()
    ray_s, dashboard = start_ray(args.cpus)
    t_ready = time.time()
    paths = [str(p) for p in read_list(args.input)]
    mask_dir = Path(args.output) / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)

    slides = read_slides(paths, level=0, tile_extent=TILE, stride=TILE)
    slides = slides.map(row_hash).map(make_mask, fn_kwargs={"mask_dir": str(mask_dir)}, num_cpus=1)
    tiles = slides.flat_map(expand_tiles).repartition(target_num_rows_per_block=128)
    overlap = tile_overlay_overlap(
        roi=box(0, 0, TILE, TILE),
        overlay_path=col("mask_path"),
        tile_x=col("tile_x"),
        tile_y=col("tile_y"),
        mpp_x=col("mpp_x"),
        mpp_y=col("mpp_y"),
    )
    tiles = tiles.with_column("tissue_overlap", overlap, num_cpus=1)
    tiles = tiles.map(tissue_fraction).filter(expr=col("tissue_fraction") >= MIN_TISSUE)  # Ray's fast filter
    # read_slide_tiles (1.5) fails on an empty block (ArrowConversionError, shape (0,)), which the filter makes of
    # an all-background block: re-block the candidates (as the docs do after grid_tiles), and read through
    # read_tiles_expression, which leaves an empty block empty (a re-block alone once let one through)
    tiles = tiles.repartition(target_num_rows_per_block=128)
    read = read_tiles_expression()
    tiles = tiles.with_column("tile", read, num_cpus=1).map_batches(quality, batch_format="numpy", num_cpus=1)
    decoded = tiles.take_all()  # coordinates and a flag per decoded tile: small, and no shuffle
    passing = [r for r in decoded if r["passes"]]
    chosen = cap(passing)
    t_stage1 = time.time()

    kept = ray.data.from_items(chosen, override_num_blocks=max(1, len(paths)))
    kept = kept.with_column("tile", read, num_cpus=1).map_batches(pairs, batch_format="numpy", num_cpus=1)
    kept.write_parquet(str(Path(args.output) / "pairs"), compression="none", use_dictionary=False)
    t_done = time.time()
    ray.shutdown()
    t_shutdown = time.time()
    if args.dump:
        per: dict[str, list[tuple[int, int]]] = {Path(p).name: [] for p in paths}
        for r in passing:
            per[Path(r["path"]).name].append((int(r["tile_x"]), int(r["tile_y"])))
        Path(args.dump).write_text(json.dumps(per))
    return {
        "slides": len(paths),
        "decoded": len(decoded) + len(chosen),
        "candidates": len(decoded),
        "passing": len(passing),
        "kept": _count_rows(Path(args.output) / "pairs"),
        "ray_start_s": ray_s,
        "dashboard": dashboard,
        "t_imports": t_imports,
        "t_ready": t_ready,
        "t_stage1": t_stage1,
        "t_done": t_done,
        "t_shutdown": t_shutdown,
    }


def _count_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet"))


def versions() -> dict[str, str | None]:
    """What this venv runs: ratiopath and the libraries its route uses."""
    from importlib import metadata

    names = ("ratiopath", "ray", "pyvips", "pyvips-binary", "openslide-python", "openslide-bin", "numpy", "pyarrow")
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for n in (*names, "rasterio", "shapely", "scikit-image", "pandas", "torch"):
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # `make bench` runs every benchmarks/*.py: this one only serves benchmarks/tiling.py
        print("a ratiopath worker of benchmarks/tiling.py (see --help); nothing to do on its own")
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", help="a .txt list of slides or a folder")
    p.add_argument("--output")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--dump", help="write each slide's passing tile set here (JSON)")
    p.add_argument("--versions", action="store_true", help="print the venv's versions as JSON and exit")
    args = p.parse_args(argv)
    if args.versions:
        print(json.dumps(versions()))
        return 0
    emit(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
