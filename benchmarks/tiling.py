"""`srtn tile` against the competent alternatives, on the same slides and CPUs, timed as a user waits.

Methods (each in its own fresh process, on the same slides, `--cpus` CPUs, the same cap of 100 tiles per slide,
the seed filters of configs/data/tcga_kirc_seed.yaml, LR x4/x8 Lanczos, PNG; see benchmarks/tiling_workers.py):

  srtn        `srtn tile --config configs/data/tcga_kirc_seed.yaml` as a user runs it (the CLI in a subprocess,
              Ray start-up and shutdown INCLUDED); its fixed costs are measured apart by the `raystart` probe.
  srtn-noray  srtn's own per-slide work (`srtn.data.tile_job.process_slide`) in a multiprocessing.Pool(cpus).
  srtn-empty  `srtn tile` as srtn runs it, but every slide's work replaced by nothing (a worker's import of the
              tiling code and the status record): Ray's floor around the slides. With srtn-noray it bounds what
              srtn / srtn-noray can reach with Ray in the loop (the report's "limit" rows).
  pool2       the original-style loop (every level-0 tile decoded) over the slides in a multiprocessing.Pool(cpus).
  serial      the same loop in one process (the original scripts).
  ratiopath   ratiopath's current documented mask-first Ray Data pipeline (benchmarks/tiling_ratiopath.py), in
              its own Python 3.12 venv (runs/bench/ratiopath-venv312, see benchmarks/README.md).

Cases (`--only` picks some; estimates are for the full run on 2 idle CPUs, slides already generated):

  raystart  srtn's fixed costs, a fresh process per round                                       ~0.5 min
  floor     per-kept-tile floor in one process, small and Aperio-like slides                     ~0.5 min
  aperio    32 Aperio-like slides 20000x15000: all five methods and srtn-empty                   ~12 min
  count     8 / 32 / 128 small slides 8192x8192: srtn, srtn-noray, srtn-empty, pool2 (serial, ratiopath
            at 32)                                                                               ~16 min
  size      4 Aperio-like slides of 8k / 20k / 40k: srtn vs pool2                                 ~4 min
  whole     one 20k and one 40k slide cut whole (`max_tiles_per_slide: null`) on 2 cores vs 1 core  ~4 min
            (srtn-1cpu: the process tree pinned to one core, Ray told 1 CPU, so one task cuts the slide);
            srtn-1slot, Ray told 1 CPU on 2 cores, is the measure of earlier runs (Ray's processes had a
            core free)
  memory    peak PSS of whole-slide extraction, 20k vs 40k slide (reuses whole's 2-CPU runs)     -

Every round runs a case's methods in a rotating order (`--repeats`), after reading every slide file once
(the same page-cache warm-up for all); each venv starts Ray once, untimed, before the first round. All run at
nice 0, Ray workers too (`RAY_worker_niceness`); Ray gets exactly `--cpus` CPUs (`RAY_OVERRIDE_RESOURCES`) and
every process is pinned to `--cpus` cores when the machine has more.

    python benchmarks/tiling.py                    # full run, about 30 min (plus slide generation the first time)
    python benchmarks/tiling.py --quick            # tiny slides, a few minutes
    python benchmarks/tiling.py --only aperio,whole --repeats 3
    python benchmarks/tiling.py --report benchmarks/results/tiling-<time>.json   # re-print a saved run

Slides are generated once into runs/bench/slides-<params>/ (a Pool(2) of `srtn.synth.tcga.write_tcga_slide`).
A full run saves benchmarks/results/tiling-<UTC time>.json (git sha, versions incl. ratiopath's, load average);
`--quick` saves runs/bench/tiling-quick-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _common import environment, run_measured, save_result  # noqa: E402
from tiling_report import METHODS, render  # noqa: E402
from tiling_slides import SlideSet, ensure_slides, slide_list, warm_page_cache  # noqa: E402
from tiling_workers import CONFIG, KEEP, SCALES, TILE  # noqa: E402

CACHE = REPO / "runs" / "bench"
RATIOPATH_PYTHON = CACHE / "ratiopath-venv312" / "bin" / "python"
SRTN = Path(sys.executable).with_name("srtn")
CASES = ("raystart", "floor", "aperio", "count", "size", "whole", "memory")


# ------------------------------------------------------------------------------------------- plan
def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Slide sets and sweep points of this run (full or --quick)."""
    if args.quick:
        small, counts, main = (2048, 2048), (2, 4, 8), 4
        aperio, n_aperio = (4000, 3000), 4
        sizes, n_size, big = [(2000, 1500), (4000, 3000), (8000, 6000)], 2, (8000, 6000)
    else:
        small, counts, main = (8192, 8192), tuple(args.counts), args.main_count
        aperio, n_aperio = (20000, 15000), args.aperio_slides
        sizes, n_size, big = [(8192, 6144), (20000, 15000), (40000, 30000)], args.size_slides, (40000, 30000)
    ap = {"layout": "aperio", "tissue": args.aperio_tissue, "fmt": "svs"}
    return {
        "small": [SlideSet(n, *small, tissue=args.tissue) for n in counts],
        "small_main": main,
        "aperio": SlideSet(n_aperio, *aperio, **ap),
        "size": [SlideSet(n_size, w, h, **ap) for w, h in sizes],
        "whole": SlideSet(1, *aperio, **ap),
        "memory": [SlideSet(1, *aperio, **ap), SlideSet(1, *big, **ap)],
    }


