"""`srtn tile` against the original serial script and ratiopath's Ray Data pipeline, on the same slides.

What runs (every pipeline in its own subprocess, on the same cached synthetic TCGA-style slides, doing the
same work with the same functions -- srtn's own quality filter `srtn.data.quality.rejection_reason` (gray std > 30,
<= 40% near-white > 200, <= 40% near-black < 55), LR `srtn.data.quality.downsample` (Pillow Lanczos, x4 and x8)
and PNG encoder `srtn.data.schema.encode_png` -- keeping up to 100 tiles per slide):

  srtn       `run_tiling` with configs/data/tcga_kirc_seed.yaml (input/output overridden), Ray local with
             2 CPUs started and warmed (one trivial task per CPU) BEFORE the timer; fresh output dir.
  serial     the original scripts' loop, done competently: per slide, read EVERY level-0 256x256 tile
             with OpenSlide read_region, filter, keep 100 chosen at random among the passing ones,
             downsample, write PNG files to a folder. One process, no Ray.
  ratiopath  ratiopath's documented Ray Data tiling pipeline (read_slides -> row_hash -> flat_map
             grid_tiles -> repartition(128) -> map_batches(read_slide_tiles) -> filter), then the same
             filters, up to 100 per slide (groupby(slide).map_groups on coordinates only), re-read of
             the kept tiles, LR x4/x8, write_parquet. Runs in its own venv (runs/bench/ratiopath-venv,
             see benchmarks/README.md); Ray started and warmed before the timer, like srtn.
Ray workers run at nice 0 like the serial loop (Ray's default is 15; --worker-nice).

Measured:
  (a) slides/min of each; ratio srtn / serial and srtn / ratiopath (goal >= 4x each), from runs of the
      same round (wall clock), and a load-independent estimate from CPU-s/slide of each process tree.
  (b) level-0 tile decodes per kept tile of srtn, from its manifest (sum decoded / sum kept; goal <= 2).
  (c) peak memory of the whole srtn process tree (driver + gcs + raylet + Ray workers: summed PSS from
      /proc, sampled every 0.2 s) on N small slides versus 10N (goal: ratio <= 1.25).
Also: CPU seconds of each process tree by role, and a cProfile breakdown of srtn's per-slide work.

    python benchmarks/tiling.py                 # 32 slides 8192x8192 x 2 rounds; memory 20 vs 200 of 2048x2048
    python benchmarks/tiling.py --quick         # 4 slides 4096x4096, memory 5 vs 50 slides 1024x1024
    python benchmarks/tiling.py --repeats 3     # 3 rounds, rotating the order; median + spread
    python benchmarks/tiling.py --report runs/bench/tiling-results-*.json   # re-print a saved run

Slides are generated once into runs/bench/slides-<params>/ and reused (delete the folder to rebuild).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _common import RESULT_MARKER, markdown_table, run_measured  # noqa: E402

CONFIG = REPO / "configs" / "data" / "tcga_kirc_seed.yaml"  # the seed filters: what the baselines implement
DEFAULT_CACHE = REPO / "runs" / "bench"
RATIOPATH_PYTHON = DEFAULT_CACHE / "ratiopath-venv" / "bin" / "python"

# Tile size, cap and LR scales of configs/data/tcga_kirc_seed.yaml (checked against it in `main`).
TILE, KEEP, SCALES = 256, 100, (4, 8)
PLATFORM = REPO / "platform"  # serial and ratiopath import srtn's tile functions from here (pure modules)

GOAL_SPEEDUP, GOAL_DECODES, GOAL_MEMORY = 4.0, 2.0, 1.25


# --------------------------------------------------------------------------------------------- helpers
def tile_functions() -> tuple[Any, Any, Any]:
    """srtn's own quality filter, LR downsample and PNG encoder, so all three pipelines do the same work.

    `srtn.data.quality` and `srtn.data.schema` need only numpy, OpenCV, Pillow and pyarrow, which the ratiopath venv
    has too; the filter thresholds are `QualityThresholds()`'s defaults, which `main` checks equal the
    config's.
    """
    if str(PLATFORM) not in sys.path:
        sys.path.insert(0, str(PLATFORM))
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


class Timer:
    """The timed region: perf_counter seconds, plus its time.time() bounds for the parent's CPU sampler."""

    def __enter__(self) -> Timer:
        self.e0, self.t0 = time.time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds, self.e1 = time.perf_counter() - self.t0, time.time()


