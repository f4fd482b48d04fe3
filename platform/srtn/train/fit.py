"""Training: a Ray Train V2 `TorchTrainer` (DDP: gloo on CPU, NCCL on GPUs) over tile shards, tracked in MLflow.

Driver (`fit`): check the tracking server (fail fast, before Ray), create or resume the MLflow run, build
the Ray Datasets (`srtn.train.datasets`) and the trainer, `fit()`, then log the best (or last) checkpoint's
weights as the MLflow model and register it. Workers (`srtn.train.loop.train_loop_per_worker`): train,
validate on rank 0, checkpoint (`srtn.train.checkpoints`) and report every epoch, log per-epoch metrics and sample
grids from rank 0.

Resume, both ways, comes from Ray Train's own state in `<storage_path>/<run name>/`:
- a worker dies: `FailureConfig(max_failures)` restarts the worker group, `ray.train.get_checkpoint()`
  hands every worker the *latest* reported checkpoint (the checkpoint manager always keeps it, whatever
  `num_to_keep` and the score say), and the loop continues at `epoch + 1`;
- the same command is run again with the same `run.name` and `run.storage_path`: the new controller loads
  the checkpoint manager snapshot from that folder, so `get_checkpoint()` again returns the latest one.
`<run dir>/srtn_run.json` ties the Ray run to its MLflow run id, so a resumed run logs into the same
MLflow run. Rank 0 logs an epoch's metrics only after the controller has registered its checkpoint
(`get_all_reported_checkpoints`), so MLflow never holds an epoch that a restart will redo; the checkpoint
carries the metric history and rank 0 backfills any epoch MLflow missed. Every epoch thus appears once
with `step=epoch`, and the step never goes back.

Validation runs on rank 0 over the whole val split (not split across workers) while the other ranks wait
in `ray.train.report`: Train's split of a dataset is `equal=True` and drops rows to equalise shards, so
rank-0 validation is the only way to have exact metrics that do not change with the number of workers.
Val sets here are small (about 10% of the tiles, no backward pass).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from srtn import storage, track
from srtn.config.train import TrainConfig
from srtn.console import is_verbose
from srtn.resources import check_fits
from srtn.train.checkpoints import HISTORY_FILE, checkpoint_file, load_checkpoint_model
from srtn.train.loop import train_loop_per_worker

if TYPE_CHECKING:
    from ray.train import Checkpoint
    from ray.train.torch import TorchTrainer

__all__ = [
    "TrainingOutcome",
    "build_trainer",
    "fit",
    "load_checkpoint_model",
    "run_training",
    "train_loop_per_worker",
]

RUN_FILE = "srtn_run.json"  # in the Ray run dir: the MLflow run this Ray run logs to


@dataclass
class TrainingOutcome:
    """What `fit` returns: where the run, its model and its checkpoints are, and its per-epoch metrics."""

    run_name: str
    run_path: str
    mlflow_run_id: str
    experiment_id: str
    tracking_uri: str
    model_uri: str | None
    registered_model_version: str | None
    best_checkpoint: str | None
    latest_checkpoint: str | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    runs_url: str = ""


# --------------------------------------------------------------------------- driver


def _absolute(path: str) -> str:
    return path if storage.is_remote(path) else os.path.abspath(path)


def _check_resources(cfg: TrainConfig) -> None:
    """Train workers must leave CPU for Ray Data's read/decode tasks (`scaling.data_cpus`), else the run waits
    forever for its first batch: raise ResourceError instead."""
    s = cfg.scaling
    need = {"CPU": s.num_workers * s.cpus_per_worker + s.data_cpus}
    if s.use_gpu:
        need["GPU"] = s.num_workers * s.gpus_per_worker
    check_fits(
        need,
        what=(
            f"{s.num_workers} Train worker(s) x {s.cpus_per_worker:g} CPU"
            f" + scaling.data_cpus={s.data_cpus:g} for Ray Data"
        ),
        hint="lower scaling.cpus_per_worker (fractions work), scaling.num_workers or scaling.data_cpus",
    )


def build_trainer(
    cfg: TrainConfig,
    *,
    run_name: str,
    mlflow_run_id: str,
    tracking_uri: str,
    storage_path: str | None = None,
    callbacks: Sequence[Any] = (),
    datasets: dict[str, Any] | None = None,
) -> TorchTrainer:
    """The `TorchTrainer` for `cfg`; `fit` calls it, Tune can too (with a trial's run name, storage path and
    e.g. `ray.tune.integration.ray_train.TuneReportCallback()` in `callbacks`)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from srtn.train.datasets import build_datasets

    s = cfg.scaling
    storage_uri = _absolute(storage_path or cfg.run.storage_path)
    fs, fs_path = storage.resolve(storage_uri)
    resources = {"CPU": s.cpus_per_worker} | ({"GPU": s.gpus_per_worker} if s.use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "tracking_uri": tracking_uri,
            "mlflow_run_id": mlflow_run_id,
            "run_dir": storage.join(storage_uri, run_name),
        },
        scaling_config=ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker=resources,
            placement_strategy=s.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=fs_path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.run.num_to_keep,
                checkpoint_score_attribute="val_psnr",
                checkpoint_score_order="max",
            ),
            callbacks=list(callbacks) or None,
            # Train's per-report and per-checkpoint INFO lines go to its log files (logs/train/ of the Ray
            # session), not the console, unless verbose; srtn's own epoch line is logged by rank 0
            logging_config=LoggingConfig(log_level="INFO" if is_verbose() else "WARNING"),
        ),
        datasets=datasets if datasets is not None else build_datasets(cfg),
        # val is not split: rank 0 validates on all of it (exact metrics, see the module docstring)
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def _open_mlflow_run(
    cfg: TrainConfig, *, uri: str, experiment_id: str, run_name: str, run_dir: str, parent_run_id: str | None
) -> tuple[str, bool]:
    """The MLflow run of this Ray run: the one recorded in `<run dir>/srtn_run.json` (resume), else a new one."""
    tags = {
        "srtn.run_name": run_name,
        "srtn.run_path": run_dir,
        "srtn.model": cfg.model.name,
        "srtn.scale": cfg.data.scale,
        "srtn.dataset": cfg.data.name,
        "srtn.job": "train",
    }
    run_id, resumed, _ = track.open_or_resume_run(
        uri,
        experiment_id,
        record_uri=storage.join(run_dir, RUN_FILE),
        record_key="mlflow_run_id",
        run_name=run_name,
        tags=tags,
        parent_run_id=parent_run_id,
    )
    return run_id, resumed


