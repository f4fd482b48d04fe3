"""`srtn evaluate` against the raw forward of the same models over the same tiles, in one process.

Sets: `demo`, the demo's test split (8 synthetic slides of 3072 px tiled as `srtn demo` tiles them: 52 tiles
of 256 px), and `2000`, 2,000 synthetic 256-px test tiles (`srtn.synth.shards`). Both are cached under
`--cache`. Models: the demo's SRTN, EDSR and SRCNN at demo size (`srtn.demo.DEMO_MODELS`), seeded and
untrained (the compute does not depend on the weights), plus bicubic; they are logged and registered in a
throw-away sqlite MLflow store, so the evaluation pins and loads them from MLflow as it always does.

Wall-clock ratios are what the goal asks for; on a shared 2-CPU machine they move with other work, so the CPU
seconds of the raw loop (forward and metrics, all threads) and of the CLI's whole process tree are reported too,
with the 1-minute load average as each row starts.

Rows, per set:
  raw forward            every model's forward over every test tile, in this process, batches of `--batch-size`,
                         channels_last as the evaluation, all CPU threads; tiles decoded before the timer: the
                         compute-only ceiling the goal is about.
  raw forward + metrics  the same loop plus the evaluation's own metrics (`srtn.evaluate.score.HrReference`, PSNR,
                         SSIM, MSE on RGB and Y): a plain in-process scorer, i.e. srtn evaluate minus Ray/MLflow.
  srtn evaluate (CLI)    `python jobs/evaluate.py ...` in a fresh process: interpreter start, imports, config,
                         MLflow model loading, **Ray start-up**, the Ray Data pass, pictures, MLflow logging: what
                         the user waits for. raw forward / this is the headline ratio (goal >= 0.7).
  evaluate(), cold Ray   `srtn.evaluate.evaluate` in this process, Ray started inside the timer; its phases
                         (`EvaluationReport.seconds`) say where the time goes (demo set; others: --all-rows).
  evaluate(), Ray up     the same with Ray already running (the demo's case: its earlier stages started Ray).

    .venv/bin/python benchmarks/evaluation.py                 # both sets (the 2000-tile rows take ~30 min on 2 CPUs)
    .venv/bin/python benchmarks/evaluation.py --sets demo     # the demo set only (~2 min)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import markdown_table, run_measured, save_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

GOAL = 0.7
SCALE = 4


def _demo_set(cache: Path) -> str:
    """The demo's tiles: its 8 slides tiled with its settings (cached)."""
    from srtn.config.base import load_config
    from srtn.config.tile import TileConfig
    from srtn.data.tile_job import run_tiling
    from srtn.synth import write_tcga_dataset

    slides, shards = cache / "demo-slides", cache / "demo-shards"
    if not (shards / "_manifest.json").is_file():
        if len(list(slides.glob("*"))) < 8:
            write_tcga_dataset(slides, slides=8, seed=0, width=3072, height=3072, tissue_fraction=0.45)
        overrides = [f"input={slides}", f"output={shards}", "max_tiles_per_slide=60"]
        run_tiling(load_config(TileConfig, REPO / "configs/data/tcga_kirc.yaml", overrides))
    return str(shards)


def _large_set(cache: Path, n: int) -> str:
    from srtn.synth.shards import write_synthetic_shards

    shards = cache / f"synthetic-{n}"
    if not (shards / "_manifest.json").is_file():
        write_synthetic_shards(str(shards), per_split={"test": n}, hr_size=256, scales=(SCALE,), groups=20, seed=0)
    return str(shards)


def _models() -> dict[str, Any]:
    import torch

    from srtn.config.base import parse_override
    from srtn.demo import DEMO_MODELS
    from srtn.models import build_model

    out = {}
    for name, overrides in DEMO_MODELS.items():
        kwargs = dict(parse_override(next(o for o in overrides if o.startswith("model.kwargs=")))[1])
        torch.manual_seed(0)
        out[name] = build_model(name, SCALE, **kwargs).eval()
    return out