def emit(result: dict[str, Any], timer: Timer) -> None:
    print(RESULT_MARKER + json.dumps(result | {"seconds": timer.seconds, "t0": timer.e0, "t1": timer.e1}), flush=True)


def start_ray(num_cpus: int) -> float:
    """A fresh local Ray (never someone else's cluster) with `num_cpus`, warmed; returns seconds taken.

    Retried: on a loaded machine Ray's own start-up can time out ("The current node timed out during
    startup")."""
    import ray

    t0 = time.perf_counter()
    for attempt in range(3):
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                configure_logging=True,
                logging_level="WARNING",
            )
            break
        except Exception as exc:  # Ray raises a bare Exception for start-up timeouts
            print(f"ray.init failed ({exc}); retrying", file=sys.stderr, flush=True)
            ray.shutdown()
            time.sleep(5)
            if attempt == 2:
                raise

    @ray.remote(num_cpus=1)
    def warm_up() -> int:
        return os.getpid()

    ray.get([warm_up.remote() for _ in range(num_cpus)])
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- slides
def dataset_dir(cache: Path, n: int, size: int, tissue: float, seed: int) -> Path:
    return cache / f"slides-n{n}-{size}x{size}-t{tissue:g}-s{seed}"


def _write_one(job: tuple[str, Any, int, float]) -> str:
    from srtn.synth import write_tcga_slide

    path, spec, size, tissue = job
    return str(write_tcga_slide(path, spec, width=size, height=size, tissue_fraction=tissue))