def prepare(args: argparse.Namespace, p: dict[str, Any]) -> None:
    """Generate every slide set the chosen cases need before any timing, largest first: a smaller set of the
    same parameters is then a prefix of it and needs no slides of its own."""
    need: list[SlideSet] = []
    for case in args.cases:
        need += {
            "aperio": [p["aperio"]],
            "count": p["small"],
            "size": p["size"],
            "whole": [p["whole"], p["memory"][1]],
            "memory": p["memory"],
            "floor": [p["aperio"], *(s for s in p["small"] if s.n == p["small_main"])],
            "raystart": [p["whole"]],
        }[case]
    for s in sorted(set(need), key=lambda s: -s.n):
        _paths(args, s)


def _paths(args: argparse.Namespace, s: SlideSet) -> tuple[list[Path], Path]:
    """The slides of `s` (a prefix of a larger generated set when there is one) and their `.txt` list."""
    paths = ensure_slides(Path(args.cache), s, procs=args.gen_procs)
    return paths, slide_list(paths, Path(args.cache) / "lists" / f"{s.key()}.txt")


# ------------------------------------------------------------------------------------------- running
def _env(args: argparse.Namespace, cpus: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_worker_niceness=str(args.worker_nice))
    env["RAY_OVERRIDE_RESOURCES"] = json.dumps({"CPU": cpus})  # Ray's CPU count, whatever the machine has
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "platform")])  # ratiopath's workers import both
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray, never a cluster someone else started
    return env


def _command(method: str, inp: Path, out: Path, args: argparse.Namespace, cpus: int, extra: list[str]) -> list[str]:
    if method in ("srtn", "srtn-1cpu", "srtn-1slot"):
        sets = [f"input={inp}", f"output={out}", *extra]
        return [str(SRTN), "tile", "--config", str(CONFIG), *(a for s in sets for a in ("--set", s))]
    io = ["--input", str(inp), "--output", str(out), "--cpus", str(cpus)]
    if method == "ratiopath":
        return [str(args.ratiopath_python), str(HERE / "tiling_ratiopath.py"), *io]
    name = {"srtn-noray": "noray", "srtn-empty": "empty"}.get(method, method)
    sets = [a for s in extra for a in ("--set", s)]
    return [sys.executable, str(HERE / "tiling_workers.py"), name, *io, *sets]


def _pinned(cmd: list[str], cores: int) -> list[str]:
    """`cmd` on the first `cores` cores (its whole process tree: Ray's processes inherit the affinity)."""
    if (os.cpu_count() or 1) > cores and shutil.which("taskset"):
        return ["taskset", "-c", f"0-{cores - 1}", *cmd]
    return cmd


