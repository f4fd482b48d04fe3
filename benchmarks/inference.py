"""`srtn predict` (Ray Data batch inference -> blended bands -> pyramidal TIFF) against the raw model forward.

What runs, on one cached synthetic Aperio slide and the same region, model and tiles:

  raw       the model's forward over every LR tile of the plan (the same tiles, overlaps included, in the
            same batches), in this process with all CPU threads (or on the GPU); tiles are read before
            the timer, so this is the compute-only ceiling.
  pipeline  `predict_slide` end to end: actor start-up and model shipping, reading tiles from the slide
            inside the actors, the forward, blending, JPEG encoding of the x4 output and of its pyramid
            levels, the file rename. Ray is started and warmed before the timer (as a long-lived cluster
            would be). `tissue.min_fraction=0`, so every tile goes through the model, as in `raw`.

Reported: LR megapixels/s of the region (the same numerator for both), and pipeline / raw (goal >= 0.7).
The model is SRTN with reduced width (`--feats`, `--blocks`) so a CPU run takes minutes, not hours; it is
passed in-process (`sr_model=`), so MLflow loading is not timed. On a machine with a GPU the same rows are
repeated on the GPU (one actor, `num_gpus=1`).

    python benchmarks/inference.py            # 1024x1024 LR region, x4 (81 tiles of 128, overlap 16)
    python benchmarks/inference.py --quick    # 512x512 LR region (25 tiles)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _common import markdown_table  # noqa: E402

GOAL = 0.7
SCALE = 4


def _slide(cache: Path, size: int) -> str:
    from srtn.synth import write_tcga_dataset

    folder = cache / f"inference-slide-{size}"
    existing = sorted(folder.glob("*.svs"))
    if existing:
        return str(existing[0])
    (path,) = write_tcga_dataset(folder, slides=1, seed=0, width=size, height=size, fmt="svs", tissue_fraction=0.6)
    return str(path)


def _raw_forward(model, slide: str, region: tuple[int, int, int, int], args, device: str) -> float:
    """Seconds of the model's forward over the pipeline's tiles (read beforehand), batch by batch."""
    import torch

    from srtn.data.slides import open_slide, read_rgb
    from srtn.infer.blending import TilePlan

    plan = TilePlan.build(
        level=0, downsample=1.0, origin=region[:2], width=region[2], height=region[3],
        tile_size=args.tile_size, overlap=args.overlap, scale=SCALE,
    )  # fmt: skip
    with open_slide(slide) as s:
        tiles = [read_rgb(s, *plan.level0(*plan.tile(i)[2:]), 0, plan.tile_w, plan.tile_h) for i in range(plan.n_tiles)]
    batches = [np.stack(tiles[i : i + args.batch_size]) for i in range(0, len(tiles), args.batch_size)]
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


def _pipeline(model, slide: str, region: tuple[int, int, int, int], args, out: Path, **kw) -> float:
    from srtn.infer.predict import predict_slide

    summary = predict_slide(
        model="runs:/benchmark/srtn", sr_model=model, slide=slide, out=str(out), region=",".join(map(str, region)),
        tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size, tissue={"min_fraction": 0},
        progress=False, **kw,
    )  # fmt: skip
    assert summary.tiles_model == summary.tiles
    return summary.seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="512x512 LR region instead of 1024x1024")
    p.add_argument("--region", type=int, default=None, help="side of the square LR region (level-0 pixels)")
    p.add_argument("--feats", type=int, default=16, help="SRTN n_feats (default 16; the paper's is 64)")
    p.add_argument("--blocks", type=int, default=2, help="SRTN n_blocks (default 2; the paper's is 16)")
    p.add_argument("--tile-size", type=int, default=128)
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="repeat every row, report the median")
    p.add_argument("--cache", default=str(REPO / "runs" / "bench"), help="where the synthetic slide is kept")
    args = p.parse_args(argv)

    import torch

    from srtn.models import build_model
    from srtn.runtime import init_ray

    side = args.region or (512 if args.quick else 1024)
    slide = _slide(Path(args.cache), max(1024, 2 * side))
    region = (side // 2, side // 2, side, side)
    torch.manual_seed(0)
    model = build_model("srtn", SCALE, n_feats=args.feats, n_blocks=args.blocks).eval()
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)

    import ray

    init_ray(num_cpus=cpus)
    ray.get([ray.remote(lambda: None).remote() for _ in range(cpus)])  # workers up before any timer
    gpu = torch.cuda.is_available()
    variants: list[tuple[str, str, dict]] = [
        ("raw forward (1 process)", "cpu", {}),
        ("pipeline, 1 actor x all CPUs", "cpu", {"actors": 1, "cpus_per_actor": cpus, "num_gpus": 0}),
    ]
    if cpus >= 2:
        kw = {"actors": cpus, "cpus_per_actor": 1, "num_gpus": 0}
        variants.append((f"pipeline, {cpus} actors x 1 CPU", "cpu", kw))
    if gpu:
        variants += [
            ("raw forward (GPU)", "cuda", {}),
            ("pipeline, 1 actor + 1 GPU", "cuda", {"actors": 1, "cpus_per_actor": 1, "num_gpus": 1}),
        ]
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory(prefix="srtn-bench-") as tmp:
        for r in range(args.repeats):
            for name, device, kw in variants:
                if name.startswith("raw"):
                    dt = _raw_forward(model, slide, region, args, device)
                else:
                    dt = _pipeline(model, slide, region, args, Path(tmp) / f"out-{r}.tiff", **kw)
                seconds[name].append(dt)
                print(f"  {name}: {dt:.1f} s", file=sys.stderr)
    mpx = side * side / 1e6
    rows = []
    for name, device, _ in variants:
        dt = statistics.median(seconds[name])
        raw = statistics.median(seconds["raw forward (GPU)" if device == "cuda" else "raw forward (1 process)"])
        ratio = raw / dt
        goal = "" if name.startswith("raw") else ("yes" if ratio >= GOAL else "NO")
        rows.append([name, device, f"{dt:.1f}", f"{mpx / dt:.4f}", f"{ratio:.2f}", goal])
    print(
        f"\nsrtn predict vs raw forward: SRTN n_feats={args.feats} n_blocks={args.blocks} x{SCALE}, "
        f"region {side}x{side} LR -> {SCALE * side}x{SCALE * side}, tiles {args.tile_size}/overlap {args.overlap}, "
        f"batch {args.batch_size}, {cpus} CPUs, torch {torch.__version__}, median of {args.repeats}\n"
    )
    print(markdown_table(["run", "device", "seconds", "LR MP/s", f"vs raw (goal >= {GOAL})", "goal met"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
