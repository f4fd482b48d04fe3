"""Training throughput: Ray Train (1 worker, Ray Data input) against a plain single-process PyTorch loop.

Both train the same model with the same global batch, optimiser and LR patches of the same synthetic tile
shards, with the same number of torch threads (`--cpus`, default 2) and the same memory format
(`--memory-format`, default channels_last as `optim.channels_last`; batches arrive NCHW-contiguous and are
converted in the step). Every loop runs the same step, `srtn.train.step.train_step` with the optimiser
built from the same `optim` settings (`build_trainables`): the Ray loop (`srtn.train.loop`) calls it
per batch as the plain loops do. That module imports no Ray, so the plain loops also run where Ray is
not installed.

- plain, in memory: every train tile decoded into memory once, then per step the same aligned random crop
  and flips (`srtn.train.augment.aligned_crop` / `augment_pair`) and a float conversion in the loop: an
  upper bound (no PNG decoding while training, no framework).
- plain, per batch: the PNG bytes in memory, decoded per batch by the pipeline's own
  `decode_train_batch` in the training process (what a DataLoader without workers does).
  Both plain loops run in a subprocess with `OMP_NUM_THREADS` set as Ray sets it for a worker and at Ray's
  worker niceness (15), so all loops get the same threading and CPU priority against other processes.
- Ray Train: `srtn.train.fit.fit` as `srtn train` runs it (1 worker with `--cpus` CPUs, so torch gets
  the same threads; PNG decoding, crops and flips in Ray Data tasks that share the same cores;
  validation, checkpoints and MLflow every epoch). Ray is started with one more *logical* CPU than
  the worker takes, so its data tasks can be scheduled: they still run on the same physical cores.

samples/s is measured inside the training loop (first batch requested to last step done, per epoch;
validation, checkpointing and start-up are outside it) and the first epoch is left out as warm-up.
"data wait" is the share of that time spent waiting for the next batch (for plain: preparing it);
"first batch" is the wait for an epoch's first batch (Ray Data starting the epoch's pipeline), a
fixed cost per epoch that the last column leaves out (it matters for tiny epochs only).
Goal: Ray / plain in memory >= 0.85. The plain loops run before and after Ray (Ray shut down) and their
two results are averaged, so load drifting on a shared machine shows as a gap between them.

    python benchmarks/training.py            # SRTN 32x4, LR 48 patches of 256 px tiles, 192 tiles, 3 epochs
    python benchmarks/training.py --quick    # smoke test (SRTN 16x2, 32 tiles of 64 px): steps too small to compare
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "platform"))  # runnable from a bare checkout

from _common import RESULT_MARKER, markdown_table  # noqa: E402

if TYPE_CHECKING:
    import torch


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run (about a minute on 2 CPUs)")
    p.add_argument("--model", default="srtn", help="model name (default srtn)")
    p.add_argument("--n-feats", type=int, default=32, help="model width (default 32)")
    p.add_argument("--n-blocks", type=int, default=4, help="residual blocks (default 4)")
    p.add_argument("--tiles", type=int, default=192, help="train tiles (default 192)")
    p.add_argument("--hr-size", type=int, default=256, help="HR tile side (default 256)")
    p.add_argument("--patch", type=int, default=48, help="LR patch side (default 48)")
    p.add_argument("--batch", type=int, default=8, help="batch (default 8, the recipe)")
    p.add_argument("--epochs", type=int, default=3, help="epochs; the first is warm-up (default 3)")
    p.add_argument("--shuffle-buffer", type=int, default=32, help="worker's local shuffle buffer, rows (default 32)")
    p.add_argument("--cpus", type=float, default=2.0, help="CPUs of the Ray worker = torch threads (default 2)")
    p.add_argument(
        "--memory-format",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="memory format of model and batches in every loop (default channels_last, the train default)",
    )
    p.add_argument("--plain-worker", default=None, help=argparse.SUPPRESS)  # shards path: run the plain loop
    p.add_argument("--plain-decode", action="store_true", help=argparse.SUPPRESS)  # plain loop decodes PNG per step
    args = p.parse_args(argv)
    if args.quick:
        args.n_feats, args.n_blocks, args.tiles, args.hr_size, args.patch, args.epochs = 16, 2, 32, 64, 16, 3
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first is warm-up)")
    return args


WORKER_NICENESS = 15  # Ray starts its worker processes at niceness 15 (its `worker_niceness` setting)


def plain_subprocess(argv: list[str], shards: str, threads: int, *, decode: bool) -> list[tuple[float, float]]:
    """`plain_loop` in a fresh process whose torch threads are set the way Ray sets a worker's
    (`OMP_NUM_THREADS` before torch is imported), so both loops run under the same threading."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, *argv, "--plain-worker", shards, *(["--plain-decode"] if decode else [])]
    nice = os.nice(0)
    proc = subprocess.run(
        cmd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.nice(max(0, WORKER_NICENESS - nice)),
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER))
    return [tuple(e) for e in json.loads(line[len(RESULT_MARKER) :])]