def _register(models: dict[str, Any], uri: str) -> list[dict[str, str]]:
    """Log and register every model in the store at `uri`; the evaluation's `models:` entries."""
    import mlflow

    from srtn import track
    from srtn.models.serialization import log_sr_model

    experiment = track.get_or_create_experiment("bench-evaluation", tracking_uri=uri)
    with track.fluent_tracking_uri(uri):
        for name, model in models.items():
            with mlflow.start_run(experiment_id=experiment, run_name=f"bench-{name}"):
                log_sr_model(model, name="model", registered_model_name=f"bench-{name}-x4")
    return [{"name": n, "uri": f"models:/bench-{n}-x4/latest"} for n in models]


def _raw(models: dict[str, Any], shards: str, batch_size: int) -> dict[str, float]:
    """Seconds of the forwards (and, apart, of the metrics) over every test tile, decoded beforehand."""
    import numpy as np
    import torch

    from srtn.data.reader import decode_eval_batch, read_split_table
    from srtn.evaluate.score import HrReference, super_resolve
    from srtn.models import build_model
    from srtn.vocab import BICUBIC

    table = read_split_table(shards, "test", columns=["hr", f"lr_x{SCALE}"])
    rows = {k: np.array(table[k].to_pylist(), dtype=object) for k in table.column_names}
    n = len(rows["hr"])
    batches = [
        decode_eval_batch({k: v[i : i + batch_size] for k, v in rows.items()}, scale=SCALE)
        for i in range(0, n, batch_size)
    ]
    nets = {**models, BICUBIC: build_model(BICUBIC, SCALE)}
    nets = {k: m.to(memory_format=torch.channels_last) for k, m in nets.items()}
    torch.set_num_threads(os.cpu_count() or 1)
    with torch.inference_mode():
        for m in nets.values():
            m(torch.rand(1, 3, 32, 32).contiguous(memory_format=torch.channels_last))  # warm-up
    forward = metrics = 0.0
    cpu0 = time.process_time()
    for b in batches:
        lr, hr = torch.from_numpy(b["lr"]), torch.from_numpy(b["hr"])
        t0 = time.perf_counter()
        reference = HrReference(hr, crop_border=SCALE)
        metrics += time.perf_counter() - t0
        for m in nets.values():
            t0 = time.perf_counter()
            sr = super_resolve(m, lr, channels_last=True)
            t1 = time.perf_counter()
            reference.score(sr)
            forward, metrics = forward + t1 - t0, metrics + time.perf_counter() - t1
    return {"tiles": n, "forward_s": forward, "metrics_s": metrics, "cpu_s": time.process_time() - cpu0}


def _overrides(shards: str, name: str, entries: list[dict[str, str]], uri: str, batch_size: int) -> list[str]:
    models = ", ".join(f"{{name: {e['name']}, uri: '{e['uri']}'}}" for e in entries)
    return [
        f"data.shards={shards}",
        f"data.dataset={name}",
        f"models=[{models}]",
        f"batch_size={batch_size}",
        f"tracking.uri={uri}",
        "tracking.experiment=bench-evaluation",
    ]


CONFIG = REPO / "configs/evaluate/tcga_kirc_mini_x4.yaml"  # a single-dataset config; everything is overridden


