"""The per-worker training loop that Ray Train runs (`train_loop_per_worker`), as named steps.

Each worker sets up its model, optimiser, scheduler and EMA (`_setup`), restores them from
`ray.train.get_checkpoint()` when there is one (`_restore`), then per epoch trains over its shard of the
train split (`_train_epoch`, whose per-batch work is `srtn.train.step.train_step`) and reports
(`_report`); rank 0 validates on the whole val split (`_validate_epoch`), writes the checkpoint
(`_write_checkpoint`, format in `srtn.train.checkpoints`) and logs the epoch to MLflow once the controller
has registered that checkpoint (`_log_epoch`). See `srtn.train.fit` for the driver and how resume works.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from srtn import storage, track
from srtn.config.base import flatten
from srtn.config.train import TrainConfig
from srtn.train.batches import EpochBatches, ValBatches
from srtn.train.checkpoints import STATE_FILE, save_checkpoint
from srtn.train.progress import epoch_line
from srtn.train.step import Trainables, build_trainables, in_memory_format, train_step

if TYPE_CHECKING:
    import torch

__all__ = ["METRIC_KEYS", "train_loop_per_worker"]

logger = logging.getLogger(__name__)

METRIC_KEYS = ("train_loss", "val_loss", "val_psnr", "val_ssim", "val_psnr_y", "val_ssim_y")


def _rng_state() -> dict[str, Any]:
    import torch

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _maybe_inject_fault(cfg: TrainConfig, epoch: int, rank: int, run_dir: str) -> None:
    """TEST ONLY (`testing.fail_at_epoch`): rank 0 kills its process at the start of that epoch, once per run
    dir (a marker file there tells later attempts that the fault already happened)."""
    if cfg.testing.fail_at_epoch != epoch or rank != 0:
        return
    marker = storage.join(run_dir, f".fault-injected-epoch-{epoch}")
    if storage.exists(marker):
        return
    storage.write_bytes(marker, b"1")
    logger.warning("testing.fail_at_epoch=%d: worker process exits now", epoch)
    os._exit(1)


def _validate(
    model: torch.nn.Module, val_batches: ValBatches, cfg: TrainConfig, device: torch.device, loss_fn: Any
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Loss and PSNR/SSIM (RGB and Y, border `scale` cropped) over the whole val split; the first batch's
    first images as sample columns LR | bicubic | SR | HR."""
    import torch
    import torch.nn.functional as F

    from srtn.metrics import psnr, ssim

    scale = cfg.data.scale
    sums = dict.fromkeys(METRIC_KEYS[1:], 0.0)
    n_images = 0
    n_pixels = 0
    samples: dict[str, torch.Tensor] = {}
    model.eval()
    with torch.no_grad():
        for batch in val_batches(device):
            lr, hr = in_memory_format(batch, cfg.optim.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.optim.bf16):
                sr = model(lr)
            sr = sr.float()
            sums["val_loss"] += float(loss_fn(sr, hr, reduction="sum"))
            sr = sr.clamp(0.0, 1.0)
            sums["val_psnr"] += float(psnr(sr, hr, crop_border=scale).sum())
            sums["val_ssim"] += float(ssim(sr, hr, crop_border=scale).sum())
            sums["val_psnr_y"] += float(psnr(sr, hr, crop_border=scale, y_channel=True).sum())
            sums["val_ssim_y"] += float(ssim(sr, hr, crop_border=scale, y_channel=True).sum())
            n_images += hr.shape[0]
            n_pixels += hr.numel()
            if not samples:
                k = cfg.run.num_images
                bicubic = F.interpolate(lr[:k].float(), scale_factor=scale, mode="bicubic", align_corners=False)
                samples = {"LR": lr[:k], "bicubic": bicubic.clamp(0, 1), "SR": sr[:k], "HR": hr[:k]}
    model.train()
    if n_images == 0:
        raise ValueError(f"the val split of {cfg.data.shards} is empty")
    metrics = {k: v / n_images for k, v in sums.items()}
    metrics["val_loss"] = sums["val_loss"] / n_pixels
    return metrics, samples


# --------------------------------------------------------------------------- the named steps


@dataclass
class _Worker:
    """What one worker keeps from its setup across epochs."""

    cfg: TrainConfig
    rank: int
    device: torch.device
    distributed: bool  # several ranks in a process group: the epoch's loss sum is all-reduced
    trainables: Trainables
    history: list[dict[str, Any]]  # per-epoch metrics so far (restored from the checkpoint on resume)
    start_epoch: int
    mlflow_run_id: str
    run_dir: str
    epoch_logger: track.EpochLogger | None  # rank 0 only
    train_it: Any  # this worker's shard of the train split
    val_batches: ValBatches
    iter_kwargs: dict[str, Any]


