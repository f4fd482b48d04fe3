"""Tuning: a Ray Tune sweep whose trials are whole training runs (Ray Train V2 inside Tune), tracked in MLflow.

This module is the sweep's driver: it checks everything before any trial starts, opens the MLflow parent
run, runs the `Tuner` and reports the best trial. What each trial runs is `srtn.tune.trial` (a function trial
calling `srtn.train.fit.fit`, whose Train run is named `<sweep>-<trial id>` under `<sweep dir>/trials/`);
the searcher and ASHA (`time_attr=epoch`, which stops bad trials at its rungs) are `srtn.tune.scheduler`;
the MLflow summary of the finished sweep is `srtn.tune.report`.

Before any trial starts: the config is valid (search-space keys checked at load), the tracking server
answers, and one trial (driver + Train workers + Ray Data's `scaling.data_cpus`) fits the cluster, else
`ResourceError` (`srtn.resources`).

A sweep's folder, `<storage_path>/<run.name>/`: Tune's experiment state, `srtn_sweep.json` (the MLflow parent
run), `trials/<sweep>-<trial id>/` (each trial's Train run: checkpoints and its MLflow child run id).

Resume (`--resume`): `Tuner.restore` keeps finished trials and restarts unfinished and errored ones; a
restarted trial calls `fit` with the same run name, so its Train run continues from its latest checkpoint
and logs into the same MLflow child run; `srtn_sweep.json` gives the same parent run; `ReplayingASHA` gets
its rungs back from the recorded results (Tune does not save scheduler state).

MLflow: the sweep is a parent run (params: the whole tune config flattened, search space included; at the
end: counts, best metric, trials table, figure: `srtn.tune.report`), every trial a child run made by
`fit` (params, per-epoch metrics, its model); the best trial's model is registered as `run.registered_model_name`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from srtn import storage, track
from srtn.config.train import TrainConfig
from srtn.config.tune import TuneConfig
from srtn.errors import ConfigError
from srtn.resources import check_fits, cluster_resources, describe, how_many_fit
from srtn.tune import report as report
from srtn.tune.report import TrialSummary
from srtn.tune.scheduler import build_scheduler, build_search_alg, param_space
from srtn.tune.trial import TrialPlan, make_trainable

__all__ = [
    "SWEEP_FILE",
    "TRIALS_DIR",
    "SweepOutcome",
    "TrialSummary",
    "check_cluster",
    "run_tune",
    "trial_requirements",
    "tune_sweep",
]

logger = logging.getLogger(__name__)

SWEEP_FILE = "srtn_sweep.json"  # in the sweep folder: the MLflow parent run of the sweep
TRIALS_DIR = "trials"  # in the sweep folder: every trial's Train run


@dataclass
class SweepOutcome:
    name: str
    path: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    best_trial_id: str | None
    best_params: dict[str, Any]
    best_config: dict[str, Any] | None  # the best trial's whole TrainConfig: `srtn train` can rerun it
    best_metrics: dict[str, Any]
    best_run_id: str | None
    model_uri: str | None
    registered_model_version: str | None
    trials: list[TrialSummary] = field(default_factory=list)
    runs_url: str = ""


# --------------------------------------------------------------------------- resources


def _absolute(path: str) -> str:
    return path if storage.is_remote(path) else os.path.abspath(path)


def _one_trial(cfg: TuneConfig, train: TrainConfig) -> dict[str, float]:
    """What one trial of training config `train` holds at once: its driver (with `trial.driver_resources`),
    its Train workers and its Ray Data tasks' CPU (`scaling.data_cpus`, the rule `fit` checks in the trial)."""
    s = train.scaling
    one = {"CPU": cfg.trial.driver_cpus + s.num_workers * s.cpus_per_worker + s.data_cpus}
    if s.use_gpu:
        one["GPU"] = s.num_workers * s.gpus_per_worker
    for k, v in (cfg.trial.driver_resources or {}).items():
        one[k] = one.get(k, 0.0) + v
    return one


