"""Training-step throughput and peak memory of each model on CPU, as ratios to EDSR measured in the same run.

Each model runs in its own subprocess (``--worker NAME``): forward + MSE loss + backward on a random batch
(default 16 LR tiles of 64x64, x4), a warm-up step, then timed steps. Bicubic has no parameters, so its
backward is taken with respect to the input (what a model placed after it would need).

Memory: the growth of the worker's peak resident set size over the steps: after imports, model and batch
are built, the kernel's high-water mark is reset (``echo 5 > /proc/self/clear_refs``) and the peak (``VmHWM``)
reached during the steps minus the resident size before them is reported. RSS counts every byte torch's CPU
allocator takes from the OS (activations saved for backward, gradients, workspace), which ``tracemalloc``
cannot see (it only tracks Python allocations); it is an upper bound on live tensor bytes (allocator slack
included), which is what sizing a worker needs. Without the reset (not Linux) the process-lifetime
``ru_maxrss`` is used, which can hide a small step behind the import-time peak; a subprocess per model keeps
one model's high-water mark out of the next either way.

    python benchmarks/models.py            # batch 16, LR 64x64, x4, 3 timed steps (a few minutes on 2 CPUs)
    python benchmarks/models.py --quick    # batch 4, LR 32x32, 1 timed step (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

BASELINE = "edsr"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run: batch 4, LR 32x32, 1 timed step")
    p.add_argument("--batch", type=int, default=16, help="LR tiles per step (default 16)")
    p.add_argument("--size", type=int, default=64, help="LR tile height and width (default 64)")
    p.add_argument("--scale", type=int, default=4, help="upscaling factor (default 4)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step (default 3)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument(
        "--models", default="srtn,edsr,srcnn,bicubic", help="comma-separated model names (EDSR is always run)"
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.size, args.steps = 4, 32, 1
    return args


def _status_kib(key: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` value of this process in KiB, or None where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _worker(args: argparse.Namespace) -> dict[str, float]:
    """Run in the subprocess: time forward+backward of one model and report its memory high-water mark."""
    import torch
    import torch.nn.functional as F

    from srtn.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.worker, args.scale).train()
    has_params = any(True for _ in model.parameters())
    x = torch.rand(args.batch, 3, args.size, args.size, requires_grad=not has_params)
    y = torch.rand(args.batch, 3, args.size * args.scale, args.size * args.scale)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        x.grad = None
        F.mse_loss(model(x), y).backward()

    if _reset_peak_rss():
        rss0, peak = _status_kib("VmRSS") or 0, lambda: _status_kib("VmHWM") or 0
    else:
        rss0, peak = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        )
    step()  # warm-up: allocator growth, kernel selection
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = time.perf_counter() - t0
    rss1 = peak()
    return {
        "samples_per_s": args.batch * args.steps / elapsed,
        "peak_mib": max(rss1 - rss0, 0) / 1024,  # both in KiB on Linux
        "threads": torch.get_num_threads(),
    }


def _run_worker(name: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        name,
        f"--batch={args.batch}",
        f"--size={args.size}",
        f"--scale={args.scale}",
        f"--steps={args.steps}",
        f"--threads={args.threads}",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    from srtn.models import available_models, model_summary

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(available_models()))
    if unknown:
        raise SystemExit(f"unknown models {unknown}; available: {', '.join(available_models())}")
    if BASELINE not in names:
        names.append(BASELINE)
    results = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = {**_run_worker(name, args), **model_summary(name, args.scale)}
    base = results[BASELINE]
    print(
        f"\nForward+backward, batch {args.batch}, LR {args.size}x{args.size}, x{args.scale}, CPU, "
        f"{base['threads']} threads, {args.steps} timed steps; ratios are to {BASELINE} in this run.\n"
    )
    print("| Model | Params | FLOPs/LR px | samples/s | speed vs EDSR | peak MiB | memory vs EDSR |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        mem_ratio = r["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else float("nan")
        print(
            f"| {name} | {r['params']:,} | {r['flops_per_lr_pixel'] / 1e3:,.0f}k | {r['samples_per_s']:.2f} | "
            f"{r['samples_per_s'] / base['samples_per_s']:.2f}x | {r['peak_mib']:,.0f} | {mem_ratio:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
