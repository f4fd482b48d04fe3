"""What Ray adds to `srtn tile` around the per-slide work: each fixed cost the user waits for, measured.

Every case runs in a fresh Python process (`run_measured`: wall time, and CPU seconds of the whole process
tree -- driver, gcs_server, raylet, dashboard, agents, workers -- sampled from /proc every 0.2 s, so phases
shorter than that have coarse CPU figures; the end-to-end cases every 1 s, since the sampler's own CPU
would slow a Ray tree more than a Pool). Cases, repeated `--repeats` times in rotating order:

  cli         `import srtn.cli` + the tile config loaded and validated, then `import srtn.data.tile_job`
              (what `srtn tile` does before Ray); heavy modules found loaded are listed.
  ray-dash    `ray.init` local with the options `srtn.runtime.init_ray` passes (console quiet) and the
  ray-nodash  dashboard on / off; then: the first task per CPU (Ray prestarts one worker per CPU: are they
              used?); `import srtn.data.tile_job` timed inside each fresh worker (with the heavy modules
              it pulled in); plain tasks (`ray.remote` + `ray.wait`, 2 per CPU, trivial) on the warm
              workers; then the same items through Ray Data as `srtn.data.per_item.map_items` runs them
              (`from_items` + `map` + rows; the driver's `import ray.data`, Ray Data's internal actors and
              the workers' own Ray Data imports included); `ray.shutdown`.
  ray-cold    dashboard off; the prestarted workers are used up first (one task each with `max_calls=1`,
              after which they exit), so the timed first tasks each need a new worker: the worker start
              that prestarting saves.
  ray-ship    dashboard off, srtn's source folder forced into `runtime_env={"py_modules": [...]}` (what
              `init_ray` does when srtn is not installed, or on a cluster): zip + upload inside
              `ray.init`, then new workers that unpack it (the prestarted ones have no such env).
  data-cold   dashboard off; straight after `ray.init`, items through Ray Data as `map_items` runs them,
  data-warm   without / with its worker warm-up (`srtn.data.per_item._warm_workers`); how many of the
              workers that ran items started before Ray Data's internal actors (the prestarted ones).
  tile        `python -m srtn.cli tile` on `--slides` synthetic slides, end to end (the job as the user
              runs it: srtn as installed here, Ray started by `init_ray` as the code now does, shut down
              at exit).
  tile-base   the same with another srtn package first on PYTHONPATH (`--baseline DIR`, DIR/srtn): an
              earlier version, in the same rounds, e.g. `git archive HEAD platform/srtn | tar -x -C
              runs/bench/base` then `--baseline runs/bench/base/platform --cases tile tile-base pool`
              (inside the checkout, so the editable install covers it and nothing is shipped).
  pool        the same per-slide work (`srtn.data.tile_job.process_slide`: tile, shards, status records)
              in a `multiprocessing.Pool(--cpus)` without Ray, imports and config included.

Reported: median wall s, tree CPU s and the driver's own CPU s of each phase, and pool / tile (the share
of Ray-free time in srtn's end to end; issue 16's goal: >= 0.8 at 32 slides).

    .venv/bin/python benchmarks/ray_overhead.py                     # 3 rounds, 8 slides of 4096
    .venv/bin/python benchmarks/ray_overhead.py --slides 32 --size 8192 --cases tile pool
"""

from __future__ import annotations

import argparse
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

from _common import RESULT_MARKER, markdown_table, run_measured, save_result  # noqa: E402

CONFIG = REPO / "configs" / "data" / "tcga_kirc_seed.yaml"
HEAVY = ("torch", "mlflow", "pandas", "scipy", "skimage", "sklearn", "matplotlib", "PIL", "ray.data", "tifffile")
END_TO_END = ("tile", "tile-base", "pool")  # sampled every 1 s: the sampler's own CPU (about 0.1 core at
# 0.2 s over a Ray tree of 15 processes, on the same 2 cores) would otherwise slow srtn more than the Pool
CASES = ("cli", "ray-dash", "ray-nodash", "ray-cold", "ray-ship", "data-cold", "data-warm", "tile", "tile-base", "pool")