def run_one(
    method: str,
    inp: Path,
    n: int,
    args: argparse.Namespace,
    *,
    case: str,
    label: str,
    rep: int,
    cpus: int | None = None,
    extra: list[str] | None = None,
    dump: Path | None = None,
) -> dict[str, Any]:
    """One method on one slide list, in a fresh process tree sampled for CPU and PSS; its record."""
    cpus = cpus or args.cpus
    out = Path(args.cache) / "out" / f"{case}-{method}-{rep}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = _command(method, inp, out, args, cpus, extra or [])
    if dump is not None and method in ("serial", "pool2", "ratiopath"):
        cmd += ["--dump", str(dump)]
    print(
        f"  [{case}] {label}: {method} (round {rep + 1}, load {os.getloadavg()[0]:.1f}) ...",
        file=sys.stderr,
        flush=True,
    )
    load0, t_spawn = os.getloadavg()[0], time.time()
    cores = args.cpus if method == "srtn-1slot" else cpus  # srtn-1slot: Ray told 1 CPU, the machine's cores
    m = run_measured(_pinned(cmd, cores), env=_env(args, cpus), timeout=args.timeout)
    r: dict[str, Any] = {"case": case, "set": label, "method": method, "rep": rep, "cpus": cpus, "slides": n}
    r |= {
        "wall_s": m.wall_s,
        "cpu_s": m.stats.cpu_s,
        "cpu_roles": m.stats.cpu_by_role,
        "load": (load0, os.getloadavg()[0]),
    }
    r |= {"peak_pss_mib": m.stats.peak_pss_mib, "peak_rss_mib": m.stats.peak_rss_mib, "procs": m.stats.peak_procs}
    r["memory_samples"] = m.stats.memory_samples
    if m.returncode != 0:
        tail = "\n".join((m.stderr or m.stdout).strip().splitlines()[-20:])
        print(f"    FAILED (exit {m.returncode}):\n{tail}", file=sys.stderr, flush=True)
        r["failed"] = f"exit {m.returncode}: {tail.splitlines()[-1] if tail else ''}"
        return r
    res = m.result
    r |= {k: v for k, v in res.items() if not k.startswith("t_")}
    if "t_ready" in res:
        r |= {"startup_s": res["t_ready"] - t_spawn, "work_s": res["t_done"] - res["t_ready"]}
    if "t_first_item" in res:  # srtn-empty: when its first item ran, how long all ran, what came after the last
        r["first_item_s"] = res["t_first_item"] - t_spawn
        r["items_span_s"] = res["t_last_item"] - res["t_first_item"]
        r["tail_s"] = m.wall_s - (res["t_last_item"] - t_spawn)
    if method.startswith("srtn") and method not in ("srtn-noray", "srtn-empty"):
        r |= _srtn_outcome(out)
    if method in ("srtn", "ratiopath") and dump is not None:
        r["kept_set"] = _kept_set(out, method)
    print(
        f"    {r['wall_s']:.1f} s, {r.get('kept', '?')} kept, CPU {r['cpu_s']:.0f} s, peak PSS "
        f"{r['peak_pss_mib']:.0f} MiB",
        file=sys.stderr,
        flush=True,
    )
    shutil.rmtree(out, ignore_errors=True)
    return r


def _srtn_outcome(out: Path) -> dict[str, Any]:
    """Counts from `srtn tile`'s manifest."""
    sources = json.loads((out / "_manifest.json").read_text())["sources"]
    keys = {"kept": "kept", "decoded": "decoded", "candidates": "tissue_candidates", "grid": "grid_tiles"}
    r: dict[str, Any] = {k: sum(s.get(v, 0) for s in sources) for k, v in keys.items()}
    r["done"] = sum(s["status"] == "done" for s in sources)
    r["task_seconds"] = [s.get("seconds", 0.0) for s in sources]
    r["tasks"] = sum(int(s.get("regions") or 1) for s in sources)  # region tasks of slides cut whole
    return r


def _kept_set(out: Path, method: str) -> dict[str, list[tuple[int, int]]]:
    """{slide file name: kept level-0 corners} from srtn's shards or ratiopath's Parquet."""
    import pyarrow.parquet as pq

    kept: dict[str, list[tuple[int, int]]] = {}
    if method == "srtn":
        sources = json.loads((out / "_manifest.json").read_text())["sources"]
        names = {s["source_id"]: Path(s["uri"]).name for s in sources}
        for f in out.glob("split=*/*.parquet"):
            t = pq.read_table(f, columns=["source_id", "x", "y"]).to_pydict()
            for sid, x, y in zip(t["source_id"], t["x"], t["y"], strict=True):
                kept.setdefault(names[sid], []).append((x, y))
    else:
        for f in (out / "pairs").rglob("*.parquet"):
            t = pq.read_table(f, columns=["path", "tile_x", "tile_y"]).to_pydict()
            for p, x, y in zip(t["path"], t["tile_x"], t["tile_y"], strict=True):
                kept.setdefault(Path(p).name, []).append((x, y))
    return kept