def _provenance_tags(cfg: TrainConfig) -> dict[str, Any]:
    from srtn.data.manifest import manifest_hash
    from srtn.models import build_model

    model = build_model(cfg.model.name, cfg.data.scale, **cfg.model.kwargs)
    try:
        data_hash = manifest_hash(cfg.data.shards)
    except (OSError, ValueError, KeyError):
        data_hash = "unknown (no _manifest.json)"
    return {
        "srtn.param_count": sum(p.numel() for p in model.parameters()),
        "srtn.shards_manifest_hash": data_hash,
        "srtn.data.shards": cfg.data.shards,
        "srtn.git_commit": track.git_commit() or "unknown",
    }


def _finished_result(run_dir: str, epochs: int) -> Any:
    """The stored Ray Train result of a run that already reached `epochs` (a rerun then has nothing to
    train and starts no workers), else None."""
    from ray.train import Result

    fs, path = storage.resolve(run_dir)
    try:
        result = Result.from_path(path, storage_filesystem=fs)
    except (RuntimeError, OSError, ValueError):
        return None
    done = (result.metrics or {}).get("epoch", 0)
    return result if result.checkpoint is not None and done >= epochs else None


def _score(metrics: dict[str, Any]) -> float:
    value = metrics.get("val_psnr", float("-inf"))
    return float("-inf") if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _log_final_model(
    cfg: TrainConfig, *, uri: str, run_id: str, checkpoint: Checkpoint, metrics: dict[str, Any]
) -> tuple[str, str | None]:
    """Log the checkpoint's evaluation weights as the run's model (pickle format, any input size) and
    register it; skipped when this very checkpoint was logged already (a rerun of a finished run)."""

    c = track.client(uri)
    tags = c.get_run(run_id).data.tags
    if tags.get("srtn.model_checkpoint") == checkpoint.path and tags.get("srtn.model_uri"):
        return tags["srtn.model_uri"], tags.get("srtn.model_version")
    model = load_checkpoint_model(checkpoint)
    p = cfg.data.patch_size or 32
    model_uri, version = track.log_model(
        uri, run_id, model, registered_model_name=cfg.run.registered_model_name, example_size=(1, 3, p, p)
    )
    track.set_tags(
        uri,
        run_id,
        {
            "srtn.model_uri": model_uri,
            "srtn.model_checkpoint": checkpoint.path,
            "srtn.model_epoch": metrics.get("epoch"),
            "srtn.model_version": version,
        },
    )
    return model_uri, version