def optim_settings(args: argparse.Namespace) -> dict[str, object]:
    """The `optim` block of every loop: the recipe's defaults (MSE, Adam, lr 1e-3) with this batch, these
    epochs and this memory format."""
    return {"batch_size": args.batch, "epochs": args.epochs, "channels_last": args.memory_format == "channels_last"}


def _nchw(images: list) -> torch.Tensor:
    """NHWC uint8 images -> an NCHW-contiguous float batch in [0, 1], as the pipeline's `decode_train_batch`
    yields it. (A plain `.transpose().astype()` keeps NHWC strides: a channels_last batch in disguise, which
    once made this loop look 1.3x faster than the same step in the Ray loop.)"""
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32) / 255)


def plain_loop(args: argparse.Namespace, shards: str) -> list[tuple[float, float]]:
    """(samples/s, data share) per epoch of a single-process loop. Tiles are decoded into memory once, or
    with `--plain-decode` kept as PNG bytes and decoded per batch by the pipeline's own function."""
    import numpy as np
    import torch

    from srtn.config.train import OptimConfig
    from srtn.data.reader import read_split_table
    from srtn.data.schema import decode_png
    from srtn.models import build_model
    from srtn.train.augment import aligned_crop, augment_pair, decode_train_batch
    from srtn.train.step import build_trainables, train_step

    scale = 4
    table = read_split_table(shards, "train", columns=["hr", "lr_x4"])
    pngs = list(zip(table["hr"].to_pylist(), table["lr_x4"].to_pylist()))
    tiles = [] if args.plain_decode else [(decode_png(h), decode_png(lr)) for h, lr in pngs]
    torch.manual_seed(0)
    net = build_model(args.model, scale, n_feats=args.n_feats, n_blocks=args.n_blocks)
    trainables = build_trainables(net, OptimConfig(**optim_settings(args)))  # in the memory format, Adam
    rng = np.random.default_rng(0)
    out = []
    for _ in range(args.epochs):
        order = rng.permutation(len(pngs))
        t0 = time.perf_counter()
        wait = 0.0
        for i in range(0, len(order), args.batch):
            tw = time.perf_counter()
            idx = order[i : i + args.batch]
            if args.plain_decode:
                batch = {"hr": np.array([pngs[k][0] for k in idx], dtype=object)}
                batch["lr_x4"] = np.array([pngs[k][1] for k in idx], dtype=object)
                arrays = decode_train_batch(batch, scale=scale, patch_size=args.patch, flips=True, rot90=True)
                lr_t, hr_t = torch.from_numpy(arrays["lr"]), torch.from_numpy(arrays["hr"])
            else:
                pairs = [augment_pair(*aligned_crop(*tiles[k], scale, args.patch, rng), rng) for k in idx]
                hr_t, lr_t = (_nchw([p[i] for p in pairs]) for i in (0, 1))
            wait += time.perf_counter() - tw
            # the Ray loop's step: NCHW-contiguous batches put in the model's memory format, forward, loss, step
            train_step(trainables, {"lr": lr_t, "hr": hr_t})
        dt = time.perf_counter() - t0
        out.append((len(order) / dt, wait / dt))
    return out


