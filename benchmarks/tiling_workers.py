"""Worker processes of the tiling benchmark (the project's venv); each prints one `BENCH_RESULT {json}` line.

    python benchmarks/tiling_workers.py serial|pool2|noray|raystart|floor|empty --input LIST --output DIR [--cpus N]

- serial: the original scripts' loop, done competently: per slide read EVERY level-0 256x256 tile with OpenSlide
  (`srtn.data.slides.read_rgb`), apply the seed filters, keep a seeded uniform sample of 100 passing tiles
  (reservoir: memory bounded by the cap), make LR x4/x8, write HR and LR PNG files into a folder per slide.
- pool2: the same per-slide function over the slides in a `multiprocessing.Pool(cpus)`: what a competent user
  of the scripts does on a machine with `cpus` cores.
- noray: srtn's own per-slide work, `srtn.data.tile_job.process_slide(item, cfg=..., group=...)`, over the
  slides in a `multiprocessing.Pool(cpus)`, no Ray: what srtn costs without Ray.
- raystart: srtn's fixed costs one by one: `import srtn.cli` + config, `srtn.runtime.init_ray()`, the first task
  on every CPU (worker start), a worker's `import srtn.data.tile_job`, `srtn.runtime.shutdown_ray()`.
- floor: the per-kept-tile floor in this one process: level-0 read, filters, LR x4/x8, 3 PNG encodes, Parquet.
- empty: `srtn tile` itself (`srtn.cli.main`, Ray started and stopped as a user's run does) with each slide's
  work replaced by nothing but what frames it (a worker's `import srtn.data.tile_job`, the status record):
  Ray's floor around the slides at this slide count. Reports when the first and the last empty item ran.

Every method uses srtn's own filter, LR and PNG functions (`tile_functions`), so all do the same work per tile.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

T_MAIN = time.time()  # when this interpreter reached the benchmark's code (imports of numpy etc. come after)
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG = REPO / "configs" / "data" / "tcga_kirc_seed.yaml"  # the seed filters: what the baselines implement
TILE, KEEP, SCALES = 256, 100, (4, 8)  # of CONFIG (checked by `check_config`)
RESULT_MARKER = "BENCH_RESULT "  # as benchmarks/_common.py (this module must import in the ratiopath venv too)


def tile_functions() -> tuple[Any, Any, Any]:
    """srtn's quality filter (`QualityThresholds()` = the seed config's), LR downsample (Lanczos) and PNG encoder.

    Pure modules (numpy, OpenCV, Pillow): the ratiopath venv imports them from `platform/` too."""
    platform = str(REPO / "platform")
    if platform not in sys.path:
        sys.path.append(platform)
    from srtn.data.quality import downsample, rejection_reason
    from srtn.data.schema import encode_png
    from srtn.vocab import QualityThresholds

    thresholds = QualityThresholds()

    def passes(rgb: Any) -> bool:
        return rejection_reason(rgb, thresholds) is None

    def lanczos(rgb: Any, scale: int) -> Any:
        return downsample(rgb, scale, "lanczos")

    return passes, lanczos, encode_png


def slide_seed(name: str, seed: int = 0) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{name}".encode()).digest()[:8], "big")


def emit(result: dict[str, Any]) -> None:
    print(RESULT_MARKER + json.dumps(result | {"t_main": T_MAIN, "t_end": time.time()}), flush=True)


def read_list(path: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [Path(line.strip()) for line in p.read_text().splitlines() if line.strip()]
    return sorted(q for q in p.iterdir() if q.suffix in (".svs", ".tiff", ".tif"))


# ---------------------------------------------------------------------------------- the original loop
def cut_original(job: tuple[str, str]) -> dict[str, Any]:
    """One slide as the original scripts cut it: every level-0 tile decoded and filtered, 100 kept at random."""
    import openslide

    from srtn.data.slides import read_rgb

    path, out = Path(job[0]), Path(job[1])
    passes, lanczos, encode_png = tile_functions()
    rng = random.Random(slide_seed(path.name))
    slide = openslide.OpenSlide(str(path))
    w, h = slide.dimensions
    passing: list[tuple[int, int]] = []
    chosen: list[tuple[int, int, Any]] = []  # reservoir sample (Algorithm R) of the passing tiles
    decoded = 0
    for y in range(0, h - TILE + 1, TILE):
        for x in range(0, w - TILE + 1, TILE):
            rgb = read_rgb(slide, x, y, 0, TILE, TILE)
            decoded += 1
            if not passes(rgb):
                continue
            passing.append((x, y))
            if len(chosen) < KEEP:
                chosen.append((x, y, rgb))
            elif (j := rng.randrange(len(passing))) < KEEP:
                chosen[j] = (x, y, rgb)
    slide.close()
    folder = out / path.name.rsplit(".", 1)[0]  # one folder per slide: names never collide
    folder.mkdir(parents=True, exist_ok=True)
    for x, y, rgb in chosen:
        (folder / f"{x}_{y}_hr.png").write_bytes(encode_png(rgb))
        for s in SCALES:
            (folder / f"{x}_{y}_lr_x{s}.png").write_bytes(encode_png(lanczos(rgb, s)))
    return {"name": path.name, "grid": decoded, "decoded": decoded, "passing": passing, "kept": len(chosen)}


def _dump_passing(args: argparse.Namespace, per_slide: list[dict[str, Any]]) -> None:
    if args.dump:
        Path(args.dump).write_text(json.dumps({r["name"]: r["passing"] for r in per_slide}))


def _summary(per_slide: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("grid", "decoded", "kept")
    return {"slides": len(per_slide)} | {k: sum(r[k] for r in per_slide) for k in keys}


def _emit_loop(args: argparse.Namespace, per_slide: list[dict[str, Any]], t_ready: float, t_done: float) -> None:
    """The original loop's result (serial or Pool): its passing sets dumped for the kept-set check, its summary."""
    _dump_passing(args, per_slide)
    passing = sum(len(r["passing"]) for r in per_slide)
    emit(_summary(per_slide) | {"passing": passing, "t_ready": t_ready, "t_done": t_done})