def trial_requirements(cfg: TuneConfig) -> dict[str, float]:
    """What one trial holds at once: its driver, its Train workers and Ray Data's CPU; the largest over the
    values the search space can give `scaling.*` (each key's range ends or listed values)."""
    configs = [cfg.train] + [cfg.trial_config({k: v}) for k, vs in cfg.search_space_values().items() for v in vs]
    need: dict[str, float] = {}
    for c in configs:
        for k, v in _one_trial(cfg, c).items():
            need[k] = max(need.get(k, 0.0), v)
    return need


def _wait_for_autoscaler(cfg: TuneConfig, need: dict[str, float], have: dict[str, float]) -> dict[str, float]:
    """Ask the autoscaler for one trial's bundles and wait up to `cluster_wait_s` for them to fit; the
    cluster's resources at the end."""
    from ray.autoscaler.sdk import request_resources

    s = cfg.train.scaling
    worker = {"CPU": s.cpus_per_worker} | ({"GPU": s.gpus_per_worker} if s.use_gpu else {})
    request_resources(bundles=[{"CPU": cfg.trial.driver_cpus + s.data_cpus}] + [worker] * s.num_workers)
    deadline = time.monotonic() + cfg.cluster_wait_s
    print(f"waiting up to {cfg.cluster_wait_s:g} s for the autoscaler to add {describe(need, need)}", flush=True)
    while how_many_fit(need, have) < 1 and time.monotonic() < deadline:
        time.sleep(5)
        have = cluster_resources()
    request_resources(bundles=[])  # the request is persistent; the trials' own demand takes over
    return have


def _one_trial_hint(cfg: TuneConfig) -> str:
    """What makes up one trial and which keys to lower: the end of the `ResourceError` of `check_cluster`."""
    s = cfg.train.scaling
    gpu = f" + {s.gpus_per_worker:g} GPU" if s.use_gpu else ""
    return (
        f"that is driver {cfg.trial.driver_cpus:g} CPU (trial.driver_cpus) + {s.num_workers} Train worker(s) x "
        f"{s.cpus_per_worker:g} CPU{gpu} + {s.data_cpus:g} CPU for Ray Data (train.scaling.data_cpus). Lower "
        "train.scaling.* or trial.driver_cpus, or use a bigger cluster (cluster_wait_s waits for an autoscaler)"
    )


def _concurrency(cfg: TuneConfig, fits: int, need: dict[str, float], have: dict[str, float]) -> int:
    """How many trials run at once, given that `fits` fit the cluster now (see `check_cluster`)."""
    if cfg.max_concurrent_trials is None:
        return min(fits, 64)
    if cfg.max_concurrent_trials <= fits:
        return cfg.max_concurrent_trials
    # More trials than fit do not just queue: each started trial's Train workers hold CPUs that the other
    # trials' Ray Data reads need, and they can wait on each other forever. Clamp, unless an autoscaler
    # is expected to grow the cluster (cluster_wait_s > 0).
    head = (
        f"max_concurrent_trials {cfg.max_concurrent_trials}: only {fits} trial(s) fit the cluster now "
        f"({describe(have, need)}; one trial needs {describe(need, need)})"
    )
    n = cfg.max_concurrent_trials if cfg.cluster_wait_s > 0 else fits
    msg = f"{head}; running {n} at once" + (", counting on the autoscaler" if cfg.cluster_wait_s > 0 else "")
    logger.warning(msg)
    return n


def check_cluster(cfg: TuneConfig) -> int:
    """Raise `ResourceError` unless one trial fits the cluster (after `cluster_wait_s` for an autoscaler);
    return how many trials run at once: `max_concurrent_trials` (at most as many as fit, unless an autoscaler
    is awaited), or as many as fit when it is null."""
    need = trial_requirements(cfg)
    have = cluster_resources()
    if how_many_fit(need, have) < 1 and cfg.cluster_wait_s > 0:
        have = _wait_for_autoscaler(cfg, need, have)
    fits = check_fits(need, what="one trial", hint=_one_trial_hint(cfg), have=have)
    return _concurrency(cfg, fits, need, have)