def check_kept(label: str, paths: list[Path], recs: list[dict[str, Any]], dumps: dict[str, Path]) -> list[dict]:
    """srtn's (and ratiopath's) kept set against the serial loop's passing set: kept tiles that pass the filters
    there, and the share of passing tiles each tissue mask excludes (srtn: not a candidate of its own plan)."""
    from srtn.config.base import load_config
    from srtn.config.tile import TileConfig
    from srtn.data.tile_slide import opened, plan_slide, source_id_for

    base = next((dumps[m] for m in ("serial", "pool2") if m in dumps and dumps[m].exists()), None)
    if base is None:
        return []
    passing = {k: {tuple(p) for p in v} for k, v in json.loads(base.read_text()).items()}
    n_pass = sum(len(v) for v in passing.values())
    cfg = load_config(TileConfig, CONFIG, ["input=x", "output=x"])
    out = []
    for r in recs:
        kept = {k: {tuple(p) for p in v} for k, v in r.pop("kept_set", {}).items()}
        n_kept = sum(len(v) for v in kept.values())
        inside = sum(len(v & passing.get(k, set())) for k, v in kept.items())
        if r["method"] == "srtn":
            excluded = 0
            for p in paths:
                with opened(str(p)) as reader:
                    cands = set(plan_slide(reader, source_id=source_id_for(str(p)), cfg=cfg).candidates)
                excluded += len(passing.get(p.name, set()) - cands)
        else:
            rp = {k: {tuple(x) for x in v} for k, v in json.loads(dumps["ratiopath"].read_text()).items()}
            excluded = sum(len(v - rp.get(k, set())) for k, v in passing.items())
        out.append(
            {
                "set": label,
                "method": r["method"],
                "kept": n_kept,
                "kept_in_passing": inside / max(n_kept, 1),
                "passing": n_pass,
                "mask_excluded": excluded / max(n_pass, 1),
            }
        )
    return out


# ------------------------------------------------------------------------------------------- cases
def run_methods(
    case: str,
    s: SlideSet,
    methods: list[str],
    args: argparse.Namespace,
    res: dict[str, Any],
    *,
    extra: dict[str, list[str]] | None = None,
    cpus: dict[str, int] | None = None,
    check: bool = False,
) -> None:
    """`methods` on the slides of `s`, `--repeats` interleaved rounds in a rotating order."""
    paths, inp = _paths(args, s)
    methods = [m for m in methods if m not in args.skip_methods]
    dumps = {m: Path(args.cache) / "out" / f"passing-{case}-{m}.json" for m in ("serial", "pool2", "ratiopath")}
    for d in dumps.values():
        d.unlink(missing_ok=True)  # a check uses only this run's sets
    for rep in range(args.repeats):
        warm_page_cache(paths)
        order = methods[rep % len(methods) :] + methods[: rep % len(methods)]
        recs = []
        for m in order:
            dump = dumps.get(m, Path(os.devnull)) if check and rep == 0 else None
            r = run_one(
                m,
                inp,
                len(paths),
                args,
                case=case,
                label=s.label(),
                rep=rep,
                cpus=(cpus or {}).get(m),
                extra=(extra or {}).get(m),
                dump=dump,
            )
            r["width"], r["height"] = s.width, s.height
            res["runs"].append(r)
            recs.append(r)
        if check and rep == 0:
            with_sets = [r for r in recs if "kept_set" in r]
            res["checks"] += check_kept(s.label(), paths, with_sets, {m: d for m, d in dumps.items() if d.exists()})


def case_aperio(args: argparse.Namespace, p: dict[str, Any], res: dict[str, Any]) -> None:
    res["sets"]["aperio_main"] = p["aperio"].label()
    methods = ["serial", "pool2", "ratiopath", "srtn-noray", "srtn", "srtn-empty"]
    run_methods("aperio", p["aperio"], methods, args, res, check=True)


def case_count(args: argparse.Namespace, p: dict[str, Any], res: dict[str, Any]) -> None:
    for s in p["small"]:
        main = s.n == p["small_main"]
        if main:
            res["sets"]["small_main"] = s.label()
        methods = ["srtn", "srtn-noray", "srtn-empty", "pool2"] + (["serial", "ratiopath"] if main else [])
        run_methods("count", s, methods, args, res, check=main)


