"""Tuning: a Ray Tune sweep whose trials are whole training runs (Ray Train V2 inside Tune), tracked in MLflow.

Each trial is a Tune function trial that calls `srtn.training.fit` with its training config (the sweep's
`train` block with the trial's sampled params); `fit` builds and fits a `TorchTrainer` whose Train run is
named `<sweep>-<trial id>` under `<sweep dir>/trials/`, and `ray.tune.integration.ray_train.TuneReportCallback`
hands every epoch's metrics to Tune, where ASHA (`time_attr=epoch`) stops bad trials at its rungs. A stopped
trial aborts its Train run before its actor goes (see `_trainable`), so its workers' CPUs/GPUs come back.

Before any trial starts: the config is valid (search-space keys checked at load), the tracking server
answers, and one trial (driver + Train workers + Ray Data) fits the cluster, else `ResourceError`.

A sweep's folder, `<storage_path>/<run.name>/`: Tune's experiment state, `srtn_sweep.json` (the MLflow parent
run), `trials/<sweep>-<trial id>/` (each trial's Train run: checkpoints and its MLflow child run id).

Resume (`--resume`): `Tuner.restore` keeps finished trials and restarts unfinished and errored ones; a
restarted trial calls `fit` with the same run name, so its Train run continues from its latest checkpoint
and logs into the same MLflow child run; `srtn_sweep.json` gives the same parent run; `ReplayingASHA` gets
its rungs back from the recorded results (Tune does not save scheduler state).

MLflow: the sweep is a parent run (params: the whole tune config flattened, search space included; at the
end: counts, best metric, trials table, figure: `srtn.tuning_report`), every trial a child run made by
`fit` (params, per-epoch metrics, its model); the best trial's model is registered as `run.registered_model_name`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ray.train import UserCallback
from ray.tune.schedulers import ASHAScheduler

from srtn import storage, tracking
from srtn import tuning_report as report
from srtn.config.tune import TuneConfig
from srtn.errors import ConfigError, ResourceError
from srtn.tuning_report import TrialSummary

__all__ = [
    "SWEEP_FILE",
    "ReplayingASHA",
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
# Ray Data's file listing takes a whole CPU beside the workers (training._check_resources, which `fit` runs
# again inside every trial, uses the same rule).
DATA_CPU_RESERVE = 1.0


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


def trial_requirements(cfg: TuneConfig) -> dict[str, float]:
    """What one trial holds at once: its driver, its Train workers and Ray Data's CPU; the largest over the
    values the search space can give `scaling.*` (each key's range ends or listed values)."""
    configs = [cfg.train] + [cfg.trial_config({k: v}) for k, vs in cfg.search_space_values().items() for v in vs]
    need: dict[str, float] = {}
    for c in configs:
        s = c.scaling
        one = {"CPU": cfg.trial.driver_cpus + s.num_workers * s.cpus_per_worker + DATA_CPU_RESERVE}
        if s.use_gpu:
            one["GPU"] = s.num_workers * s.gpus_per_worker
        for k, v in (cfg.trial.driver_resources or {}).items():
            one[k] = one.get(k, 0.0) + v
        for k, v in one.items():
            need[k] = max(need.get(k, 0.0), v)
    return need


def _fits(need: dict[str, float], have: dict[str, float]) -> int:
    """How many trials of `need` fit in `have` at once (0: not even one)."""
    counts = [math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(counts) if counts else sys.maxsize


def _describe(res: dict[str, float], keys: Any) -> str:
    return ", ".join(f"{res.get(k, 0.0):g} {k}" for k in sorted({"CPU", *keys}))


def check_cluster(cfg: TuneConfig) -> int:
    """Raise `ResourceError` unless one trial fits the cluster (after `cluster_wait_s` for an autoscaler);
    return how many trials run at once: `max_concurrent_trials` (at most as many as fit, unless an autoscaler
    is awaited), or as many as fit when it is null."""
    import ray

    need = trial_requirements(cfg)
    have = ray.cluster_resources()
    if _fits(need, have) < 1 and cfg.cluster_wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        s = cfg.train.scaling
        worker = {"CPU": s.cpus_per_worker} | ({"GPU": s.gpus_per_worker} if s.use_gpu else {})
        request_resources(bundles=[{"CPU": cfg.trial.driver_cpus + DATA_CPU_RESERVE}] + [worker] * s.num_workers)
        deadline = time.monotonic() + cfg.cluster_wait_s
        print(f"waiting up to {cfg.cluster_wait_s:g} s for the autoscaler to add {_describe(need, need)}", flush=True)
        while _fits(need, have) < 1 and time.monotonic() < deadline:
            time.sleep(5)
            have = ray.cluster_resources()
        request_resources(bundles=[])  # the request is persistent; the trials' own demand takes over
    fits = _fits(need, have)
    if fits < 1:
        s = cfg.train.scaling
        raise ResourceError(
            f"one trial needs {_describe(need, need)} (driver {cfg.trial.driver_cpus:g} CPU + {s.num_workers} Train "
            f"worker(s) x {s.cpus_per_worker:g} CPU" + (f" + {s.gpus_per_worker:g} GPU" if s.use_gpu else "")
            + f" + {DATA_CPU_RESERVE:g} CPU for Ray Data); the cluster has {_describe(have, need)}. Lower "
            "train.scaling.* or trial.driver_cpus, or use a bigger cluster (cluster_wait_s waits for an autoscaler)"
        )
    if cfg.max_concurrent_trials is None:
        return min(fits, 64)
    if cfg.max_concurrent_trials <= fits:
        return cfg.max_concurrent_trials
    # More trials than fit do not just queue: each started trial's Train workers hold CPUs that the other
    # trials' Ray Data reads need, and they can wait on each other forever. Clamp, unless an autoscaler
    # is expected to grow the cluster (cluster_wait_s > 0).
    head = (f"max_concurrent_trials {cfg.max_concurrent_trials}: only {fits} trial(s) fit the cluster now "
            f"({_describe(have, need)}; one trial needs {_describe(need, need)})")
    n = cfg.max_concurrent_trials if cfg.cluster_wait_s > 0 else fits
    msg = f"{head}; running {n} at once" + (", counting on the autoscaler" if cfg.cluster_wait_s > 0 else "")
    logger.warning(msg)
    print(f"warning: {msg}", file=sys.stderr, flush=True)
    return n


# --------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class _Plan:
    """What every trial needs to know (pickled into the trial function)."""

    cfg: TuneConfig
    name: str
    trials_uri: str
    parent_run_id: str


def _finished_history(run_dir: str, epochs: int) -> bool:
    """Whether the trial's Train run already trained all its epochs (a restart after the driver died
    between the last epoch and Tune recording the trial as done)."""
    from ray.train import Result

    if not storage.exists(run_dir):
        return False
    fs, path = storage.resolve(run_dir)
    try:
        result = Result.from_path(path, storage_filesystem=fs)
    except (RuntimeError, OSError, ValueError):
        return False
    return result.checkpoint is not None and (result.metrics or {}).get("epoch", 0) >= epochs


class _ControllerLink(UserCallback):
    """Runs in the Train controller: hands the controller's actor handle to the trial on the first report,
    so that a trial the scheduler stops can abort its Train run (see `_trainable`)."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._sent = False

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not self._sent:
            import ray

            self._sent = True
            self._queue.put(ray.get_runtime_context().current_actor)


def _abort_train_run(queue: Any, done: threading.Event) -> None:
    """Abort the Train run whose controller handle is in `queue` and wait for the trial function to return."""
    import ray
    from ray.util.queue import Empty

    try:
        controller = queue.get(block=False)
    except Empty:
        return  # no epoch reported yet: nothing to abort gracefully
    with contextlib.suppress(ray.exceptions.RayError, TimeoutError):  # it exits while answering: the abort working
        ray.get(controller.abort.remote(), timeout=60)
    done.wait(timeout=60)


def _trainable(plan: _Plan) -> type:
    """The Tune trainable of the sweep: a function trial that runs `fit`, plus a `cleanup` for trials the
    scheduler stops. Tune stops a trial by ending its actor; the Train controller it owns would die with
    it, ungracefully, and the worker group's placement group would stay reserved until the sweep's job
    ends (Ray Train's detached cleaner needs the State API, i.e. a dashboard). So `cleanup` first asks the
    controller to abort (the same call as Ray Train's Ctrl-C handler), which stops the workers and frees
    their resources for the next trial."""
    from ray.tune.trainable import wrap_function

    running: dict[str, tuple[Any, threading.Event, list[bool]]] = {}  # in a trial's process: trial id -> link

    def srtn_trial(config: dict[str, Any]) -> None:
        import ray.tune
        from ray.tune.integration.ray_train import TuneReportCallback
        from ray.util.queue import Queue

        from srtn.training import fit

        trial_id = ray.tune.get_context().get_trial_id()
        cfg = plan.cfg.trial_config(config["params"])
        name = f"{plan.name}-{trial_id}"
        replay = _finished_history(storage.join(plan.trials_uri, name), cfg.optim.epochs)
        callbacks: list[Any] = []
        done, stopping = threading.Event(), [False]
        if not replay:
            queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
            running[trial_id] = (queue, done, stopping)
            callbacks = [_ControllerLink(queue), TuneReportCallback()]
        try:
            outcome = fit(
                cfg, run_name=name, storage_path=plan.trials_uri, parent_run_id=plan.parent_run_id, callbacks=callbacks
            )
        except Exception:
            if stopping[0]:
                return  # stopped by the scheduler: the Train run was aborted on purpose
            raise
        finally:
            running.pop(trial_id, None)
            done.set()
        if replay:  # fit trained nothing, so nothing reached Tune: hand it the stored epochs
            for entry in outcome.history:
                ray.tune.report(dict(entry) | {"mlflow_run_id": outcome.mlflow_run_id})

    class SrtnTrial(wrap_function(srtn_trial)):  # type: ignore[misc]
        def cleanup(self) -> None:
            link = running.get(self.trial_id)
            if link is not None:  # still training: the scheduler stopped it (or the sweep is ending)
                link[2][0] = True
                _abort_train_run(link[0], link[1])
            super().cleanup()

    return SrtnTrial


def _param_space(cfg: TuneConfig) -> dict[str, Any]:
    grid = cfg.searcher == "grid"
    return {"params": {key: spec.to_tune(grid=grid) for key, spec in cfg.search_space.items()}}


def _search_alg(cfg: TuneConfig, concurrent: int) -> Any:
    """The searcher, limited to `concurrent` trials at once (Tune ignores `TuneConfig.max_concurrent_trials`
    for a BasicVariantGenerator, which is not a `Searcher`: it takes the limit itself)."""
    if cfg.searcher == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as exc:  # pragma: no cover - optuna is an optional extra
            raise ConfigError("searcher optuna needs `pip install 'srtn[optuna]'`", key="searcher") from exc
        from ray.tune.search import ConcurrencyLimiter

        return ConcurrencyLimiter(OptunaSearch(seed=cfg.seed), max_concurrent=concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrent)


class ReplayingASHA(ASHAScheduler):
    """ASHA that gets its rungs back on `Tuner.restore`.

    Tune does not save scheduler state with the experiment (ray-project/ray#30838): a restored sweep gets the
    scheduler pickled when the sweep started, with empty rungs, and would then judge the remaining trials
    against nothing that finished before the interruption. Here every trial that Tune adds back on restore
    has the results Tune recorded for it (the sweep's per-trial results, `ExperimentAnalysis`) replayed
    through `on_trial_result`, so rung records are as they were; a restarted trial also keeps its records
    for the epochs it already passed.
    """

    def __init__(self, *, sweep_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sweep_path = sweep_path
        self._histories: dict[str, Any] | None = None

    def _history(self, trial_id: str) -> Any:
        if self._histories is None:
            self._histories = {}
            fs, path = storage.resolve(self._sweep_path)
            if any(os.path.basename(f).startswith("experiment_state") for f in _list(self._sweep_path)):
                from ray.tune import ExperimentAnalysis

                try:
                    self._histories = dict(ExperimentAnalysis(path, storage_filesystem=fs).trial_dataframes)
                except (OSError, ValueError, RuntimeError) as exc:
                    logger.warning("cannot read the sweep's earlier results (%s): ASHA starts with empty rungs", exc)
        return self._histories.get(trial_id)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        frame = self._history(trial.trial_id)
        if frame is None or len(frame) == 0:
            return
        for row in frame.to_dict("records"):
            self.on_trial_result(tune_controller, trial, row)  # records the rungs; the decision is history


def _list(uri: str) -> list[str]:
    fs, path = storage.resolve(uri)
    from pyarrow import fs as pafs

    return [i.path for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))]


def _scheduler(cfg: TuneConfig, sweep_uri: str) -> Any:
    if cfg.scheduler.type == "fifo":
        return None
    s = cfg.scheduler
    # stop_last_trials=False: a trial that passes the last rung runs to its own last epoch, so `fit`
    # finishes normally and logs the trial's model.
    return ReplayingASHA(
        sweep_path=sweep_uri,
        time_attr="epoch",
        max_t=cfg.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        brackets=s.brackets,
        stop_last_trials=False,
    )


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
    """The sweep's parent run: the one in `srtn_sweep.json` when it still exists, else a new one."""
    from mlflow.exceptions import MlflowException

    record_uri = storage.join(sweep_uri, SWEEP_FILE)
    c = tracking.client(uri)
    if storage.exists(record_uri):
        record = json.loads(storage.read_bytes(record_uri))
        if record.get("config_hash") != _config_hash(cfg):
            print("warning: the config changed since the sweep started; a resumed sweep keeps its search space "
                  "and trials", file=sys.stderr)
        if record.get("tracking_uri") == uri:
            try:
                run = c.get_run(record["parent_run_id"])
                if run.info.lifecycle_stage == "active":
                    c.update_run(run.info.run_id, status="RUNNING")
                    return run.info.run_id
            except MlflowException:
                logger.warning("parent run %s is gone; starting a new one", record["parent_run_id"])
    tags = {
        "srtn.job": "tune",
        "srtn.sweep": name,
        "srtn.sweep_path": sweep_uri,
        "srtn.model": cfg.train.model.name,
        "srtn.scale": cfg.train.data.scale,
        "srtn.dataset": cfg.train.data.name,
        "srtn.git_commit": tracking.git_commit() or "unknown",
    }
    run_id = tracking.create_run(uri, experiment_id, run_name=name, tags=tags)
    tracking.log_params_flat(uri, run_id, cfg.model_dump(mode="json", exclude={"resume"}))
    record = {"parent_run_id": run_id, "tracking_uri": uri, "experiment_id": experiment_id,
              "config_hash": _config_hash(cfg)}
    storage.write_bytes(record_uri, json.dumps(record, indent=2).encode())
    return run_id


# --------------------------------------------------------------------------- the sweep


def tune_sweep(cfg: TuneConfig) -> SweepOutcome:
    """Run (or with `cfg.resume`, continue) the sweep and return its best trial and per-trial summary.

    Fails before any trial starts: `TrackingError` (tracking server unreachable), `ConfigError` (the sweep
    folder exists and `resume` is off), `ResourceError` (one trial does not fit the cluster)."""
    from ray import tune

    from srtn.runtime import init_ray

    uri = tracking.resolve_tracking_uri(cfg.train.tracking.uri)
    tracking.check_tracking_server(uri)
    name = cfg.sweep_name()
    sweep_uri = storage.join(_absolute(cfg.storage_path), name)
    fs, sweep_path = storage.resolve(sweep_uri)
    restore = tune.Tuner.can_restore(sweep_path, storage_filesystem=fs)
    if restore and not cfg.resume:
        raise ConfigError(
            f"sweep {name} already exists at {sweep_uri}: add --resume to continue it, or --set run.name=NEW "
            "for a new sweep", key="run.name")
    if cfg.resume and not restore:
        print(f"nothing to resume at {sweep_uri}: starting sweep {name}", flush=True)
    plan_cfg = _trial_config_for_sweep(cfg, uri)

    init_ray()
    concurrent = check_cluster(plan_cfg)
    experiment_id = tracking.get_or_create_experiment(cfg.experiment_name, tracking_uri=uri)
    parent = _open_parent_run(plan_cfg, uri=uri, experiment_id=experiment_id, name=name, sweep_uri=sweep_uri)
    c = tracking.client(uri)
    print(f"sweep {name}: {sweep_uri}  (MLflow parent run {parent}; resume with --resume --set run.name={name})",
          flush=True)
    try:
        plan = _Plan(cfg=plan_cfg, name=name, trials_uri=storage.join(sweep_uri, TRIALS_DIR), parent_run_id=parent)
        driver = {"CPU": cfg.trial.driver_cpus, **cfg.trial.driver_resources}
        trainable = tune.with_resources(_trainable(plan), tune.PlacementGroupFactory([driver]))
        if restore:
            tuner = tune.Tuner.restore(sweep_path, trainable, resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=fs)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=_param_space(cfg),
                tune_config=tune.TuneConfig(
                    metric=cfg.metric,
                    mode=cfg.mode,
                    scheduler=_scheduler(cfg, sweep_uri),
                    search_alg=_search_alg(cfg, concurrent),
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
        runs_url=tracking.runs_url(uri, experiment_id),
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
        print("  ".join([t.trial_id.ljust(14), t.outcome.ljust(13), str(t.epochs).rjust(6), value.rjust(9),
                         *(str(t.params.get(k)) for k in keys)]))
    if out.best_trial_id is None:
        print("no trial finished with a metric; see the errors above", file=sys.stderr)
        return 1
    print(f"best: trial {out.best_trial_id}  {cfg.metric} {out.best_metrics.get(cfg.metric, float('nan')):.3f}  "
          f"params {json.dumps(out.best_params, sort_keys=True)}")
    print(f"best trial's MLflow run: {out.best_run_id}  model: {out.model_uri}" + (
        f"  (registered {cfg.run.registered_model_name} v{out.registered_model_version})"
        if out.registered_model_version else ""))
    print(f"MLflow parent run: {out.parent_run_id}")
    if not out.tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow UI: mlflow ui --backend-store-uri {out.tracking_uri}  then open:")
    print(f"runs: {out.runs_url}")
    return 0