@dataclass
class _EpochStats:
    """One epoch's training pass: loss sum and sample count (all-reduced later), and its timings."""

    loss_sum: torch.Tensor  # [sum of batch losses x batch size, samples], float64 on the device
    started: float  # perf_counter at its start
    seconds: float
    wait: float  # waiting for batches
    first_wait: float  # waiting for the first batch: the pipeline's start-up each epoch


def _checkpoint_state() -> dict[str, Any] | None:
    """The full training state of the checkpoint Ray Train hands this worker (the latest), if any."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)


def _restore(t: Trainables, state: dict[str, Any] | None, cfg: TrainConfig, rank: int) -> tuple[list[Any], int]:
    """Optimiser, scheduler, EMA and (rank 0) RNG state from a checkpoint's state; `(history, first epoch)`."""
    if state is None:
        return [], 1
    t.optimizer.load_state_dict(state["optimizer"])
    if t.scheduler is not None and state.get("scheduler"):
        t.scheduler.load_state_dict(state["scheduler"])
        if cfg.optim.scheduler == "cosine":
            t.scheduler.T_max = cfg.optim.epochs  # a rerun may ask for more epochs than the first run
    if t.ema is not None and state.get("ema"):
        t.ema.load_state_dict(state["ema"])
    if rank == 0 and state.get("rng"):
        _set_rng_state(state["rng"])
    return state["history"], int(state["epoch"]) + 1


def _setup(config: dict[str, Any]) -> _Worker:
    """Model (the same initial weights on every rank, or the checkpoint's), optimiser, scheduler and EMA,
    restored from the latest checkpoint; the MLflow epoch logger (rank 0) and this worker's datasets."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from srtn.models import build_model

    cfg = TrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.data.seed)  # the same initial weights on every rank
    net = build_model(cfg.model.name, cfg.data.scale, **cfg.model.kwargs)
    state = _checkpoint_state()
    if state is not None:
        net.load_state_dict(state["model"])
    # to the device, DDP when world > 1
    trainables = build_trainables(net, cfg.optim, wrap=ray.train.torch.prepare_model)
    history, start_epoch = _restore(trainables, state, cfg, rank)
    if rank:
        torch.manual_seed(cfg.data.seed + 7919 * rank + start_epoch)
    epoch_logger = track.EpochLogger(config["tracking_uri"], config["mlflow_run_id"]) if rank == 0 else None
    if epoch_logger is not None and history:
        epoch_logger.backfill(history)
    buffer = max(cfg.data.shuffle_buffer, cfg.batch_per_worker) if cfg.data.shuffle_buffer else None
    return _Worker(
        cfg=cfg,
        rank=rank,
        device=device,
        distributed=world > 1 and dist.is_available() and dist.is_initialized(),
        trainables=trainables,
        history=history,
        start_epoch=start_epoch,
        mlflow_run_id=config["mlflow_run_id"],
        run_dir=config["run_dir"],
        epoch_logger=epoch_logger,
        train_it=ray.train.get_dataset_shard("train"),
        val_batches=ValBatches(ray.train.get_dataset_shard("val"), cfg.batch_per_worker, cache=cfg.data.cache_val),
        iter_kwargs={
            "batch_size": cfg.batch_per_worker,
            "local_shuffle_buffer_size": buffer,
            "prefetch_batches": 2,
            "device": device,
        },
    )


def _train_epoch(w: _Worker, prefetched: EpochBatches | None) -> _EpochStats:
    """One pass over this worker's train shard (`prefetched`: its batches, already started), one
    `train_step` per batch; the time spent waiting for batches is measured around each `next`."""
    import torch

    t0 = time.perf_counter()
    wait = 0.0
    first_wait: float | None = None
    loss_sum = torch.zeros(2, dtype=torch.float64, device=w.device)
    w.trainables.model.train()
    batches = iter(prefetched or EpochBatches(w.train_it, **w.iter_kwargs))
    while True:
        tw = time.perf_counter()
        batch = next(batches, None)
        wait += time.perf_counter() - tw
        if first_wait is None:
            first_wait = wait
        if batch is None:
            break
        loss, n = train_step(w.trainables, batch)
        loss_sum[0] += loss.double() * n  # no host sync per step
        loss_sum[1] += n
    return _EpochStats(loss_sum, t0, time.perf_counter() - t0, wait, first_wait or 0.0)


def _epoch_metrics(w: _Worker, epoch: int, stats: _EpochStats, epoch_lr: float) -> dict[str, Any]:
    """The epoch's train metrics over all ranks (loss sums all-reduced); steps the LR scheduler."""
    import torch.distributed as dist

    if w.distributed:
        dist.all_reduce(stats.loss_sum)
    if w.trainables.scheduler is not None:
        w.trainables.scheduler.step()
    samples_seen = float(stats.loss_sum[1])
    seconds = max(stats.seconds, 1e-9)
    return {
        "epoch": epoch,
        "train_loss": float(stats.loss_sum[0] / max(samples_seen, 1.0)),
        "lr": epoch_lr,
        "samples_per_second": samples_seen / seconds,
        "data_wait_share": stats.wait / seconds,
        "first_batch_seconds": stats.first_wait,
        "mlflow_run_id": w.mlflow_run_id,
    }