def case_size(args: argparse.Namespace, p: dict[str, Any], res: dict[str, Any]) -> None:
    for s in p["size"]:
        run_methods("size", s, ["srtn", "pool2"], args, res)


def _whole_sets(args: argparse.Namespace) -> list[str]:
    """Whole-slide extraction: every passing tile; `--region-tiles` candidates per region task (--quick: 16, so
    a tiny slide still makes several region tasks; else the config's default unless given)."""
    tiles = args.region_tiles or (16 if args.quick else 0)
    return ["max_tiles_per_slide=null"] + ([f"execution.region_tiles={tiles}"] if tiles else [])


def case_whole(args: argparse.Namespace, p: dict[str, Any], res: dict[str, Any]) -> None:
    """One slide cut whole on 2 CPUs vs 1: the 20k slide (the goal's), and the 40k slide of the memory case (four
    times the work for the same fixed cost: how the ratio grows with the slide)."""
    res["sets"]["whole"] = p["whole"].label()
    res["sets"]["whole_large"] = p["memory"][1].label()
    sets = _whole_sets(args)
    for s in (p["whole"], p["memory"][1]):
        run_methods(
            "whole",
            s,
            ["srtn", "srtn-1cpu", "srtn-1slot"],
            args,
            res,
            extra={"srtn": sets, "srtn-1cpu": sets, "srtn-1slot": sets},
            cpus={"srtn-1cpu": 1, "srtn-1slot": 1},
        )


def case_memory(args: argparse.Namespace, p: dict[str, Any], res: dict[str, Any]) -> None:
    small, large = p["memory"]
    res["sets"] |= {"memory_small": small.label(), "memory_large": large.label()}
    for s in (small, large):
        done = [r for r in res["runs"] if (r["case"], r["set"], r["method"]) == ("whole", s.label(), "srtn")]
        if done:  # the whole case's 2-CPU runs of this slide are these measurements
            res["runs"] += [r | {"case": "memory", "reused": True} for r in done]
        else:
            run_methods("memory", s, ["srtn"], args, res, extra={"srtn": _whole_sets(args)})


def case_floor(args: argparse.Namespace, p: dict[str, Any], res: dict[str, Any]) -> None:
    main_small = next(s for s in p["small"] if s.n == p["small_main"])
    for s in (main_small, p["aperio"]):
        paths, _ = _paths(args, s)
        inp = slide_list(paths[:2], Path(args.cache) / "lists" / f"floor-{s.key()}.txt")
        warm_page_cache(paths[:2])
        r = run_one("floor", inp, 0, args, case="floor", label=s.label(), rep=0)
        if "failed" not in r:
            res["floors"][s.label()] = {"tiles": r["tiles"], "wall_s": r["phase_wall_s"], "cpu_s": r["phase_cpu_s"]}


def case_raystart(args: argparse.Namespace, p: dict[str, Any], res: dict[str, Any]) -> None:
    _, inp = _paths(args, p["whole"])
    for rep in range(args.repeats):
        res["runs"].append(run_one("raystart", inp, 0, args, case="raystart", label="-", rep=rep))


CASE_FUNCS = {
    "raystart": case_raystart,
    "floor": case_floor,
    "aperio": case_aperio,
    "count": case_count,
    "size": case_size,
    "whole": case_whole,
    "memory": case_memory,
}


# ------------------------------------------------------------------------------------------- main
def check_config() -> None:
    """The baselines copy these settings of the config srtn runs with: stop if it changed."""
    from srtn.config.base import load_config
    from srtn.config.tile import TileConfig
    from srtn.vocab import QualityThresholds

    cfg = load_config(TileConfig, CONFIG, ["input=x", "output=x"])
    same = (
        cfg.filters.thresholds() == QualityThresholds()
        and (cfg.tiles.size, cfg.tiles.level, cfg.tiles.step, cfg.tiles.mpp) == (TILE, 0, TILE, None)
        and cfg.max_tiles_per_slide == KEEP
        and tuple(cfg.lr.scales) == SCALES
        and cfg.lr.method == "lanczos"
        and cfg.tissue.min_fraction == 0.5
    )
    if not same:
        raise SystemExit(f"{CONFIG} no longer matches this benchmark's baselines (filters, tiles, cap, LR): update it")