def _trial_config_for_sweep(cfg: TuneConfig, uri: str) -> TuneConfig:
    """The sweep's train block as trials use it: absolute local paths (trial drivers run in their own working
    directory), the resolved tracking URI and experiment; trials register nothing (the sweep registers the best)."""
    t = cfg.train
    data = t.data.model_copy(update={"shards": _absolute(t.data.shards)})
    run = t.run.model_copy(update={"name": None, "experiment": cfg.experiment_name, "registered_model_name": None})
    tracking_cfg = t.tracking.model_copy(update={"uri": uri, "parent_run_id": None})
    train = t.model_copy(update={"data": data, "run": run, "tracking": tracking_cfg})
    return cfg.model_copy(update={"train": train})


# --------------------------------------------------------------------------- MLflow parent run


def _config_hash(cfg: TuneConfig) -> str:
    dump = cfg.model_dump(mode="json", exclude={"resume"})
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def _open_parent_run(cfg: TuneConfig, *, uri: str, experiment_id: str, name: str, sweep_uri: str) -> str:
    """The sweep's parent run: the one in `srtn_sweep.json` when it still exists, else a new one (its params:
    the whole tune config flattened)."""
    config_hash = _config_hash(cfg)
    tags = {
        "srtn.job": "tune",
        "srtn.sweep": name,
        "srtn.sweep_path": sweep_uri,
        "srtn.model": cfg.train.model.name,
        "srtn.scale": cfg.train.data.scale,
        "srtn.dataset": cfg.train.data.name,
        "srtn.git_commit": track.git_commit() or "unknown",
    }

    def log_params(run_id: str) -> None:
        track.log_params_flat(uri, run_id, cfg.model_dump(mode="json", exclude={"resume"}))

    run_id, _, previous = track.open_or_resume_run(
        uri,
        experiment_id,
        record_uri=storage.join(sweep_uri, SWEEP_FILE),
        record_key="parent_run_id",
        run_name=name,
        tags=tags,
        extra_record={"experiment_id": experiment_id, "config_hash": config_hash},
        on_new=log_params,
    )
    if previous and previous.get("config_hash") != config_hash:
        print(
            "warning: the config changed since the sweep started; a resumed sweep keeps its search space and trials",
            file=sys.stderr,
        )
    return run_id


# --------------------------------------------------------------------------- the sweep


