"""The per-worker training loop that Ray Train runs (`train_loop_per_worker`), and rank 0's validation.

Each worker resumes from `ray.train.get_checkpoint()` when there is one, trains one epoch over its shard of
the train split, and reports every epoch; rank 0 validates on the whole val split, writes the checkpoint
(`srtn.checkpoints`) and logs the epoch to MLflow once the controller has registered that checkpoint.
See `srtn.training` for the driver and how resume works.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from srtn import storage, tracking
from srtn.checkpoints import STATE_FILE, save_checkpoint
from srtn.config.base import flatten
from srtn.config.train import TrainConfig

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


class _ValBatches:
    """The val split's batches for rank 0: streamed from Ray Data, and with `data.cache_val` kept in host
    memory after the first complete pass. Re-executing the val pipeline in the worker every epoch also
    delayed the next epoch's first train batch by 1-2 s here (0.5 s without it)."""

    def __init__(self, val_iter: Any, batch_size: int, *, cache: bool) -> None:
        self.val_iter, self.batch_size, self.cache = val_iter, batch_size, cache
        self._batches: list[dict[str, Any]] | None = None

    def __call__(self, device: torch.device) -> Any:
        if self._batches is not None:
            for batch in self._batches:
                yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            return
        kept: list[dict[str, Any]] = []
        for batch in self.val_iter.iter_torch_batches(batch_size=self.batch_size, device="cpu"):
            if self.cache:
                kept.append(batch)
            yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if self.cache:
            self._batches = kept


class _EpochBatches:
    """One epoch's train batches, the first requested at once in a thread. Created as the previous epoch's
    last step ends, Ray Data's per-epoch start (a new execution of the pipeline: 0.6-1.6 s here) overlaps
    that epoch's validation and checkpoint instead of delaying this one's first step. With several
    workers each one starts its next epoch this way, so Ray Data's epoch barrier is met while rank 0
    validates; the training thread waits only if that first batch is still not there when it asks."""

    def __init__(self, train_iter: Any, **iter_kwargs: Any) -> None:
        self._batches = iter(train_iter.iter_torch_batches(**iter_kwargs))
        self._first: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fetch_first, name="srtn-next-epoch", daemon=True)
        self._thread.start()

    def _fetch_first(self) -> None:
        try:
            self._first = next(self._batches, None)
        except BaseException as e:  # re-raised in the training thread
            self._error = e

    def __iter__(self) -> Iterator[Any]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._first is None:
            return
        first, self._first = self._first, None
        yield first
        yield from self._batches