def ensure_slides(cache: Path, n: int, size: int, tissue: float, seed: int, procs: int) -> list[Path]:
    """The slides of one parameter set, generated once (in `procs` processes) and reused."""
    from concurrent.futures import ProcessPoolExecutor

    from srtn.synth import tcga_slide_specs

    final = dataset_dir(cache, n, size, tissue, seed)
    specs = tcga_slide_specs(n, seed=seed, fmt="mixed")
    if final.is_dir() and (final / "COMPLETE").exists():
        return [final / s.name for s in specs]
    tmp = final.with_name(final.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    jobs = [(str(tmp / s.name), s, size, tissue) for s in specs if not (tmp / s.name).exists()]
    t0 = time.perf_counter()
    print(f"generating {len(jobs)} slides {size}x{size} into {final} ...", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(max_workers=procs) as pool:
        list(pool.map(_write_one, jobs))
    (tmp / "COMPLETE").write_text(json.dumps({"n": n, "size": size, "tissue": tissue, "seed": seed}))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return [final / s.name for s in specs]


def slide_list(paths: list[Path], out: Path) -> Path:
    out.write_text("".join(f"{p}\n" for p in paths))
    return out


# ------------------------------------------------------------------------------------------ workers
def worker_srtn(args: argparse.Namespace) -> None:
    """`srtn tile` with the default config; Ray started and warmed before the timer."""
    from srtn.config.base import load_config
    from srtn.config.tile import TileConfig
    from srtn.data.manifest import read_manifest
    from srtn.data.tile_job import run_tiling

    cfg = load_config(TileConfig, CONFIG, [f"input={args.input}", f"output={args.output}"])
    ray_s = start_ray(args.cpus)
    with Timer() as timer:
        rc = run_tiling(cfg)
    manifest = read_manifest(args.output)
    sources = manifest["sources"]
    emit(
        {
            "ray_start_s": ray_s,
            "rc": rc,
            "slides": len(sources),
            "done": sum(1 for s in sources if s["status"] == "done"),
            "decoded": sum(s.get("decoded", 0) for s in sources),
            "kept": sum(s.get("kept", 0) for s in sources),
            "candidates": sum(s.get("tissue_candidates", 0) for s in sources),
            "grid": sum(s.get("grid_tiles", 0) for s in sources),
            "task_seconds": [s.get("seconds", 0.0) for s in sources],
        },
        timer,
    )


def worker_serial(args: argparse.Namespace) -> None:
    """The original scripts' loop: every level-0 tile read and filtered, 100 random kept, PNG files."""
    import random

    import openslide

    from srtn.data.slides import read_rgb

    passes, lanczos, encode_png = tile_functions()
    paths = sorted(p for p in Path(args.input).iterdir() if p.suffix in (".svs", ".tiff"))
    out = Path(args.output)
    decoded = kept = 0
    with Timer() as timer:
        for path in paths:
            slide = openslide.OpenSlide(str(path))
            w, h = slide.dimensions
            passing = []
            for y in range(0, h - TILE + 1, TILE):
                for x in range(0, w - TILE + 1, TILE):
                    rgb = read_rgb(slide, x, y, 0, TILE, TILE)
                    decoded += 1
                    if passes(rgb):
                        passing.append((x, y, rgb))
            slide.close()
            chosen = random.Random(slide_seed(path.name)).sample(passing, min(KEEP, len(passing)))
            folder = out / path.name.rsplit(".", 1)[0]  # one folder per slide: names never collide
            folder.mkdir(parents=True, exist_ok=True)
            for x, y, rgb in chosen:
                (folder / f"{x}_{y}_hr.png").write_bytes(encode_png(rgb))
                for s in SCALES:
                    (folder / f"{x}_{y}_lr_x{s}.png").write_bytes(encode_png(lanczos(rgb, s)))
                kept += 1
    emit({"slides": len(paths), "decoded": decoded, "kept": kept}, timer)


def _rp_tiling(row: dict[str, Any]) -> list[dict[str, Any]]:
    """ratiopath quick-start `tiling`: one row per grid tile (full tiles only, as srtn and serial)."""
    from ratiopath.tiling import grid_tiles

    return [
        {
            "tile_x": int(x),
            "tile_y": int(y),
            "path": row["path"],
            "slide_id": row["id"],
            "level": row["level"],
            "tile_extent_x": row["tile_extent_x"],
            "tile_extent_y": row["tile_extent_y"],
        }
        for x, y in grid_tiles(
            slide_extent=(row["extent_x"], row["extent_y"]),
            tile_extent=(row["tile_extent_x"], row["tile_extent_y"]),
            stride=(row["stride_x"], row["stride_y"]),
            last="drop",
        )
    ]


def _rp_keep(group: Any) -> Any:
    """Up to KEEP passing tiles of one slide, chosen at random (seeded by the slide)."""
    if len(group) <= KEEP:
        return group
    seed = slide_seed(str(group["path"].iloc[0]).rsplit("/", 1)[-1])
    return group.sample(n=KEEP, random_state=seed % (2**32))


def _rp_pairs(batch: dict[str, Any]) -> Any:
    import pyarrow as pa

    _, lanczos, encode_png = tile_functions()
    hr, lr = [], {s: [] for s in SCALES}
    for rgb in batch["tile"]:
        hr.append(encode_png(rgb))
        for s in SCALES:
            lr[s].append(encode_png(lanczos(rgb, s)))
    cols = {
        "slide_id": pa.array(list(batch["slide_id"]), pa.string()),
        "path": pa.array(list(batch["path"]), pa.string()),
        "tile_x": pa.array(batch["tile_x"], pa.int64()),
        "tile_y": pa.array(batch["tile_y"], pa.int64()),
        "hr": pa.array(hr, pa.binary()),
    }
    cols |= {f"lr_x{s}": pa.array(lr[s], pa.binary()) for s in SCALES}
    return pa.table(cols)


def worker_ratiopath(args: argparse.Namespace) -> None:
    """ratiopath's documented Ray Data pipeline doing the same work (see the module docstring)."""
    import openslide
    import pyarrow.parquet as pq
    from ratiopath.ray import read_slides
    from ratiopath.tiling import read_slide_tiles
    from ratiopath.tiling.utils import row_hash

    ray_s = start_ray(args.cpus)
    timer = Timer().__enter__()
    slides = read_slides(args.input, level=0, tile_extent=TILE, stride=TILE)
    slides = slides.map(row_hash, num_cpus=0.1)
    tiles = slides.flat_map(_rp_tiling, num_cpus=0.2).repartition(target_num_rows_per_block=128)
    passes, _, _ = tile_functions()
    tiles = tiles.map_batches(read_slide_tiles, num_cpus=1).filter(lambda row: passes(row["tile"]))
    # num_partitions: Ray's default (200 hash-shuffle partitions) took minutes for 4 slides here; one per CPU
    by_slide = tiles.drop_columns(["tile"]).groupby("slide_id", num_partitions=args.cpus)
    chosen = by_slide.map_groups(_rp_keep, batch_format="pandas")
    pairs = chosen.map_batches(read_slide_tiles, num_cpus=1).map_batches(_rp_pairs, num_cpus=1)
    pairs.write_parquet(args.output)
    timer.__exit__()
    kept = sum(pq.ParquetFile(p).metadata.num_rows for p in Path(args.output).rglob("*.parquet"))
    paths = [p for p in Path(args.input).iterdir() if p.suffix in (".svs", ".tiff")]
    grid = 0
    for p in paths:
        with openslide.OpenSlide(str(p)) as s:
            w, h = s.dimensions
        grid += (w // TILE) * (h // TILE)
    emit({"ray_start_s": ray_s, "slides": len(paths), "decoded": grid + kept, "kept": kept}, timer)


WORKERS = {"srtn": worker_srtn, "serial": worker_serial, "ratiopath": worker_ratiopath}


# ------------------------------------------------------------------------------------------ profile
def profile_srtn(paths: list[Path], out: Path) -> list[tuple[str, float]]:
    """cProfile of `process_slide` on `paths` in this process (no Ray), timed in CPU seconds of this
    process (time.process_time: robust to other load on the machine); seconds per phase."""
    import cProfile
    import pstats

    from srtn.config.base import load_config
    from srtn.config.tile import TileConfig
    from srtn.data import quality as tiles
    from srtn.data import shards, slides
    from srtn.data import tile_slide as tiling
    from srtn.data.schema import encode_png as srtn_png
    from srtn.data.tile_job import process_slide

    cfg = load_config(TileConfig, CONFIG, [f"input={paths[0].parent}", f"output={out}"])
    items = [{"uri": str(p), "source_id": tiling.source_id_for(str(p))} for p in paths]
    prof = cProfile.Profile(time.process_time)
    t0 = time.process_time()
    prof.enable()
    for item in items:
        process_slide(item, cfg=cfg, group="patient")
    prof.disable()
    total = time.process_time() - t0
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]

    def key(fn: Any) -> tuple[str, str]:
        return fn.__code__.co_filename, fn.__code__.co_name

    def cum(fn: Any, caller: Any = None) -> float:
        """Cumulative seconds of `fn` (only its calls from `caller`, if given)."""
        out = 0.0
        for k, v in stats.items():
            if (k[0], k[2]) != key(fn):
                continue
            if caller is None:
                out += v[3]
            else:
                out += sum(c[3] for ck, c in v[4].items() if (ck[0], ck[2]) == key(caller))
        return out

    phases = [
        ("tissue mask (low-resolution level read + cv2)", cum(slides.tissue_mask)),
        ("level-0 tile reads (OpenSlide read_region)", cum(slides.read_rgb, tiling._tile_open_slide)),
        ("quality filters", cum(tiles.rejection_reason)),
        ("LR downsample x4, x8 (Pillow Lanczos)", cum(tiles.downsample)),
        ("PNG encode HR + LR (srtn.data.schema.encode_png)", cum(srtn_png)),
        ("Parquet shard write (rows -> Arrow -> zstd -> file)", cum(shards.write_source_shards)),
    ]
    phases.append(("other (open slide, candidate list, rows, status)", total - sum(s for _, s in phases)))
    phases.append((f"total CPU-s ({len(paths)} slides)", total))
    return phases


# --------------------------------------------------------------------------------------- orchestrate
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 4 slides 4096x4096; memory 5 vs 50 of 1024x1024")
    p.add_argument("--slides", type=int, default=32, help="slides for (a)/(b) (default 32)")
    p.add_argument("--size", type=int, default=8192, help="their side in pixels (default 8192)")
    p.add_argument("--tissue", type=float, default=0.4, help="tissue fraction of the synthetic slides (0.4)")
    p.add_argument("--mem-slides", type=int, default=20, help="small run of (c); the large one is 10x (default 20)")
    p.add_argument("--mem-size", type=int, default=2048, help="side of the (c) slides (default 2048)")
    p.add_argument("--cpus", type=int, default=2, help="Ray CPUs for srtn and ratiopath (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of (a), rotating the order (default 2; --quick: 1)")
    p.add_argument("--profile-slides", type=int, default=4, help="slides profiled in-process (0: skip)")
    p.add_argument(
        "--max-load",
        type=float,
        default=0.0,
        help="before each run, wait until the 1-min load average is below this (0: never wait)",
    )
    p.add_argument("--max-wait", type=float, default=300.0, help="longest wait for --max-load, seconds (300)")
    p.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="niceness of Ray workers (RAY_worker_niceness; Ray's default 15); serial runs at 0",
    )
    p.add_argument("--skip", default="", help="comma list of pipelines to skip: serial,ratiopath,memory")
    p.add_argument("--ratiopath-python", default=str(RATIOPATH_PYTHON), help="python of the ratiopath venv")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="where slides and outputs go (runs/bench)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--report", metavar="JSON", help="print the table of a saved run (runs/bench/tiling-results-*.json)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.slides, args.size, args.mem_slides, args.mem_size, args.repeats = 4, 4096, 5, 1024, 1
        args.profile_slides = min(args.profile_slides, 2)
    return args


def _run(name: str, python: str, inp: Path | str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--input",
        str(inp),
        "--output",
        str(out),
        "--cpus",
        str(args.cpus),
    ]
    # Ray's raylet starts workers at nice 15 unless RAY_worker_niceness says otherwise: on a shared machine
    # that alone loses to the nice-0 serial loop. Same priority everywhere (as benchmarks/breakhis.py).
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_worker_niceness=str(args.worker_nice))
    if name == "ratiopath":  # its Ray workers import srtn's tile functions (see tile_functions)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLATFORM), env.get("PYTHONPATH", "")) if p)
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray, never a cluster someone else started
    _wait_for_quiet(args)
    print(f"  {name} on {inp} (load average {os.getloadavg()[0]:.1f}) ...", file=sys.stderr, flush=True)
    load0 = os.getloadavg()[0]
    m = run_measured(cmd, env=env)
    load1 = os.getloadavg()[0]
    shutil.rmtree(out, ignore_errors=True)
    if m.returncode != 0 or not m.result:
        tail = "\n".join((m.stderr or m.stdout).strip().splitlines()[-25:])
        print(f"  {name} FAILED (exit {m.returncode}):\n{tail}", file=sys.stderr, flush=True)
        return {"failed": f"exit {m.returncode}: {tail.splitlines()[-1] if tail else ''}"}
    timed = m.stats.cpu_between(m.result["t0"], m.result["t1"])  # CPU of the timed region only
    r = m.result | {
        "wall_s": m.wall_s,
        "cpu_s": sum(timed.values()),
        "cpu_roles": timed,
        "load": (load0, load1),
        "peak_pss_mib": m.stats.peak_pss_mib,
        "peak_rss_mib": m.stats.peak_rss_mib,
        "procs": m.stats.peak_procs,
    }
    r["spm"] = 60.0 * r["slides"] / r["seconds"]
    print(
        f"    {r['seconds']:.1f} s timed, {r['spm']:.1f} slides/min, {r['kept']} kept, "
        f"{r['decoded']} decoded, CPU {r['cpu_s']:.0f} s, peak PSS {r['peak_pss_mib']:.0f} MiB",
        file=sys.stderr,
        flush=True,
    )
    return r