def worker_serial(args: argparse.Namespace) -> None:
    paths = read_list(args.input)
    t_ready = time.time()
    per_slide = [cut_original((str(p), args.output)) for p in paths]
    _emit_loop(args, per_slide, t_ready, time.time())


def worker_pool2(args: argparse.Namespace) -> None:
    import multiprocessing

    paths = read_list(args.input)
    t_ready = time.time()
    with multiprocessing.Pool(args.cpus) as pool:
        per_slide = list(pool.imap_unordered(cut_original, [(str(p), args.output) for p in paths], chunksize=1))
    _emit_loop(args, per_slide, t_ready, time.time())


# ------------------------------------------------------------------------------------- srtn, no Ray
def _load_cfg(args: argparse.Namespace) -> Any:
    from srtn.config.base import load_config
    from srtn.config.tile import TileConfig

    return load_config(TileConfig, CONFIG, [f"input={args.input}", f"output={args.output}", *args.set])


_NORAY: dict[str, Any] = {}  # per pool process: the config and split mode every slide task uses


def _noray_init(cfg: Any, group: str) -> None:
    _NORAY.update(cfg=cfg, group=group)


def _noray_slide(item: dict[str, str]) -> dict[str, Any]:
    from srtn.data.tile_job import process_slide

    return process_slide(item, cfg=_NORAY["cfg"], group=_NORAY["group"])


def worker_noray(args: argparse.Namespace) -> None:
    import multiprocessing

    from srtn.data.tile_job import process_slide  # noqa: F401  (imported before the pool starts, as Ray workers would)
    from srtn.data.tile_slide import group_mode, source_id_for

    cfg = _load_cfg(args)
    paths = read_list(args.input)
    items = [{"uri": str(p), "source_id": source_id_for(str(p))} for p in paths]
    init = (cfg, group_mode(cfg, len(items)))
    Path(args.output).mkdir(parents=True, exist_ok=True)
    t_ready = time.time()
    with multiprocessing.Pool(args.cpus, initializer=_noray_init, initargs=init) as pool:
        records = list(pool.imap_unordered(_noray_slide, items, chunksize=1))
    t_done = time.time()
    emit(
        {
            "slides": len(records),
            "done": sum(r["status"] == "done" for r in records),
            "kept": sum(r.get("kept", 0) for r in records),
            "decoded": sum(r.get("decoded", 0) for r in records),
            "grid": sum(r.get("grid_tiles", 0) for r in records),
            "candidates": sum(r.get("tissue_candidates", 0) for r in records),
            "task_seconds": [r.get("seconds", 0.0) for r in records],
            "t_ready": t_ready,
            "t_done": t_done,
        }
    )