class Phases:
    """Named phases of a child: wall s, driver CPU s and epoch bounds (for the parent's tree CPU)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        e0, t0, c0 = time.time(), time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        row = {"phase": name, "wall": time.perf_counter() - t0, "driver_cpu": time.process_time() - c0}
        self.rows.append(row | {"e0": e0, "e1": time.time()})
        return out

    def emit(self) -> None:
        print(RESULT_MARKER + json.dumps({"phases": self.rows, "extra": self.extra}), flush=True)


def _heavy() -> list[str]:
    return [m for m in HEAVY if m in sys.modules]


def _since_boot() -> float:
    """Seconds since boot now (the clock of /proc's process start times)."""
    with open("/proc/uptime") as fh:
        return float(fh.read().split()[0])


def _proc_start() -> float:
    """When this process started, in seconds since boot."""
    with open("/proc/self/stat") as fh:
        ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


def _ray_data_actor_starts() -> list[float]:
    """Start times (s since boot) of Ray Data's internal actors among this driver's descendants."""
    hz, starts, todo = os.sysconf("SC_CLK_TCK"), [], [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as fh:
                start = int(fh.read().rsplit(")", 1)[1].split()[19]) / hz
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().startswith((b"ray::_StatsActor", b"ray::_AutoscalingCoordinator")):
                    starts.append(start)
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return starts


def _worker_info(item: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"pid": os.getpid(), "started": _proc_start()}


def _worker_import() -> dict[str, Any]:
    """`import srtn.data.tile_job` timed in this (fresh) worker, and the heavy modules it left loaded."""
    fresh = "srtn.data.tile_job" not in sys.modules
    before = set(_heavy())
    t0, c0 = time.perf_counter(), time.process_time()
    import srtn.data.tile_job  # noqa: F401

    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"pid": os.getpid(), "fresh": fresh, "wall": wall, "cpu": cpu, "added": sorted(set(_heavy()) - before)}


def _noop(item: dict[str, Any]) -> dict[str, Any]:
    return {"i": item["i"], "pid": os.getpid()}


# ------------------------------------------------------------------------------------------ child cases
def child_cli(args: argparse.Namespace, ph: Phases) -> None:
    def load() -> None:
        import srtn.cli  # noqa: F401
        from srtn.config.base import load_config
        from srtn.config.tile import TileConfig

        load_config(TileConfig, CONFIG, ["input=x", "output=x"])

    ph.run("import srtn.cli + config", load)
    ph.run("import srtn.data.tile_job (driver)", __import__, "srtn.data.tile_job")
    ph.extra["heavy_in_driver"] = _heavy()


def child_ray(args: argparse.Namespace, ph: Phases) -> None:
    sys.path.insert(0, str(REPO / "platform"))
    from srtn.console import ray_init_options

    ray = ph.run("import ray", __import__, "ray")
    kwargs: dict[str, Any] = ray_init_options() | {"num_cpus": args.cpus, "address": "local"}
    kwargs["include_dashboard"] = args.child == "ray-dash"
    if args.child == "ray-ship":
        kwargs["runtime_env"] = {"py_modules": [str(REPO / "platform" / "srtn")]}
    ph.run(f"ray.init ({args.child})", ray.init, **kwargs)
    init_end = _since_boot()
    info = ray.remote(num_cpus=1)(_worker_info)
    imp = ray.remote(num_cpus=1)(_worker_import)
    if args.child == "ray-cold":  # use up the prestarted workers: each exits after this one task
        once = ray.remote(num_cpus=1, max_calls=1)(_worker_info)
        ray.get([once.remote() for _ in range(args.cpus)])
        init_end = _since_boot()
    submit = _since_boot()
    first = ph.run("first task per CPU", lambda: ray.get([info.remote() for _ in range(args.cpus)]))
    ph.extra["prestarted"] = sum(w["started"] < init_end for w in first)
    ph.extra["worker_age_at_submit_s"] = sorted(round(submit - w["started"], 2) for w in first)
    ph.extra["worker_import"] = ph.run("worker import srtn.data.tile_job", ray.get, [imp.remote() for _ in first])
    if args.child not in ("ray-dash", "ray-nodash"):
        ph.run("ray.shutdown", ray.shutdown)
        return
    items = [{"i": i} for i in range(2 * args.cpus)]
    task = ray.remote(num_cpus=1)(_noop)

    def plain() -> None:
        refs = [task.remote(i) for i in items]
        ray.wait(refs, num_returns=1)
        ph.extra["plain_first_row"] = time.perf_counter() - t0
        ray.get(refs)

    t0 = time.perf_counter()
    ph.run("plain tasks (warm workers)", plain)

    def data() -> None:
        import ray.data

        from srtn.data.per_item import _per_item_execution

        with _per_item_execution():
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map(_noop, num_cpus=1)
            rows = iter(ds.iter_rows())
            next(rows)
            ph.extra["data_first_row"] = time.perf_counter() - t1
            list(rows)

    t1 = time.perf_counter()
    ph.run("Ray Data map (same items)", data)
    ph.run("ray.shutdown", ray.shutdown)


def child_data(args: argparse.Namespace, ph: Phases) -> None:
    """Ray Data straight after `ray.init`, as `map_items` runs it, with or without its worker warm-up."""
    sys.path.insert(0, str(REPO / "platform"))
    import ray

    from srtn.console import ray_init_options
    from srtn.data import per_item

    kwargs: dict[str, Any] = ray_init_options() | {"num_cpus": args.cpus, "address": "local"}
    ph.run("ray.init (no dashboard)", ray.init, include_dashboard=False, **kwargs)
    items = [{"i": i} for i in range(2 * args.cpus)]

    def data() -> list[dict[str, Any]]:
        if args.child == "data-warm":
            per_item._warm_workers(_worker_info)
        import ray.data

        with per_item._per_item_execution():
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map(_worker_info, num_cpus=1)
            return list(ds.iter_rows())

    rows = ph.run("Ray Data map, first dataset", data)
    actors = _ray_data_actor_starts()
    first = min(actors) if actors else float("inf")
    ph.extra["item_workers_before_actors"] = len({r["pid"] for r in rows if r["started"] <= first})
    ph.extra["item_workers"] = len({r["pid"] for r in rows})
    ph.run("ray.shutdown", ray.shutdown)


def child_pool(args: argparse.Namespace, ph: Phases) -> None:
    """`process_slide` over the slides in a Pool without Ray (a competent user's script)."""
    sys.path.insert(0, str(REPO / "platform"))

    def setup() -> tuple[Any, Any]:
        from functools import partial

        from srtn.config.base import load_config
        from srtn.config.tile import TileConfig
        from srtn.data.inputs import list_inputs
        from srtn.data.tile_job import process_slide
        from srtn.data.tile_slide import group_mode

        cfg = load_config(TileConfig, CONFIG, [f"input={args.input}", f"output={args.output}"])
        found = list_inputs(cfg.input, extensions=cfg.extensions, output=cfg.output)
        items = [{"uri": s.uri, "source_id": s.source_id} for s in found.slides]
        return partial(process_slide, cfg=cfg, group=group_mode(cfg, len(items))), items

    fn, items = ph.run("imports + config + listing", setup)

    def work() -> list[dict[str, Any]]:
        import multiprocessing

        with multiprocessing.Pool(args.cpus) as pool:
            return pool.map(fn, items, chunksize=1)

    records = ph.run("Pool map", work)
    ph.extra["kept"] = sum(r["kept"] for r in records)


def run_child(args: argparse.Namespace) -> int:
    ph = Phases()
    ph.extra["python_start_s"] = time.time() - args.spawned
    cases = {"cli": child_cli, "pool": child_pool, "data-cold": child_data, "data-warm": child_data}
    cases.get(args.child, child_ray)(args, ph)
    ph.emit()
    return 0


# ------------------------------------------------------------------------------------------ parent
def _slides(n: int, size: int) -> Path:
    sys.path.insert(0, str(REPO / "platform"))
    from srtn.synth import write_tcga_dataset

    folder = REPO / "runs" / "bench" / f"ray-overhead-slides-n{n}-{size}"
    done = folder.with_name(folder.name + ".complete")  # beside it: a file inside would be an input
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        write_tcga_dataset(folder, slides=n, seed=0, width=size, height=size, fmt="mixed")
        done.write_text("")
    return folder


def _one(case: str, args: argparse.Namespace, slides: Path | None) -> dict[str, Any]:
    out = REPO / "runs" / "bench" / f"ray-overhead-out-{case}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a fresh local instance, never someone's cluster
    env.pop("PYTHONPATH", None)  # srtn as installed in this environment (editable), as the user runs it
    if case == "tile-base":
        env["PYTHONPATH"] = str(Path(args.baseline).resolve())
    py = sys.executable
    if case in ("tile", "tile-base"):
        cmd = [py, "-m", "srtn.cli", "tile", "--config", str(CONFIG), "--set", f"input={slides}"]
        cmd += ["--set", f"output={out}", "--set", f"execution.concurrency={args.cpus}"]
    else:
        cmd = [py, __file__, "--child", case, "--cpus", str(args.cpus), "--spawned", str(time.time())]
        cmd += ["--input", str(slides), "--output", str(out)] if slides else []
    m = run_measured(cmd, env=env, timeout=900, interval=1.0 if case in END_TO_END else 0.2)
    if m.returncode != 0:
        raise SystemExit(f"{case} failed ({m.returncode}):\n{m.stderr[-3000:]}")
    phases = [
        {
            "phase": f"{case}: {p['phase']}",
            "wall": p["wall"],
            "cpu": sum(m.stats.cpu_between(p["e0"], p["e1"]).values()),
        }
        | {"driver_cpu": p["driver_cpu"]}
        for p in m.result.get("phases", [])
    ]
    total = {"phase": f"{case}: whole process", "wall": m.wall_s, "cpu": m.stats.cpu_s, "driver_cpu": float("nan")}
    return {"case": case, "phases": [*phases, total], "extra": m.result.get("extra", {})}


def _table(runs: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, float]]]:
    by: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for p in run["phases"]:
            agg = by.setdefault(p["phase"], {"wall": [], "cpu": [], "driver_cpu": []})
            for key in agg:
                agg[key].append(p[key])
    med = {k: {m: statistics.median(v[m]) for m in v} | {"n": len(v["wall"])} for k, v in by.items()}
    rows = [[k, f"{v['wall']:.2f}", f"{v['cpu']:.2f}", f"{v['driver_cpu']:.2f}", v["n"]] for k, v in med.items()]
    headers = ["case: phase", "wall s", "tree CPU s", "driver CPU s", "runs"]
    return markdown_table(headers, rows), med


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--slides", type=int, default=8)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--cases", nargs="+", choices=CASES, default=[c for c in CASES if c != "tile-base"])
    p.add_argument("--baseline", help="a folder holding another srtn package (for the tile-base case)")
    p.add_argument("--label", default="", help="a word saved with the result (e.g. before/after)")
    p.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    p.add_argument("--spawned", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return run_child(args)

    if "tile-base" in args.cases and not (args.baseline and (Path(args.baseline) / "srtn").is_dir()):
        p.error("tile-base needs --baseline DIR with DIR/srtn")
    slides = _slides(args.slides, args.size) if set(END_TO_END) & set(args.cases) else None
    print(f"load average before: {os.getloadavg()}", flush=True)
    runs: list[dict[str, Any]] = []
    for r in range(args.repeats):
        order = args.cases[r % len(args.cases) :] + args.cases[: r % len(args.cases)]
        for case in order:
            runs.append(_one(case, args, slides if case in END_TO_END else None))
            print(f"round {r + 1}: {case} {runs[-1]['phases'][-1]['wall']:.2f} s", file=sys.stderr, flush=True)
    table, med = _table(runs)
    print(table)
    result: dict[str, Any] = {"args": vars(args), "median": med, "runs": runs, "load_after": os.getloadavg()}
    pool = med.get("pool: whole process")
    for case in ("tile", "tile-base"):
        tile = med.get(f"{case}: whole process")
        if tile and pool:
            result[f"pool_over_{case}"] = pool["wall"] / tile["wall"]
            print(
                f"no-Ray Pool({args.cpus}) / srtn {case}, end to end: {pool['wall'] / tile['wall']:.2f} (goal >= 0.8)"
            )
    extras: dict[str, dict[str, Any]] = {}
    for run in runs:
        for key, value in run["extra"].items():
            extras.setdefault(run["case"], {}).setdefault(key, []).append(value)
    result["extras"] = extras
    for case, ex in extras.items():
        notes = {k: statistics.median(v) for k, v in ex.items() if k.endswith(("_row", "_start_s"))}
        for key in ("item_workers_before_actors", "item_workers"):
            if key in ex:
                notes[key] = ex[key]
        if "prestarted" in ex:
            notes["prestarted workers used"] = ex["prestarted"]
        if "worker_import" in ex:
            imports = [w for batch in ex["worker_import"] for w in batch]
            notes["fresh-worker import s"] = statistics.median(w["wall"] for w in imports)
            notes["modules it added"] = sorted({m for w in imports for m in w["added"]})
        if "heavy_in_driver" in ex:
            notes["heavy modules in driver"] = ex["heavy_in_driver"][0]
        print(f"{case}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in notes.items()))
    print(f"saved {save_result(result, 'ray-overhead' + (f'-{args.label}' if args.label else ''))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