def _in_memory_format(batch: dict[str, torch.Tensor], channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) of a batch, both channels_last when the model is. The pipeline yields NCHW-contiguous
    arrays (Arrow tensors are contiguous): converted once here, HR too, so the loss compares like layouts."""
    import torch

    lr, hr = batch["lr"], batch["hr"]
    if channels_last:
        lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
    return lr, hr


def _validate(
    model: torch.nn.Module, val_batches: _ValBatches, cfg: TrainConfig, device: torch.device, loss_fn: Any
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
            lr, hr = _in_memory_format(batch, cfg.optim.channels_last)
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


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One Ray Train worker: train `config["cfg"]` (a TrainConfig dump) from the latest checkpoint, if any."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from srtn.models import build_model

    cfg = TrainConfig.model_validate(config["cfg"])
    o = cfg.optim
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.data.seed)  # the same initial weights on every rank

    net = build_model(cfg.model.name, cfg.data.scale, **cfg.model.kwargs)
    state: dict[str, Any] | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
    if o.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(net)  # to the device; DDP when world > 1
    opt_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(net.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    if o.scheduler == "cosine":
        scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.epochs, eta_min=o.min_lr)
    elif o.scheduler == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=o.gamma)
    else:
        scheduler = None
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(o.ema_decay), use_buffers=True) if o.ema_decay else None
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
            if o.scheduler == "cosine":
                scheduler.T_max = o.epochs  # a rerun may ask for more epochs than the first run
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        if rank == 0 and state.get("rng"):
            _set_rng_state(state["rng"])
        history = state["history"]
        start_epoch = int(state["epoch"]) + 1
    if rank:
        torch.manual_seed(cfg.data.seed + 7919 * rank + start_epoch)

    loss_fn = F.l1_loss if o.loss == "l1" else F.mse_loss
    epoch_logger = tracking.EpochLogger(config["tracking_uri"], config["mlflow_run_id"]) if rank == 0 else None
    if epoch_logger is not None and history:
        epoch_logger.backfill(history)
    train_it = ray.train.get_dataset_shard("train")
    val_batches = _ValBatches(ray.train.get_dataset_shard("val"), cfg.batch_per_worker, cache=cfg.data.cache_val)
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    buffer = max(cfg.data.shuffle_buffer, cfg.batch_per_worker) if cfg.data.shuffle_buffer else None
    iter_kwargs = {
        "batch_size": cfg.batch_per_worker,
        "local_shuffle_buffer_size": buffer,
        "prefetch_batches": 2,
        "device": device,
    }
    next_epoch: _EpochBatches | None = None

    for epoch in range(start_epoch, o.epochs + 1):
        _maybe_inject_fault(cfg, epoch, rank, config["run_dir"])
        t0 = time.perf_counter()
        wait = 0.0
        first_wait: float | None = None  # time to the first batch: the pipeline's start-up each epoch
        epoch_lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # sum of batch losses x size, samples
        model.train()
        batches = iter(next_epoch or _EpochBatches(train_it, **iter_kwargs))
        next_epoch = None
        while True:
            tw = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - tw
            if first_wait is None:
                first_wait = wait
            if batch is None:
                break
            lr, hr = _in_memory_format(batch, o.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=o.bf16):
                loss = loss_fn(model(lr).float(), hr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(net)
            loss_sum[0] += loss.detach().double() * hr.shape[0]  # no host sync per step
            loss_sum[1] += hr.shape[0]
        train_seconds = time.perf_counter() - t0
        if epoch < o.epochs:
            next_epoch = _EpochBatches(train_it, **iter_kwargs)
        if distributed:
            dist.all_reduce(loss_sum)
        if scheduler is not None:
            scheduler.step()
        samples_seen = float(loss_sum[1])
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(loss_sum[0] / max(samples_seen, 1.0)),
            "lr": epoch_lr,
            "samples_per_second": samples_seen / max(train_seconds, 1e-9),
            "data_wait_share": wait / max(train_seconds, 1e-9),
            "first_batch_seconds": first_wait or 0.0,
            "mlflow_run_id": config["mlflow_run_id"],
        }
        ckpt_dir = None
        if rank == 0:
            eval_model = ema.module if ema is not None else net
            val_metrics, samples = _validate(eval_model, val_batches, cfg, device, loss_fn)
            metrics |= val_metrics
            metrics["epoch_seconds"] = time.perf_counter() - t0
            history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            ckpt_dir = tempfile.mkdtemp(prefix="srtn-ckpt-")
            train_state = {
                "epoch": epoch,
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "ema": ema.state_dict() if ema is not None else None,
                "rng": _rng_state(),
                "history": history,
                "mlflow_run_id": config["mlflow_run_id"],
            }
            meta = {
                "model": cfg.model.name,
                "model_kwargs": cfg.model.kwargs,
                "scale": cfg.data.scale,
                "epoch": epoch,
                "ema": ema is not None,
                "metrics": history[-1],
                "mlflow_run_id": config["mlflow_run_id"],
                "config": flatten(cfg),
            }
            save_checkpoint(ckpt_dir, train_state, eval_model, meta)
        try:
            # every rank reports (a barrier); only rank 0 brings a checkpoint and its metrics count
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None)
        finally:
            if ckpt_dir:
                import shutil

                shutil.rmtree(ckpt_dir, ignore_errors=True)
        if epoch_logger is not None:
            # Log only once the controller has registered this checkpoint (report returns when it is
            # uploaded; registration is asynchronous): a worker that dies before that restarts from the
            # previous checkpoint and redoes this epoch, which must not appear twice in MLflow. A crash
            # after registration but before this log is repaired by `backfill` on resume.
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
            epoch_logger.log_epoch(epoch, {k: v for k, v in metrics.items() if k != "epoch"})
            # A logger, not print: Train V2 redirects print to its logger *and* tees it to Ray's wrapped
            # stdout, so every printed line reached the driver twice.
            logger.info(
                "epoch %d/%d: train_loss %.5f  val_psnr %.3f dB  val_ssim %.4f  %.1f samples/s  data wait %.0f%%",
                epoch,
                o.epochs,
                metrics["train_loss"],
                metrics["val_psnr"],
                metrics["val_ssim"],
                metrics["samples_per_second"],
                100 * metrics["data_wait_share"],
            )
            every = cfg.run.log_images_every
            if every and samples and (epoch % every == 0 or epoch == o.epochs):
                epoch_logger.log_images(epoch, samples, max_rows=cfg.run.num_images)
    return {"mlflow_run_id": config["mlflow_run_id"], "last_epoch": history[-1]["epoch"] if history else None}