def _cli(overrides: list[str]) -> tuple[float, float]:
    """Wall seconds of `python jobs/evaluate.py` in a fresh process (its own local Ray), and the CPU seconds of
    its whole process tree (driver, Ray's processes, every worker: `_common.run_measured`)."""
    cmd = [sys.executable, str(REPO / "jobs/evaluate.py"), "--config", str(CONFIG)]
    cmd += [arg for o in overrides for arg in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = run_measured(cmd, env=env, interval=0.5)
    if done.returncode != 0:
        raise RuntimeError(f"srtn evaluate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.wall_s, done.stats.cpu_s


def _in_process(overrides: list[str], *, cold: bool) -> tuple[float, dict[str, float]]:
    import ray

    from srtn.config.base import load_config
    from srtn.config.evaluate import EvaluateConfig
    from srtn.evaluate import evaluate
    from srtn.runtime import init_ray

    if cold and ray.is_initialized():
        ray.shutdown()
    if not cold:
        init_ray()
    cfg = load_config(EvaluateConfig, CONFIG, overrides)
    t0 = time.perf_counter()
    report = evaluate(cfg)
    return time.perf_counter() - t0, report.seconds


def _bench_set(name: str, shards: str, models: dict[str, Any], entries: list, uri: str, args) -> dict[str, Any]:
    overrides = _overrides(shards, name if name == "demo" else f"synthetic-{name}", entries, uri, args.batch_size)
    loads: dict[str, float] = {"raw": os.getloadavg()[0]}  # 1-min load average as each row starts (2 CPUs shared)
    raw = _raw(models, shards, args.batch_size)
    print(f"  {name}: raw forward {raw['forward_s']:.1f} s, metrics {raw['metrics_s']:.1f} s", file=sys.stderr)
    result: dict[str, Any] = {"tiles": raw["tiles"], "raw_forward_s": raw["forward_s"], "metrics_s": raw["metrics_s"]}
    result["raw_cpu_s"] = raw["cpu_s"]  # CPU seconds of the raw loop (forward + metrics), all threads
    loads["cli"] = os.getloadavg()[0]
    result["cli_s"], result["cli_cpu_s"] = _cli(overrides)
    print(f"  {name}: srtn evaluate (CLI) {result['cli_s']:.1f} s", file=sys.stderr)
    if name == "demo" or args.all_rows:  # on large sets the cold row only adds Ray's start-up, already in the CLI's
        loads["cold"] = os.getloadavg()[0]
        result["cold_s"], result["cold_phases"] = _in_process(overrides, cold=True)
    loads["warm"] = os.getloadavg()[0]
    result["warm_s"], result["warm_phases"] = _in_process(overrides, cold=False)
    return result | {"load_avg_1min_at_start": loads}


def _rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        raw, plain = r["raw_forward_s"], r["raw_forward_s"] + r["metrics_s"]
        entries = [("raw forward", raw), ("raw forward + metrics", plain), ("srtn evaluate (CLI)", r["cli_s"])]
        for label, key in (("evaluate(), cold Ray", "cold_s"), ("evaluate(), Ray up", "warm_s")):
            if key in r:
                entries.append((label, r[key]))
        for label, seconds in entries:
            ratio = raw / seconds
            goal = "" if label.startswith("raw") else ("yes" if ratio >= GOAL else "NO")
            rows.append([name, r["tiles"], label, f"{seconds:.1f}", f"{ratio:.2f}", f"{plain / seconds:.2f}", goal])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=["demo", "2000"], help="demo and/or a tile count (synthetic)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per batch (8: the demo's)")
    p.add_argument("--all-rows", action="store_true", help="also the cold in-process row for the synthetic sets")
    p.add_argument("--cache", default=str(REPO / "runs" / "bench" / "evaluation"))
    args = p.parse_args(argv)

    from srtn.console import configure

    configure()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    models = _models()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="srtn-bench-eval-") as tmp:
        from srtn import track

        uri = track.resolve_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        entries = _register(models, uri)
        for name in args.sets:
            shards = _demo_set(cache) if name == "demo" else _large_set(cache, int(name))
            results[name] = _bench_set(name, shards, models, entries, uri, args)
    head = [
        "set",
        "tiles",
        "run",
        "seconds",
        f"raw forward / it (goal >= {GOAL})",
        "raw forward + metrics / it",
        "goal met",
    ]
    print(f"\nsrtn evaluate vs the raw forward of {', '.join(models)} and bicubic, x{SCALE}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print(markdown_table(head, _rows(results)))
    for name, r in results.items():
        print(
            f"{name} CPU seconds: raw loop (forward + metrics) {r['raw_cpu_s']:.1f}, srtn evaluate (CLI, whole process "
            f"tree) {r['cli_cpu_s']:.1f}: ratio {r['raw_cpu_s'] / r['cli_cpu_s']:.2f}"
        )
        for key in ("cold_phases", "warm_phases"):
            if key in r:
                print(f"{name} {key.split('_')[0]}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r[key].items()))
    print(f"\nresult: {save_result({'goal': GOAL, 'batch_size': args.batch_size, 'sets': results}, 'evaluation')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