def _validate_epoch(w: _Worker, metrics: dict[str, Any], started: float) -> dict[str, torch.Tensor]:
    """Rank 0: validate the evaluation model into `metrics`, add the epoch to the history; the sample images."""
    val_metrics, samples = _validate(w.trainables.eval_model, w.val_batches, w.cfg, w.device, w.trainables.loss_fn)
    metrics |= val_metrics
    metrics["epoch_seconds"] = time.perf_counter() - started
    w.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return samples


def _write_checkpoint(w: _Worker, epoch: int) -> str:
    """Rank 0: this epoch's checkpoint in a new temporary folder (`srtn.train.checkpoints` format)."""
    t, cfg = w.trainables, w.cfg
    ckpt_dir = tempfile.mkdtemp(prefix="srtn-ckpt-")
    train_state = {
        "epoch": epoch,
        "model": t.net.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
        "ema": t.ema.state_dict() if t.ema is not None else None,
        "rng": _rng_state(),
        "history": w.history,
        "mlflow_run_id": w.mlflow_run_id,
    }
    meta = {
        "model": cfg.model.name,
        "model_kwargs": cfg.model.kwargs,
        "scale": cfg.data.scale,
        "epoch": epoch,
        "ema": t.ema is not None,
        "metrics": w.history[-1],
        "mlflow_run_id": w.mlflow_run_id,
        "config": flatten(cfg),
    }
    save_checkpoint(ckpt_dir, train_state, t.eval_model, meta)
    return ckpt_dir


def _report(metrics: dict[str, Any], ckpt_dir: str | None) -> None:
    """Every rank reports (a barrier); only rank 0 brings a checkpoint and its metrics count."""
    import ray.train

    try:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None)
    finally:
        if ckpt_dir:
            shutil.rmtree(ckpt_dir, ignore_errors=True)


def _log_epoch(
    w: _Worker, log: track.EpochLogger, epoch: int, metrics: dict[str, Any], samples: dict[str, torch.Tensor]
) -> None:
    """Rank 0: the epoch's metrics (and sample grid) to MLflow once its checkpoint is registered, and a log line.

    Logged only once the controller has registered this checkpoint (report returns when it is uploaded;
    registration is asynchronous): a worker that dies before that restarts from the previous checkpoint
    and redoes this epoch, which must not appear twice in MLflow. A crash after registration but before
    this log is repaired by `backfill` on resume."""
    import ray.train

    epochs = w.cfg.optim.epochs
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    log.log_epoch(epoch, {k: v for k, v in metrics.items() if k != "epoch"})
    # In the worker's log file (the driver prints the same line, `srtn.train.progress`). A logger, not print:
    # Train V2 redirects print to its logger *and* tees it to Ray's wrapped stdout.
    logger.info(epoch_line(metrics, epochs))
    every = w.cfg.run.log_images_every
    if every and samples and (epoch % every == 0 or epoch == epochs):
        log.log_images(epoch, samples, max_rows=w.cfg.run.num_images)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One Ray Train worker: train `config["cfg"]` (a TrainConfig dump) from the latest checkpoint, if any."""
    w = _setup(config)
    epochs = w.cfg.optim.epochs
    next_epoch: EpochBatches | None = None
    for epoch in range(w.start_epoch, epochs + 1):
        _maybe_inject_fault(w.cfg, epoch, w.rank, w.run_dir)
        epoch_lr = w.trainables.optimizer.param_groups[0]["lr"]
        stats = _train_epoch(w, next_epoch)
        # the next epoch's first batch is fetched while this one validates and checkpoints
        next_epoch = EpochBatches(w.train_it, **w.iter_kwargs) if epoch < epochs else None
        metrics = _epoch_metrics(w, epoch, stats, epoch_lr)
        samples: dict[str, torch.Tensor] = {}
        ckpt_dir = None
        if w.rank == 0:
            samples = _validate_epoch(w, metrics, stats.started)
            ckpt_dir = _write_checkpoint(w, epoch)
        _report(metrics, ckpt_dir)
        if w.epoch_logger is not None:
            _log_epoch(w, w.epoch_logger, epoch, metrics, samples)
    return {"mlflow_run_id": w.mlflow_run_id, "last_epoch": w.history[-1]["epoch"] if w.history else None}