def tune_sweep(cfg: TuneConfig) -> SweepOutcome:
    """Run (or with `cfg.resume`, continue) the sweep and return its best trial and per-trial summary.

    Fails before any trial starts: `TrackingError` (tracking server unreachable), `ConfigError` (the sweep
    folder exists and `resume` is off), `ShardError` (the shards do not match their manifest),
    `ResourceError` (one trial does not fit the cluster)."""
    from ray import tune

    from srtn.data.manifest import manifest_hash
    from srtn.data.reader import check_shards
    from srtn.runtime import init_ray

    uri = track.resolve_tracking_uri(cfg.train.tracking.uri)
    track.check_tracking_server(uri)
    check_shards(cfg.train.data.shards, cfg.train.data.scale)  # once here, not in every trial after Ray started
    name = cfg.sweep_name()
    sweep_uri = storage.join(_absolute(cfg.storage_path), name)
    fs, sweep_path = storage.resolve(sweep_uri)
    restore = tune.Tuner.can_restore(sweep_path, storage_filesystem=fs)
    if restore and not cfg.resume:
        raise ConfigError(
            f"sweep {name} already exists at {sweep_uri}: add --resume to continue it, or --set run.name=NEW "
            "for a new sweep",
            key="run.name",
        )
    if cfg.resume and not restore:
        print(f"nothing to resume at {sweep_uri}: starting sweep {name}", flush=True)
    plan_cfg = _trial_config_for_sweep(cfg, uri)

    init_ray()
    concurrent = check_cluster(plan_cfg)
    experiment_id = track.get_or_create_experiment(cfg.experiment_name, tracking_uri=uri)
    parent = _open_parent_run(plan_cfg, uri=uri, experiment_id=experiment_id, name=name, sweep_uri=sweep_uri)
    data = cfg.train.data  # the sweep's shards as the parent run's input (each trial's run logs its own in fit)
    track.log_shards_input(uri, parent, shards=data.shards, name=data.name, context="train", digest=manifest_hash)
    c = track.client(uri)
    print(
        f"sweep {name}: {sweep_uri}  (MLflow parent run {parent}; resume with --resume --set run.name={name})",
        flush=True,
    )
    try:
        plan = TrialPlan(cfg=plan_cfg, name=name, trials_uri=storage.join(sweep_uri, TRIALS_DIR), parent_run_id=parent)
        driver = {"CPU": cfg.trial.driver_cpus, **cfg.trial.driver_resources}
        trainable = tune.with_resources(make_trainable(plan), tune.PlacementGroupFactory([driver]))
        if restore:
            tuner = tune.Tuner.restore(
                sweep_path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(cfg),
                tune_config=tune.TuneConfig(
                    metric=cfg.metric,
                    mode=cfg.mode,
                    scheduler=build_scheduler(cfg, sweep_uri),
                    search_alg=build_search_alg(cfg, concurrent),
                    num_samples=cfg.num_samples,
                    reuse_actors=False,  # a reused actor would keep a stopped trial's Train run alive
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=os.path.dirname(sweep_path.rstrip("/")),
                    storage_filesystem=fs,
                    failure_config=tune.FailureConfig(max_failures=cfg.trial.max_failures),
                ),
            )
        results = tuner.fit()
        trials = report.summarize_trials(cfg, results, uri=uri, experiment_id=experiment_id, name=name)
        frames = {str((r.metrics or {}).get("trial_id")): r.metrics_dataframe for r in results}
        report.close_child_runs(cfg, uri, trials, frames)
        best = report.pick_best(cfg, trials)
        report.log_summary(cfg, uri=uri, parent=parent, trials=trials, best=best)
        model_uri = version = None
        best_config = None
        if best is not None:
            model_uri, version = report.register_best(cfg, uri=uri, parent=parent, best=best)
            best_config = report.best_train_config(cfg, best)
            c.log_dict(parent, best_config, "best_config.json")
        c.set_terminated(parent, "FAILED" if not best else "FINISHED")
    except BaseException:
        c.set_terminated(parent, "FAILED")
        raise
    best_metrics = {}
    if best is not None:
        last = next((r.metrics or {} for r in results if (r.metrics or {}).get("trial_id") == best.trial_id), {})
        best_metrics = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return SweepOutcome(
        name=name,
        path=sweep_uri,
        parent_run_id=parent,
        experiment_id=experiment_id,
        tracking_uri=uri,
        best_trial_id=best.trial_id if best else None,
        best_params=dict(best.params) if best else {},
        best_config=best_config,
        best_metrics=best_metrics,
        best_run_id=best.mlflow_run_id if best else None,
        model_uri=model_uri,
        registered_model_version=version,
        trials=trials,
        runs_url=track.runs_url(uri, experiment_id),
    )


def run_tune(cfg: TuneConfig) -> int:
    """`srtn tune`: run the sweep, print the trials, the best one and the MLflow UI link; 0 when a trial
    succeeded."""
    out = tune_sweep(cfg)
    print(f"\nsweep {out.name}: {len(out.trials)} trials in {out.path}")
    keys = list(cfg.search_space)
    print("  ".join(["trial".ljust(14), "outcome".ljust(13), "epochs", cfg.metric.rjust(9), *keys]))
    for t in out.trials:
        value = "-" if t.metric is None else f"{t.metric:.3f}"
        print(
            "  ".join(
                [
                    t.trial_id.ljust(14),
                    t.outcome.ljust(13),
                    str(t.epochs).rjust(6),
                    value.rjust(9),
                    *(str(t.params.get(k)) for k in keys),
                ]
            )
        )
    if out.best_trial_id is None:
        print("no trial finished with a metric; see the errors above", file=sys.stderr)
        return 1
    print(
        f"best: trial {out.best_trial_id}  {cfg.metric} {out.best_metrics.get(cfg.metric, float('nan')):.3f}  "
        f"params {json.dumps(out.best_params, sort_keys=True)}"
    )
    print(
        f"best trial's MLflow run: {out.best_run_id}  model: {out.model_uri}"
        + (
            f"  (registered {cfg.run.registered_model_name} v{out.registered_model_version})"
            if out.registered_model_version
            else ""
        )
    )
    print(f"MLflow parent run: {out.parent_run_id}")
    for line in track.ui_hint(out.tracking_uri, out.experiment_id):
        print(line)
    return 0
