"""Whole-slide inference: `srtn predict` against the raw model forward, for one region and for a cohort.

Case `cohort` (the issue-18 goals): 8 synthetic slides, one reduced SRTN logged to a throw-away MLflow store
(loaded by URI, as users run it), x4, every tile through the model (`tissue.min_fraction=0`). Each run is its
own process, timed from its start (Python and Ray start-up, model loading included) to its exit, with the
CPU seconds of its whole process tree (driver, raylet, gcs, workers) sampled from /proc:

  cohort    ONE `srtn predict --set slides=DIR --set out_dir=OUT`: one Ray start, one pool of model actors
            (the model loaded once per actor), several slides in flight.
  serial    8 `srtn predict --slide S --out O` commands one after the other (what a cohort took before):
            8 Ray starts, 8 model loads.
  raw       the model's forward over the same tiles (every slide's plan: same tile size, overlap, batch), in
            one process with all CPU threads, tiles read before the timer: the compute-only ceiling.

Goals: cohort >= 1.5x the serial runs, and >= 0.7 of the raw forward (wall time, Ray start-up included).
Repeats are interleaved (round r runs the cases in rotated order), every process at the same niceness (Ray
workers at nice 0 through `RAY_worker_niceness`, like the raw process), and each run records the 1-minute
load average before and after. Results are saved as JSON (git commit, package versions, load averages)
under benchmarks/results/.

Case `region`: one 1024x1024 region (512 with --quick) of one slide, `predict_slide` in this process after
Ray is started and warmed, against the raw forward over the same tiles.

`--model-only --device cuda`: only the raw forward, on tiles rendered by the synthetic slide generator, in
this process without Ray, OpenSlide, MLflow or pydantic (a GPU machine has none of them): reports Mpx/s.

    python benchmarks/inference.py --case cohort --repeats 3          # 8 slides of 512x512
    python benchmarks/inference.py --case cohort --slide-size 384 --repeats 3
    python benchmarks/inference.py --case region [--quick]
    python benchmarks/inference.py --model-only --device cuda         # no Ray needed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "platform"))

from _common import RESULT_MARKER, environment, markdown_table, run_measured, save_result  # noqa: E402

GOAL_RAW, GOAL_SERIAL = 0.7, 1.5
SCALE = 4
RESULTS = HERE / "results"


# --------------------------------------------------------------------------- shared (no Ray)


def _model(args: argparse.Namespace) -> Any:
    import torch

    from srtn.models import build_model

    torch.manual_seed(0)
    return build_model("srtn", SCALE, n_feats=args.feats, n_blocks=args.blocks).eval()


def _plan(side: int, args: argparse.Namespace) -> Any:
    from srtn.infer.blending import TilePlan

    return TilePlan.build(level=0, downsample=1.0, origin=(0, 0), width=side, height=side,
                          tile_size=args.tile_size, overlap=args.overlap, scale=SCALE)  # fmt: skip


def _forward_seconds(model: Any, tiles: list[np.ndarray], batch_size: int, device: str) -> float:
    """Seconds of the model's forward (as the pipeline runs it: uint8 in, rounded uint8 out) over `tiles`."""
    import torch

    batches = [np.stack(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]
    model = model.to(device).eval()
    with torch.inference_mode():
        model(torch.rand(1, 3, 32, 32, device=device))  # warm-up (allocator, kernels)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for lr in batches:
            x = torch.from_numpy(lr).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            y = model(x).clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            del y
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def _rendered_tiles(side: int, slides: int, args: argparse.Namespace) -> list[np.ndarray]:
    """Every slide's plan tiles, rendered by the synthetic slide generator (numpy/OpenCV only: no OpenSlide)."""
    from srtn.synth.render import SyntheticSlide

    plan = _plan(side, args)
    tiles = []
    for seed in range(slides):
        source = SyntheticSlide(width=side, height=side, seed=seed, tissue_fraction=0.6)
        for i in range(plan.n_tiles):
            _, _, x, y = plan.tile(i)
            tiles.append(np.ascontiguousarray(source(x, y, plan.tile_w, plan.tile_h)))
    return tiles


def model_only(args: argparse.Namespace) -> int:
    """Raw forward only, no Ray: what a GPU machine without Ray can time."""
    import torch

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)
    tiles = _rendered_tiles(args.slide_size, args.slides, args)
    model = _model(args)
    seconds = [_forward_seconds(model, tiles, args.batch_size, device) for _ in range(args.repeats)]
    mpx = args.slides * args.slide_size**2 / 1e6
    result = {
        "case": "model-only", "device": device, "tiles": len(tiles), "lr_mpx": mpx, "seconds": seconds,
        "lr_mpx_per_s": mpx / statistics.median(seconds),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "ray_imported": "ray" in sys.modules, "env": environment(), "args": vars(args),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    _save(result, f"inference-model-only-{device}")
    return 0


def _save(result: dict[str, Any], stem: str) -> str:
    path = save_result(result, stem, folder=result.get("args", {}).get("results") or RESULTS)
    print(f"saved {path}", file=sys.stderr)
    return path


# --------------------------------------------------------------------------- cohort case


def _cohort_inputs(args: argparse.Namespace, store: Path) -> tuple[Path, str, str]:
    """8 synthetic slides (cached) and a throw-away MLflow store in `store` holding the benchmark's model."""
    import mlflow

    from srtn.models.serialization import log_sr_model
    from srtn.synth import write_tcga_dataset
    from srtn.track import fluent_tracking_uri

    cache = Path(args.cache) / f"inference-cohort-{args.slides}x{args.slide_size}"
    slides = cache / "slides"
    if len(list(slides.glob("*.svs"))) != args.slides:
        write_tcga_dataset(slides, slides=args.slides, seed=0, width=args.slide_size, height=args.slide_size,
                           fmt="svs", tissue_fraction=0.6)  # fmt: skip
    uri = f"sqlite:///{store / 'mlflow.db'}"
    with fluent_tracking_uri(uri):
        exp = mlflow.create_experiment("bench", artifact_location=(store / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            log_sr_model(_model(args), name="srtn")
    return slides, uri, f"runs:/{run.info.run_id}/srtn"


def _predict_cmd(model: str, uri: str, args: argparse.Namespace, *sets: str) -> list[str]:
    common = [f"model={model}", f"tracking.uri={uri}", "tissue.min_fraction=0", f"tile_size={args.tile_size}",
              f"overlap={args.overlap}", f"batch_size={args.batch_size}", f"actors={args.actors}",
              f"cpus_per_actor={args.cpus_per_actor}", "num_gpus=0", "progress=false", *sets]  # fmt: skip
    cmd = [sys.executable, "-m", "srtn.cli", "predict"]
    for s in common:
        cmd += ["--set", s]
    return cmd


def _run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    load0 = os.getloadavg()[0]
    m = run_measured(cmd, env=env, timeout=3600)
    if m.returncode != 0:
        raise RuntimeError(f"{cmd[3:6]} exited {m.returncode}:\n{m.stderr[-3000:]}")
    return {"wall_s": m.wall_s, "cpu_s": m.stats.cpu_s, "load_before": load0, "load_after": os.getloadavg()[0]}


def _cohort_case(slides: Path, uri: str, model: str, args: argparse.Namespace, env: dict, work: Path) -> dict:
    out = work / f"cohort-{time.time_ns()}"
    return _run(_predict_cmd(model, uri, args, f"slides={slides}", f"out_dir={out}"), env)


def _serial_case(slides: Path, uri: str, model: str, args: argparse.Namespace, env: dict, work: Path) -> dict:
    runs = [
        _run(_predict_cmd(model, uri, args, f"slide={s}", f"out={work / f'{s.stem}-{time.time_ns()}.tiff'}"), env)
        for s in sorted(slides.glob("*.svs"))
    ]
    return {
        "wall_s": sum(r["wall_s"] for r in runs), "cpu_s": sum(r["cpu_s"] for r in runs),
        "load_before": runs[0]["load_before"], "load_after": runs[-1]["load_after"],
        "per_slide_wall_s": [r["wall_s"] for r in runs],
    }  # fmt: skip


def _raw_case(slides: Path, uri: str, model: str, args: argparse.Namespace, env: dict, work: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--raw-worker", str(slides), "--feats", str(args.feats),
           "--blocks", str(args.blocks), "--tile-size", str(args.tile_size), "--overlap", str(args.overlap),
           "--batch-size", str(args.batch_size)]  # fmt: skip
    load0 = os.getloadavg()[0]
    m = run_measured(cmd, env=env, timeout=3600)
    if m.returncode != 0:
        raise RuntimeError(f"raw worker exited {m.returncode}:\n{m.stderr[-3000:]}")
    r = m.result
    return {"wall_s": r["seconds"], "cpu_s": r["cpu_s"], "process_wall_s": m.wall_s, "tiles": r["tiles"],
            "load_before": load0, "load_after": os.getloadavg()[0]}  # fmt: skip


def raw_worker(args: argparse.Namespace) -> int:
    """Subprocess of the raw case: read every slide's plan tiles (untimed), then time the forward."""
    import torch

    from srtn.data.slides import open_slide, read_rgb

    torch.set_num_threads(os.cpu_count() or 1)
    tiles = []
    for path in sorted(Path(args.raw_worker).glob("*.svs")):
        with open_slide(path) as s:
            plan = _plan(s.dimensions[0], args)
            tiles += [read_rgb(s, *plan.level0(*plan.tile(i)[2:]), 0, plan.tile_w, plan.tile_h)
                      for i in range(plan.n_tiles)]  # fmt: skip
    model = _model(args)
    cpu0 = time.process_time()
    seconds = _forward_seconds(model, tiles, args.batch_size, "cpu")
    print(RESULT_MARKER + json.dumps({"seconds": seconds, "cpu_s": time.process_time() - cpu0, "tiles": len(tiles)}))
    return 0


def cohort(args: argparse.Namespace) -> int:
    started = environment()  # the commit and load when the run began (a checkout may move during it)
    with tempfile.TemporaryDirectory(prefix="srtn-bench-mlflow-") as store:
        return _cohort_rounds(args, started, *_cohort_inputs(args, Path(store)))


def _cohort_rounds(args: argparse.Namespace, started: dict, slides: Path, uri: str, model: str) -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_worker_niceness=str(args.worker_nice))
    env.pop("RAY_ADDRESS", None)  # a local instance per run, as a user's command starts it
    cases = {"cohort": _cohort_case, "serial": _serial_case, "raw": _raw_case}
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory(prefix="srtn-bench-cohort-") as tmp:
        for r in range(args.repeats):
            names = list(cases)
            names = names[r % len(names) :] + names[: r % len(names)]  # interleaved, rotated each round
            for name in names:
                result = cases[name](slides, uri, model, args, env, Path(tmp))
                runs[name].append(result)
                print(f"  round {r + 1} {name}: {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} CPU-s "
                      f"(load {result['load_before']:.1f} -> {result['load_after']:.1f})", file=sys.stderr)  # fmt: skip
    report = _cohort_report(runs, args)
    result = {"case": "cohort", "args": vars(args), "runs": runs, "summary": report, "env": started}
    _save(result | {"load_avg_end": os.getloadavg()}, "inference-cohort")
    return 0


def _cohort_report(runs: dict[str, list[dict]], args: argparse.Namespace) -> dict[str, Any]:
    mpx = args.slides * args.slide_size**2 / 1e6
    paired = {
        "cohort_vs_serial": [s["wall_s"] / c["wall_s"] for c, s in zip(runs["cohort"], runs["serial"])],
        "cohort_vs_raw": [r["wall_s"] / c["wall_s"] for c, r in zip(runs["cohort"], runs["raw"])],
    }
    rows = []
    for name, label in (("cohort", "1 cohort command"), ("serial", f"{args.slides} single-slide commands"),
                        ("raw", "raw forward (1 process)")):  # fmt: skip
        wall = [r["wall_s"] for r in runs[name]]
        cpu = [r["cpu_s"] for r in runs[name]]
        rows.append([label, f"{statistics.median(wall):.1f} ({min(wall):.1f}-{max(wall):.1f})",
                     f"{statistics.median(cpu):.1f}", f"{mpx / statistics.median(wall):.4f}"])  # fmt: skip
    print(f"\nsrtn predict on a cohort: {args.slides} slides of {args.slide_size}x{args.slide_size} LR, SRTN "
          f"n_feats={args.feats} n_blocks={args.blocks} x{SCALE}, tiles {args.tile_size}/overlap {args.overlap}, "
          f"batch {args.batch_size}, {args.actors} actor(s) x {args.cpus_per_actor} CPU, {os.cpu_count()} CPUs, "
          f"median of {args.repeats} interleaved rounds\n")  # fmt: skip
    print(markdown_table(["run", "wall s (min-max)", "CPU s", "LR Mpx/s"], rows))
    verdicts = []
    for key, goal in (("cohort_vs_serial", GOAL_SERIAL), ("cohort_vs_raw", GOAL_RAW)):
        vals = paired[key]
        ok = "PASS" if all(v >= goal for v in vals) else "FAIL" if all(v < goal for v in vals) else "NOISY"
        verdicts.append([key.replace("_", " "), f"{statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})",
                         f">= {goal}", ok])  # fmt: skip
    print()
    print(markdown_table(["ratio (wall, paired by round)", "median (min-max)", "goal", "verdict"], verdicts))
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": v} for k, v in paired.items()}


# --------------------------------------------------------------------------- region case (one slide, in process)


def _region_slide(cache: Path, size: int) -> str:
    from srtn.synth import write_tcga_dataset

    folder = cache / f"inference-slide-{size}"
    existing = sorted(folder.glob("*.svs"))
    if existing:
        return str(existing[0])
    (path,) = write_tcga_dataset(folder, slides=1, seed=0, width=size, height=size, fmt="svs", tissue_fraction=0.6)
    return str(path)


def region(args: argparse.Namespace) -> int:
    import ray
    import torch

    from srtn.data.slides import open_slide, read_rgb
    from srtn.infer.predict import predict_slide
    from srtn.runtime import init_ray

    side = args.region or (512 if args.quick else 1024)
    slide = _region_slide(Path(args.cache), max(1024, 2 * side))
    reg = (side // 2, side // 2, side, side)
    model = _model(args)
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    init_ray(num_cpus=cpus)
    ray.get([ray.remote(lambda: None).remote() for _ in range(cpus)])  # workers up before any timer
    plan = _plan(side, args)
    with open_slide(slide) as s:
        tiles = [read_rgb(s, reg[0] + x, reg[1] + y, 0, plan.tile_w, plan.tile_h)
                 for _, _, x, y in (plan.tile(i) for i in range(plan.n_tiles))]  # fmt: skip
    variants = [
        ("raw forward (1 process)", {}),
        ("pipeline, 1 actor x all CPUs", {"actors": 1, "cpus_per_actor": cpus}),
    ]
    if cpus >= 2:
        variants.append((f"pipeline, {cpus} actors x 1 CPU", {"actors": cpus, "cpus_per_actor": 1}))
    seconds: dict[str, list[float]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory(prefix="srtn-bench-") as tmp:
        for r in range(args.repeats):
            for name, kw in variants:
                if not kw:
                    seconds[name].append(_forward_seconds(model, tiles, args.batch_size, "cpu"))
                    continue
                summary = predict_slide(
                    model="runs:/benchmark/srtn", sr_model=model, slide=slide, out=f"{tmp}/out-{r}.tiff",
                    region=",".join(map(str, reg)), tile_size=args.tile_size, overlap=args.overlap,
                    batch_size=args.batch_size, tissue={"min_fraction": 0}, progress=False, num_gpus=0, **kw,
                )  # fmt: skip
                seconds[name].append(summary.seconds)
    raw = statistics.median(seconds["raw forward (1 process)"])
    rows = []
    for name, _ in variants:
        dt = statistics.median(seconds[name])
        goal = "" if name.startswith("raw") else ("yes" if raw / dt >= GOAL_RAW else "NO")
        rows.append([name, f"{dt:.1f}", f"{side * side / 1e6 / dt:.4f}", f"{raw / dt:.2f}", goal])
    print(
        f"\nsrtn predict (one region) vs raw forward: region {side}x{side} LR, {cpus} CPUs, median of {args.repeats}\n"
    )
    print(markdown_table(["run", "seconds", "LR MP/s", f"vs raw (goal >= {GOAL_RAW})", "goal met"], rows))
    return 0


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["cohort", "region"], default="cohort")
    p.add_argument("--model-only", action="store_true", help="raw forward only, without Ray (GPU machines)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="for --model-only")
    p.add_argument("--slides", type=int, default=8, help="cohort size (default 8)")
    p.add_argument("--slide-size", type=int, default=512, help="side of each cohort slide in LR pixels (default 512)")
    p.add_argument("--actors", type=int, default=os.cpu_count() or 1, help="model actors (default: one per CPU)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--worker-nice", type=int, default=0, help="niceness of Ray workers (Ray's default is 15)")
    p.add_argument("--quick", action="store_true", help="region case: 512x512 instead of 1024x1024")
    p.add_argument("--region", type=int, default=None, help="region case: side of the square LR region")
    p.add_argument("--feats", type=int, default=16, help="SRTN n_feats (default 16; the paper's is 64)")
    p.add_argument("--blocks", type=int, default=2, help="SRTN n_blocks (default 2; the paper's is 16)")
    p.add_argument("--tile-size", type=int, default=128)
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="rounds (cohort: interleaved; >= 3 for the goals)")
    p.add_argument("--cache", default=str(REPO / "runs" / "bench"), help="where synthetic slides are kept")
    p.add_argument("--results", default=str(RESULTS), help="where the JSON results go (default benchmarks/results)")
    p.add_argument("--raw-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.raw_worker:
        return raw_worker(args)
    if args.model_only:
        return model_only(args)
    return cohort(args) if args.case == "cohort" else region(args)


if __name__ == "__main__":
    sys.exit(main())