def warm_up(args: argparse.Namespace) -> dict[str, Any]:
    """Start Ray once in each venv (untimed), so no method pays the machine's first-ever Ray start; ratiopath's
    versions."""
    env = _env(args, args.cpus)
    code = "import ray; ray.init(address='local', num_cpus=1, logging_level='ERROR'); ray.shutdown()"
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    if "ratiopath" in args.skip_methods:
        return {}
    subprocess.run(
        [str(args.ratiopath_python), "-c", "import ratiopath.tiling, ratiopath.masks; " + code],
        env=env,
        capture_output=True,
        timeout=300,
    )
    out = subprocess.run(
        [str(args.ratiopath_python), str(HERE / "tiling_ratiopath.py"), "--versions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-300:]}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny slides: a few minutes (for development)")
    p.add_argument("--only", default="", help=f"comma list of cases to run ({', '.join(CASES)}); default all")
    p.add_argument("--skip", default="", help="comma list of methods to leave out, e.g. ratiopath,serial")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds per case (rotating order; default 1)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs every method gets (default 2)")
    p.add_argument("--aperio-slides", type=int, default=32, help="Aperio-like 20k slides of the main case (32)")
    p.add_argument("--counts", default="8,32,128", help="small-slide counts of the sweep (default 8,32,128)")
    p.add_argument("--main-count", type=int, default=32, help="the count where serial and ratiopath run too (32)")
    p.add_argument("--size-slides", type=int, default=4, help="slides per point of the size sweep (default 4)")
    p.add_argument(
        "--region-tiles", type=int, default=0, help="whole slide: execution.region_tiles (0: the config's; --quick 16)"
    )
    p.add_argument("--tissue", type=float, default=0.4, help="tissue fraction of the small slides (0.4)")
    p.add_argument("--aperio-tissue", type=float, default=0.35, help="tissue fraction of Aperio-like slides (0.35)")
    p.add_argument("--worker-nice", type=int, default=0, help="niceness of Ray workers (Ray's default is 15)")
    p.add_argument("--gen-procs", type=int, default=2, help="processes generating slides (default 2)")
    p.add_argument("--timeout", type=float, default=1800.0, help="longest run of one method, seconds")
    p.add_argument("--ratiopath-python", default=str(RATIOPATH_PYTHON), help="python of the ratiopath venv")
    p.add_argument("--cache", default=str(CACHE), help="slides, lists and outputs (runs/bench)")
    p.add_argument(
        "--results", default="", help="folder for the result JSON (default benchmarks/results; --quick: --cache)"
    )
    p.add_argument("--report", metavar="JSON", help="print the tables of a saved result and exit")
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.only.split(",") if c.strip()] or list(CASES)
    bad = [c for c in args.cases if c not in CASES]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {', '.join(CASES)}")
    args.counts = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    if not args.quick and args.main_count not in args.counts:
        p.error(f"--main-count {args.main_count} is not one of --counts {args.counts}")
    args.skip_methods = {m.strip() for m in args.skip.split(",") if m.strip()}
    unknown = args.skip_methods - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.report:
        print(render(json.loads(Path(args.report).read_text())))
        return 0
    t0 = time.perf_counter()
    check_config()
    if "ratiopath" not in args.skip_methods and not Path(args.ratiopath_python).exists():
        print(
            f"no ratiopath venv at {args.ratiopath_python} (see benchmarks/README.md): ratiopath skipped",
            file=sys.stderr,
        )
        args.skip_methods.add("ratiopath")
    p = plan(args)
    env0 = environment()  # at the start: the checkout may move while a long run goes on
    prepare(args, p)
    res: dict[str, Any] = {
        "args": vars(args) | {"skip_methods": sorted(args.skip_methods)},
        "runs": [],
        "checks": [],
        "floors": {},
        "sets": {},
        "ratiopath_versions": warm_up(args),
    }
    res["case_seconds"] = {}
    for case in CASES:  # a fixed order: memory reuses whole's runs
        if case in args.cases:
            print(f"== {case} ==", file=sys.stderr, flush=True)
            t_case = time.perf_counter()
            CASE_FUNCS[case](args, p, res)
            res["case_seconds"][case] = time.perf_counter() - t_case
    res["total_s"] = time.perf_counter() - t0
    res["environment"] = env0  # save_result keeps a result's own environment (taken when the run began)
    folder = args.results or (str(args.cache) if args.quick else None)  # trial runs stay out of benchmarks/results
    res["saved"] = save_result(res, "tiling-quick" if args.quick else "tiling", folder=folder)
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