def _check_config() -> None:
    """The serial and ratiopath pipelines copy these settings of the config srtn runs with."""
    from srtn.config.base import load_config
    from srtn.config.tile import TileConfig
    from srtn.vocab import QualityThresholds

    cfg = load_config(TileConfig, CONFIG, ["input=x", "output=x"])
    same = (
        cfg.filters.thresholds() == QualityThresholds()
        and (cfg.tiles.size, cfg.tiles.level, cfg.tiles.step) == (TILE, 0, TILE)
        and cfg.max_tiles_per_slide == KEEP
        and tuple(cfg.lr.scales) == SCALES
        and cfg.lr.method == "lanczos"
    )
    if not same:
        raise SystemExit(f"{CONFIG} no longer matches this benchmark's baselines (filters, tiles, cap, LR): update it")


def _wait_for_quiet(args: argparse.Namespace) -> None:
    """With --max-load, wait (at most --max-wait s) until the 1-minute load average drops below it."""
    if not args.max_load:
        return
    deadline = time.time() + args.max_wait
    while os.getloadavg()[0] > args.max_load and time.time() < deadline:
        print(f"  waiting: load average {os.getloadavg()[0]:.1f} > {args.max_load}", file=sys.stderr, flush=True)
        time.sleep(15)


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.worker:
        WORKERS[args.worker](args)
        return 0
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(
            _report(
                argparse.Namespace(**saved["args"]),
                saved["results"],
                saved["mem"],
                [tuple(p) for p in saved["phases"]],
                saved["total_s"],
            )
        )
        return 0
    t_start = time.perf_counter()
    _check_config()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    cache = Path(args.cache).resolve()
    runs = cache / "out"
    runs.mkdir(parents=True, exist_ok=True)
    rp_python = args.ratiopath_python
    if "ratiopath" not in skip and not Path(rp_python).exists():
        print(f"no ratiopath venv at {rp_python}: see benchmarks/README.md; skipping ratiopath", file=sys.stderr)
        skip.add("ratiopath")

    slides = ensure_slides(cache, args.slides, args.size, args.tissue, args.seed, args.cpus)
    main_dir = slides[0].parent
    names = ["srtn"] + [n for n in ("serial", "ratiopath") if n not in skip]
    pythons = {"srtn": sys.executable, "serial": sys.executable, "ratiopath": rp_python}
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    print(f"(a)/(b): {len(slides)} slides {args.size}x{args.size}, {args.repeats} repeat(s)", file=sys.stderr)
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no pipeline always goes first
        for name in order:
            results[name].append(_run(name, pythons[name], main_dir, runs / f"{name}-{rep}", args))

    mem: dict[str, dict[str, Any]] = {}
    if "memory" not in skip:
        big = ensure_slides(cache, 10 * args.mem_slides, args.mem_size, args.tissue, args.seed + 1, args.cpus)
        small_list = slide_list(big[: args.mem_slides], cache / f"mem-{args.mem_slides}-of-{len(big)}.txt")
        print(f"(c): srtn on {args.mem_slides} vs {len(big)} slides {args.mem_size}x{args.mem_size}", file=sys.stderr)
        mem["small"] = _run("srtn", sys.executable, small_list, runs / "mem-small", args)
        mem["large"] = _run("srtn", sys.executable, big[0].parent, runs / "mem-large", args)

    phases = []
    if args.profile_slides:
        print(f"profiling srtn's per-slide work on {args.profile_slides} slides (in-process) ...", file=sys.stderr)
        prof_out = runs / "profile"
        phases = profile_srtn(slides[: args.profile_slides], prof_out)
        shutil.rmtree(prof_out, ignore_errors=True)

    total_s = time.perf_counter() - t_start
    saved = cache / f"tiling-results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    saved.write_text(
        json.dumps({"args": vars(args), "results": results, "mem": mem, "phases": phases, "total_s": total_s}, indent=1)
    )
    print(f"raw results: {saved} (re-render with --report {saved})", file=sys.stderr)
    print(_report(args, results, mem, phases, total_s))
    return 0