# -------------------------------------------------------------------------------- Ray's fixed costs
def worker_raystart(args: argparse.Namespace) -> None:
    """srtn's fixed costs in the order `srtn tile` pays them, each timed (wall and this process's CPU)."""
    phases: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def mark(name: str, t0: float, c0: float) -> tuple[float, float]:
        phases[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        return time.perf_counter(), time.process_time()

    t, c = time.perf_counter(), time.process_time()
    import srtn.cli  # noqa: F401

    _load_cfg(args)
    t, c = mark("import srtn.cli + config", t, c)
    import ray

    from srtn.runtime import init_ray, shutdown_ray

    init_ray(dashboard=False)  # as `srtn tile` starts it (srtn.data.per_item)
    t, c = mark("init_ray (local Ray start)", t, c)

    @ray.remote(num_cpus=1)
    def first() -> int:
        return os.getpid()

    ray.get([first.remote() for _ in range(int(ray.cluster_resources().get("CPU", 1)))])
    t, c = mark("first task on every CPU (worker start)", t, c)

    @ray.remote(num_cpus=1)
    def imports() -> float:
        t0 = time.perf_counter()
        import srtn.data.tile_job  # noqa: F401

        return time.perf_counter() - t0

    in_worker = ray.get(imports.remote())
    t, c = mark("a worker's import srtn.data.tile_job (round trip)", t, c)
    shutdown_ray()  # as `srtn tile` stops it (srtn.cli)
    mark("shutdown_ray", t, c)
    emit({"phases": phases, "cpu": cpu, "worker_import_s": in_worker, "slides": 0, "kept": 0})


# ------------------------------------------------------------------------- srtn with nothing to cut
def _empty_slide(item: dict[str, str], *, cfg: Any, group: str, progress: Any = None) -> dict[str, Any]:
    """A slide task that cuts nothing: a worker's import of the tiling code and the status record, no more.
    (This file runs as `__main__`, so Ray pickles the function by value: workers need not import it.)"""
    start = time.time()
    from srtn.data.manifest import write_status
    from srtn.data.tile_job import tile_fingerprint

    record = {"source_id": item["source_id"], "status": "done", "kept": 0, "seen": 0, "files": [], "split_counts": {}}
    record |= {"uri": item["uri"], "path": item["uri"], "fingerprint": tile_fingerprint(cfg, group), "seconds": 0.0}
    write_status(cfg.output, record)
    return record | {"t_start": start, "t_end": time.time()}


def worker_empty(args: argparse.Namespace) -> None:
    import srtn.data.tile_job as tile_job
    from srtn.cli import main as srtn_main

    tile_job.process_slide = _empty_slide  # what `tile_dataset` maps over the slides
    sets = [f"input={args.input}", f"output={args.output}", *args.set]
    code = srtn_main(["tile", "--config", str(CONFIG), *(a for s in sets for a in ("--set", s))])
    if code != 0:
        raise SystemExit(f"srtn tile with empty slides exited {code}")
    sources = json.loads((Path(args.output) / "_manifest.json").read_text())["sources"]
    starts, ends = [s["t_start"] for s in sources], [s["t_end"] for s in sources]
    emit({"slides": len(sources), "kept": 0, "t_first_item": min(starts), "t_last_item": max(ends)})


# ------------------------------------------------------------------------------ per-kept-tile floor
def worker_floor(args: argparse.Namespace) -> None:
    """Per kept tile, in one process: level-0 read, filters, LR x4/x8, 3 PNG encodes, and its share of one
    Parquet write (PNG columns uncompressed, as srtn's shards). Tiles: srtn's own candidates of the first slides,
    in srtn's order, until `--floor-tiles` pass; only the kept tiles' work counts (rejected reads are overhead)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from srtn.data.quality import downsample, rejection_reason
    from srtn.data.schema import encode_png
    from srtn.data.slides import read_rgb
    from srtn.data.tile_slide import candidate_order, opened, plan_slide, source_id_for

    cfg = _load_cfg(args)
    thresholds = cfg.filters.thresholds()
    wall = dict.fromkeys(("read", "filters", "lr", "png", "parquet"), 0.0)
    cpu = dict(wall)
    rows: dict[str, list[Any]] = {"x": [], "y": [], "hr": [], **{f"lr_x{s}": [] for s in SCALES}}
    import openslide

    def timed(tile: dict[str, list[float]], phase: str, fn: Any, *a: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*a)
        tile.setdefault(phase, []).append(time.perf_counter() - t0)
        tile.setdefault(phase + "_cpu", []).append(time.process_time() - c0)
        return out

    for path in read_list(args.input):
        sid = source_id_for(str(path))
        with opened(str(path)) as reader:
            plan = plan_slide(reader, source_id=sid, cfg=cfg)
        with openslide.OpenSlide(str(path)) as slide:
            for x, y in candidate_order(plan.candidates, source_id=sid, seed=cfg.seed):
                if len(rows["x"]) >= args.floor_tiles:
                    break
                tile: dict[str, list[float]] = {}
                rgb = timed(tile, "read", read_rgb, slide, x, y, 0, TILE, TILE)
                if timed(tile, "filters", rejection_reason, rgb, thresholds) is not None:
                    continue  # a rejected tile: not part of the per-kept-tile floor
                lrs = {s: timed(tile, "lr", downsample, rgb, s, "lanczos") for s in SCALES}
                rows["hr"].append(timed(tile, "png", encode_png, rgb))
                for s, img in lrs.items():
                    rows[f"lr_x{s}"].append(timed(tile, "png", encode_png, img))
                rows["x"].append(x)
                rows["y"].append(y)
                for phase in ("read", "filters", "lr", "png"):
                    wall[phase] += sum(tile[phase])
                    cpu[phase] += sum(tile[phase + "_cpu"])
        if len(rows["x"]) >= args.floor_tiles:
            break
    n = len(rows["x"])

    def write(rows_limit: int | None = None) -> None:
        table = pa.table(rows).slice(0, rows_limit)
        png = [c for c in rows if c.startswith(("hr", "lr_"))]
        pq.write_table(
            table,
            Path(args.output) / "floor.parquet",
            compression={c: ("none" if c in png else "zstd") for c in rows},
            use_dictionary=["x", "y"],
        )

    Path(args.output).mkdir(parents=True, exist_ok=True)
    write(rows_limit=1)  # the writer's first-call set-up is paid once per process, not per tile
    tile: dict[str, list[float]] = {}
    timed(tile, "parquet", write)
    wall["parquet"], cpu["parquet"] = tile["parquet"][0], tile["parquet_cpu"][0]
    emit({"tiles": n, "phase_wall_s": wall, "phase_cpu_s": cpu, "slides": 0, "kept": n})


WORKERS = {
    "serial": worker_serial,
    "pool2": worker_pool2,
    "noray": worker_noray,
    "raystart": worker_raystart,
    "floor": worker_floor,
    "empty": worker_empty,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # `make bench` runs every benchmarks/*.py: this one only serves benchmarks/tiling.py
        print("a worker of benchmarks/tiling.py (see --help); nothing to do on its own")
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("method", choices=sorted(WORKERS))
    p.add_argument("--input", required=True, help="a .txt list of slides or a folder")
    p.add_argument("--output", required=True)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="srtn config override (noray, floor, raystart)")
    p.add_argument("--dump", help="serial/pool2: write each slide's passing tile set here (JSON)")
    p.add_argument("--floor-tiles", type=int, default=200)
    args = p.parse_args(argv)
    WORKERS[args.method](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