def ray_train(args: argparse.Namespace, shards: str, work: str) -> tuple[list[tuple[float, float]], float]:
    """(samples/s, data wait share) per epoch of `srtn.train.fit.fit`, and its end-to-end seconds."""
    import ray

    from srtn.config.base import load_config
    from srtn.config.train import TrainConfig
    from srtn.train.fit import fit

    ray.init(num_cpus=args.cpus + 1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    cfg = load_config(
        TrainConfig,
        data={
            "data": {
                "shards": shards,
                "dataset": "bench",
                "scale": 4,
                "patch_size": args.patch,
                "shuffle_buffer": args.shuffle_buffer,
            },
            "model": {"name": args.model, "kwargs": {"n_feats": args.n_feats, "n_blocks": args.n_blocks}},
            "optim": optim_settings(args),
            "scaling": {"num_workers": 1, "cpus_per_worker": args.cpus, "data_cpus": 0.25, "data_concurrency": 2},
            "run": {"name": "bench", "storage_path": f"{work}/ray", "log_images_every": 0, "max_failures": 0},
            "tracking": {"uri": f"sqlite:///{work}/mlflow.db"},
        },
    )
    t0 = time.perf_counter()
    outcome = fit(cfg)
    wall = time.perf_counter() - t0
    ray.shutdown()
    return [(h["samples_per_second"], h["data_wait_share"], h["first_batch_seconds"]) for h in outcome.history], wall


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args.plain_worker:
        print(RESULT_MARKER + json.dumps(plain_loop(args, args.plain_worker)))
        return 0
    threads = max(1, int(args.cpus))  # what Ray gives a worker with `cpus` CPUs (OMP_NUM_THREADS)
    os.environ.setdefault("RAY_ENABLE_RECORD_ACTOR_TASK_LOGGING", "0")
    from srtn.synth.shards import write_synthetic_shards

    with tempfile.TemporaryDirectory(prefix="srtn-bench-train-") as work:
        shards = write_synthetic_shards(
            f"{work}/shards", per_split={"train": args.tiles, "val": 4}, hr_size=args.hr_size, scales=(4,), groups=4
        )
        before = {d: plain_subprocess(argv, shards, threads, decode=d) for d in (False, True)}
        ray_epochs, ray_wall = ray_train(args, shards, work)
        after = {d: plain_subprocess(argv, shards, threads, decode=d) for d in (False, True)}

    def steady(epochs: list[tuple[float, ...]]) -> tuple[float, float, float, float]:
        """Medians over the epochs after the first: samples/s, data wait share, time to the first batch,
        and samples/s without that first wait (the per-epoch pipeline start)."""
        rest = epochs[1:]
        firsts = [e[2] if len(e) > 2 else 0.0 for e in rest]
        no_start = [args.tiles / max(args.tiles / e[0] - f, 1e-9) for e, f in zip(rest, firsts)]
        return (
            statistics.median(e[0] for e in rest),
            statistics.median(e[1] for e in rest),
            statistics.median(firsts),
            statistics.median(no_start),
        )

    r = steady(ray_epochs)
    print(
        f"\nTraining throughput: {args.model} n_feats={args.n_feats} n_blocks={args.n_blocks}, batch {args.batch}, "
        f"LR patch {args.patch} (x4), {args.tiles} train tiles of {args.hr_size} px per epoch, {args.epochs} epochs "
        f"(first left out), {args.cpus:g} CPUs / {threads} torch threads, on {os.cpu_count()} cores\n"
    )
    rows, ratios = [], {}
    for decode, label in (
        (False, "plain PyTorch, tiles decoded once into memory"),
        (True, "plain PyTorch, PNG decoded per batch"),
    ):
        b, a = steady(before[decode]), steady(after[decode])
        sps = (b[0] + a[0]) / 2
        ratios[decode] = (r[0] / sps, r[3] / sps)
        rows.append([label, f"{sps:.2f} ({b[0]:.2f} / {a[0]:.2f})", f"{100 * (b[1] + a[1]) / 2:.1f}%", "-", "-", "-"])
    rows.append(
        [
            "Ray Train, 1 worker + Ray Data",
            f"{r[0]:.2f}",
            f"{100 * r[1]:.1f}%",
            f"{r[2]:.2f}",
            f"**{ratios[False][0]:.2f}** / {ratios[True][0]:.2f}",
            f"{ratios[False][1]:.2f} / {ratios[True][1]:.2f}",
        ]
    )
    headers = [
        "loop",
        "samples/s (before / after Ray)",
        "data wait",
        "first batch (s)",
        "Ray vs plain (in memory / per batch)",
        "same, w/o epoch start",
    ]
    print(markdown_table(headers, rows))
    print(f"\nRay Train end to end (start-up, validation, checkpoints, MLflow, model logging): {ray_wall:.1f} s")
    ratio = ratios[False][0]
    print(f"goal Ray / plain in memory >= 0.85: {'met' if ratio >= 0.85 else 'NOT met'} ({ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