def _ok(r: dict[str, Any]) -> bool:
    return "failed" not in r


def _speedup_goals(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    """Goal rows (a): srtn against each baseline, on wall clock and as a load-independent CPU estimate."""
    goals: list[list[str]] = []
    for name in ("serial", "ratiopath"):
        label = f"(a) srtn slides/min vs {name}"
        pairs = [(s, b) for s, b in zip(results["srtn"], results.get(name, [])) if _ok(s) and _ok(b)]
        if name not in results:
            goals.append([label, "skipped", f">= {GOAL_SPEEDUP:g}x", "n/a"])
            continue
        if not pairs:
            goals.append([label, "failed to run", f">= {GOAL_SPEEDUP:g}x", "n/a"])
            continue
        ratios = [s["spm"] / b["spm"] for s, b in pairs]  # runs of the same round
        v = statistics.median(ratios)
        shown = f"{v:.2f}x" + (f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else "")
        if min(ratios) >= GOAL_SPEEDUP:
            verdict = "PASS"
        elif max(ratios) < GOAL_SPEEDUP:
            verdict = "FAIL"
        else:
            verdict = f"NOISY (median {'PASS' if v >= GOAL_SPEEDUP else 'FAIL'})"
        goals.append([label + ", wall clock", shown, f">= {GOAL_SPEEDUP:g}x", verdict])
        # Load-independent estimate: each pipeline's CPU-s/slide spread over the CPUs it can use
        # (serial: 1, Ray pipelines: --cpus), i.e. the speed-up on an otherwise idle machine if both kept
        # their CPUs busy; optimistic for srtn against serial (Ray never reaches 100%).
        par = 1 if name == "serial" else args.cpus
        s_cpu = statistics.median([s["cpu_s"] / s["slides"] for s, _ in pairs])
        b_cpu = statistics.median([b["cpu_s"] / b["slides"] for _, b in pairs])
        est = (b_cpu / par) / (s_cpu / args.cpus)
        goals.append(
            [
                f"{label}, CPU-based estimate for {args.cpus} idle CPUs",
                f"{est:.2f}x",
                f">= {GOAL_SPEEDUP:g}x",
                "PASS" if est >= GOAL_SPEEDUP else "FAIL",
            ]
        )
    return goals


def _report(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, Any]]],
    mem: dict[str, dict[str, Any]],
    phases: list[tuple[str, float]],
    total_s: float,
) -> str:
    out = [
        f"\n## Tiling benchmark ({'--quick' if args.quick else 'full'})\n",
        f"{args.slides} synthetic slides {args.size}x{args.size} (~{args.tissue:.0%} tissue, 3 of 4 Aperio SVS, "
        f"1 of 4 generic TIFF), tiles 256 at level 0, same filters, <= {KEEP} kept per slide, LR x4/x8. "
        f"srtn and ratiopath: Ray local, {args.cpus} CPUs, started and warmed before the timer, workers at "
        f"nice {getattr(args, 'worker_nice', 0)} like the serial loop. "
        f"{args.repeats} repeat(s), interleaved; with several repeats: median (min-max). Machine shared: "
        f"wall times are noisy, ratios come from the same run.\n",
    ]
    rows = []
    srtn_ok = [r for r in results["srtn"] if _ok(r)]
    srtn_spm = statistics.median([r["spm"] for r in srtn_ok]) if srtn_ok else float("nan")
    srtn_cpu = statistics.median([r["cpu_s"] / r["slides"] for r in srtn_ok]) if srtn_ok else float("nan")
    for name, rs in results.items():
        ok = [r for r in rs if _ok(r)]
        if not ok:
            rows.append([name, "failed: " + rs[0].get("failed", "?")] + [""] * 8)
            continue
        spm = [r["spm"] for r in ok]
        dec = statistics.median([r["decoded"] / max(1, r["kept"]) for r in ok])
        cpu = statistics.median([r["cpu_s"] / r["slides"] for r in ok])
        rows.append(
            [
                name,
                _spread([r["seconds"] for r in ok]),
                _spread(spm),
                f"{srtn_spm / statistics.median(spm):.2f}x" if name != "srtn" else "-",
                f"{statistics.median([r['kept'] for r in ok]):.0f}",
                f"{dec:.2f}",
                f"{cpu:.2f}",
                f"{cpu / srtn_cpu:.2f}x" if name != "srtn" else "-",
                f"{statistics.median([r['peak_pss_mib'] for r in ok]):.0f}",
                ", ".join(f"{r['load'][0]:.0f}-{r['load'][1]:.0f}" for r in ok),
            ]
        )
    out.append(
        markdown_table(
            [
                "pipeline",
                "timed s",
                "slides/min",
                "srtn speed-up vs it",
                "tiles kept",
                "level-0 decodes/kept",
                "CPU-s/slide",
                "its CPU-s/slide over srtn's",
                "peak PSS MiB",
                "load avg (start-end)",
            ],
            rows,
        )
    )
    out.append(
        "\nCPU-s/slide: CPU time of the whole process tree inside the timed region (Ray's own processes "
        "included), per slide; unlike wall time it hardly depends on other load on the machine. "
        "Load avg: the machine's 1-minute load average when each run started and ended "
        f"({os.cpu_count()} CPUs here).\n"
    )

    goals = _speedup_goals(args, results)
    if srtn_ok:
        r = srtn_ok[0]
        v = r["decoded"] / max(1, r["kept"])
        goals.append(
            [
                "(b) srtn level-0 decodes per kept tile",
                f"{v:.2f} ({r['decoded']}/{r['kept']})",
                f"<= {GOAL_DECODES:g}",
                "PASS" if v <= GOAL_DECODES else "FAIL",
            ]
        )
    if mem and all(_ok(m) for m in mem.values()):
        s, b = mem["small"], mem["large"]
        v = b["peak_pss_mib"] / s["peak_pss_mib"]
        goals.append(
            [
                f"(c) srtn peak PSS, {b['slides']} vs {s['slides']} slides {args.mem_size}px",
                f"{v:.2f}x ({b['peak_pss_mib']:.0f} / {s['peak_pss_mib']:.0f} MiB)",
                f"<= {GOAL_MEMORY:g}x",
                "PASS" if v <= GOAL_MEMORY else "FAIL",
            ]
        )
    elif mem:
        goals.append(["(c) srtn peak memory", "failed to run", f"<= {GOAL_MEMORY:g}x", "n/a"])
    out.append("\n" + markdown_table(["goal", "measured", "target", "result"], goals, "lrrc"))

    if mem and all(_ok(m) for m in mem.values()):
        out.append("\nMemory runs (srtn, whole process tree, sampled every 0.2 s):\n")
        out.append(
            markdown_table(
                ["slides", "timed s", "slides/min", "peak PSS MiB", "peak RSS-sum MiB", "processes", "CPU-s"],
                [
                    [
                        m["slides"],
                        f"{m['seconds']:.1f}",
                        f"{m['spm']:.1f}",
                        f"{m['peak_pss_mib']:.0f}",
                        f"{m['peak_rss_mib']:.0f}",
                        m["procs"],
                        f"{m['cpu_s']:.0f}",
                    ]
                    for m in (mem["small"], mem["large"])
                ],
            )
        )

    if srtn_ok:
        r = srtn_ok[0]
        busy = sum(r["task_seconds"])
        out.append(
            f"\nsrtn, first run: {r['grid']} grid tiles, {r['candidates']} tissue candidates, {r['decoded']} decoded, "
            f"{r['kept']} kept; per-slide task time {busy:.1f} s in total (median "
            f"{statistics.median(r['task_seconds']):.2f} s), {r['seconds']:.1f} s wall on {args.cpus} CPUs: "
            f"slide tasks kept the CPUs {busy / (r['seconds'] * args.cpus):.0%} busy; Ray start + warm-up "
            f"(untimed) {r['ray_start_s']:.1f} s."
        )
    cpu_rows = []
    roles = ("root", "ray workers", "ray internal actors", "other")
    for name, rs in results.items():
        ok = [r for r in rs if _ok(r)]
        if not ok:
            continue
        par = 1 if name == "serial" else args.cpus
        cpu_rows.append(
            [
                name,
                f"{statistics.median([r['cpu_s'] for r in ok]):.1f}",
                f"{statistics.median([r['cpu_s'] / r['slides'] for r in ok]):.2f}",
                *(f"{statistics.median([r['cpu_roles'].get(k, 0.0) for r in ok]):.1f}" for k in roles),
                f"{statistics.median([r['cpu_s'] / (r['seconds'] * par) for r in ok]):.0%} of {par}",
            ]
        )
    if cpu_rows:
        out.append(
            "\nCPU seconds inside the timed region (median over rounds; sampled from /proc). root: the driver (for "
            "serial, the whole loop); ray workers: the slide/tile tasks; ray internal actors: Ray Data's "
            "_StatsActor and _AutoscalingCoordinatorActor; other: gcs_server, raylet, Ray's agents:\n"
        )
        out.append(markdown_table(["pipeline", "CPU-s", "CPU-s/slide", *roles, "CPU use"], cpu_rows))
    if phases:
        total = phases[-1][1]
        out.append(
            f"\nWhere srtn's per-slide work goes (cProfile of process_slide in one process, no Ray, "
            f"{args.profile_slides} slides, CPU seconds; cProfile inflates Python-heavy parts a little):\n"
        )
        out.append(
            markdown_table(["phase", "seconds", "share"], [[n, f"{s:.2f}", f"{s / total:.0%}"] for n, s in phases])
        )
    out.append(f"\nBenchmark wall time {total_s / 60:.1f} min.")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