def fit(
    cfg: TrainConfig,
    *,
    run_name: str | None = None,
    storage_path: str | None = None,
    parent_run_id: str | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainingOutcome:
    """Train `cfg` end to end and return where everything is. Raises `TrackingError` before any Ray work
    when the tracking server is unreachable, and `ShardError` (naming every bad file) when the train or val
    shards do not match their manifest (missing, extra, truncated or changed files, no `lr_x<scale>`), so a
    bad shard never reaches Ray Train; re-raises Ray's `TrainingFailedError` (the MLflow run is then marked
    FAILED; running again with the same run name resumes it)."""
    from srtn.data.manifest import manifest_hash
    from srtn.data.reader import check_shards
    from srtn.runtime import init_ray
    from srtn.train.progress import epoch_progress

    uri = track.resolve_tracking_uri(cfg.tracking.uri)
    track.check_tracking_server(uri)
    check_shards(cfg.data.shards, cfg.data.scale)
    experiment_id = track.get_or_create_experiment(cfg.experiment_name, tracking_uri=uri)
    name = run_name or cfg.run.name or f"{cfg.default_run_name()}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage_uri = _absolute(storage_path or cfg.run.storage_path)
    run_dir = storage.join(storage_uri, name)
    # the config as run: logged as params and handed to the workers
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": name, "storage_path": storage_uri})})
    run_id, resumed = _open_mlflow_run(
        cfg,
        uri=uri,
        experiment_id=experiment_id,
        run_name=name,
        run_dir=run_dir,
        parent_run_id=parent_run_id or cfg.tracking.parent_run_id,
    )
    c = track.client(uri)
    try:
        track.log_params_flat(uri, run_id, cfg)
        track.set_tags(uri, run_id, _provenance_tags(cfg) | {"srtn.resumed": resumed})
        track.log_shards_input(
            uri, run_id, shards=cfg.data.shards, name=cfg.data.name, context="train", digest=manifest_hash
        )
        result = _finished_result(run_dir, cfg.optim.epochs) if resumed else None
        if result is None:
            init_ray()
            _check_resources(cfg)
            with epoch_progress(cfg.optim.epochs) as reporters:
                trainer = build_trainer(
                    cfg,
                    run_name=name,
                    mlflow_run_id=run_id,
                    tracking_uri=uri,
                    storage_path=storage_uri,
                    callbacks=[*callbacks, *reporters],
                )
                result = trainer.fit()
        candidates = [(ck, m) for ck, m in (result.best_checkpoints or []) if ck is not None]
        if result.checkpoint is not None:
            candidates.append((result.checkpoint, result.metrics or {}))
        if not candidates:
            raise RuntimeError(f"run {name} finished without a checkpoint")
        latest_ckpt = result.checkpoint or candidates[-1][0]
        if cfg.run.final_model == "best":
            best_ckpt, best_metrics = max(candidates, key=lambda cm: _score(cm[1]))
        else:
            best_ckpt, best_metrics = latest_ckpt, result.metrics or {}
        model_uri, version = _log_final_model(cfg, uri=uri, run_id=run_id, checkpoint=best_ckpt, metrics=best_metrics)
        history = json.loads(checkpoint_file(latest_ckpt, HISTORY_FILE))
        c.set_terminated(run_id, "FINISHED")
    except BaseException as exc:
        c.set_terminated(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    return TrainingOutcome(
        run_name=name,
        run_path=run_dir,
        mlflow_run_id=run_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        model_uri=model_uri,
        registered_model_version=version,
        best_checkpoint=best_ckpt.path,
        latest_checkpoint=latest_ckpt.path,
        best_metrics={k: v for k, v in best_metrics.items() if not isinstance(v, (dict, list))},
        history=history,
        runs_url=track.runs_url(uri, experiment_id),
    )


def run_training(cfg: TrainConfig) -> int:
    """`srtn train`: fit, then print the run id, the model URI and the MLflow UI link; 0 on success.

    A failed run (workers died more than `run.max_failures` times) returns 1 and prints how to resume it."""
    from ray.train import TrainingFailedError

    name = cfg.run.name or f"{cfg.default_run_name()}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"run: {name}  (the same --set run.name={name} resumes it)")
    try:
        outcome = fit(cfg, run_name=name)
    except TrainingFailedError as exc:
        print(f"srtn train: training failed: {exc}\nresume with: --set run.name={name}", file=sys.stderr)
        return 1
    best = outcome.best_metrics
    print(f"done: {len(outcome.history)} epochs, checkpoints in {outcome.run_path}")
    print(
        f"best: epoch {best.get('epoch')}  val_psnr {best.get('val_psnr', float('nan')):.3f} dB  "
        f"val_ssim {best.get('val_ssim', float('nan')):.4f}"
    )
    print(f"mlflow run id: {outcome.mlflow_run_id}")
    print(
        f"model: {outcome.model_uri}"
        + (
            f"  (registered {cfg.run.registered_model_name} v{outcome.registered_model_version})"
            if outcome.registered_model_version
            else ""
        )
    )
    *serve, link = track.ui_hint(outcome.tracking_uri, outcome.experiment_id)
    for line in serve:
        print(f"MLflow UI: {line}  then open:")
    print(f"runs: {link}")
    return 0
