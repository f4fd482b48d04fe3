"""What a finished (or resumed) sweep leaves in MLflow: per-trial outcomes, the child runs completed and
closed, the parent run's summary (counts, best metric, a trials table, a figure) and the best trial's model
registered. `srtn.tune.sweep` runs the sweep and calls these once Tune returns.

A trial's outcome: `completed` (trained all its epochs: `fit` logged its model), `stopped_early` (the
scheduler cut it: its child run ends KILLED), `failed` (an error Tune recorded).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from srtn import track
from srtn.config.train import TrainConfig
from srtn.config.tune import TuneConfig

if TYPE_CHECKING:
    from ray.tune import ResultGrid

__all__ = [
    "TrialSummary",
    "best_train_config",
    "close_child_runs",
    "log_summary",
    "pick_best",
    "register_best",
    "summarize_trials",
]


@dataclass
class TrialSummary:
    """One trial of a sweep: its sampled params (dotted train keys), outcome, epochs and last metric."""

    trial_id: str
    params: dict[str, Any]
    outcome: str  # completed | stopped_early | failed
    epochs: int
    metric: float | None  # last reported value of the sweep's metric
    mlflow_run_id: str | None
    error: str | None = None


def summarize_trials(
    cfg: TuneConfig, results: ResultGrid, *, uri: str, experiment_id: str, name: str
) -> list[TrialSummary]:
    """One summary per trial, by trial id; the child run is the one the trial reported (or, for a trial that
    failed before its first epoch, the run named `<sweep>-<trial id>`)."""
    out = []
    for r in results:
        m = r.metrics or {}
        trial_id = str(m.get("trial_id", ""))
        params = dict((r.config or {}).get("params", {}))
        run_id = m.get("mlflow_run_id")
        if run_id is None and trial_id:
            ids = track.find_runs_by_tag(uri, experiment_id, "srtn.run_name", f"{name}-{trial_id}")
            run_id = ids[0] if ids else None
        epochs = int(m.get("epoch") or 0)
        value = m.get(cfg.metric)
        if r.error is not None:
            outcome = "failed"
        elif epochs >= cfg.trial_config(params).optim.epochs:
            outcome = "completed"
        else:
            outcome = "stopped_early"
        out.append(
            TrialSummary(
                trial_id=trial_id,
                params=params,
                outcome=outcome,
                epochs=epochs,
                metric=None if value is None else float(value),
                mlflow_run_id=run_id,
                error=None if r.error is None else f"{type(r.error).__name__}: {r.error}"[:2000],
            )
        )
    return sorted(out, key=lambda t: t.trial_id)


def _epoch_rows(frame: Any) -> list[dict[str, float]]:
    """A trial's reported epochs as Tune recorded them (numeric metrics only, Tune's own keys left out)."""
    from ray.tune.result import AUTO_RESULT_KEYS

    skip = {*AUTO_RESULT_KEYS, "done", "should_checkpoint"}
    rows = []
    for row in frame.to_dict("records") if frame is not None else []:
        clean = {
            k: float(v)
            for k, v in row.items()
            if k not in skip
            and "/" not in k
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and not (isinstance(v, float) and math.isnan(v))
        }
        if "epoch" in clean:
            rows.append(clean)
    return rows


def close_child_runs(cfg: TuneConfig, uri: str, trials: list[TrialSummary], frames: dict[str, Any]) -> None:
    """Trials stopped by the scheduler end with their driver process: their last epoch reached Tune (it is
    what ASHA judged) but maybe not MLflow, and `fit` never closes their run. Log the epochs MLflow lacks
    (never twice), mark such runs KILLED (FAILED for failed trials) and tag every child with its outcome."""
    c = track.client(uri)
    for t in trials:
        if not t.mlflow_run_id:
            continue
        track.EpochLogger(uri, t.mlflow_run_id).backfill(_epoch_rows(frames.get(t.trial_id)), key=cfg.metric)
        track.set_tags(uri, t.mlflow_run_id, {"srtn.trial_id": t.trial_id, "srtn.trial_outcome": t.outcome})
        status = c.get_run(t.mlflow_run_id).info.status
        if t.outcome == "stopped_early" and status != "KILLED":  # RUNNING, or FAILED by the aborted `fit`
            c.set_terminated(t.mlflow_run_id, "KILLED")
        elif t.outcome == "failed" and status == "RUNNING":
            c.set_terminated(t.mlflow_run_id, "FAILED")


def pick_best(cfg: TuneConfig, trials: list[TrialSummary]) -> TrialSummary | None:
    scored = [t for t in trials if t.outcome != "failed" and t.metric is not None and not math.isnan(t.metric)]
    if not scored:
        return None
    sign = 1.0 if cfg.mode == "max" else -1.0
    # ties (rare): a completed trial beats one stopped early
    return max(scored, key=lambda t: (sign * t.metric, t.outcome == "completed"))  # type: ignore[operator]


def _curves(uri: str, metric: str, trials: list[TrialSummary]) -> dict[str, list[tuple[int, float]]]:
    c = track.client(uri)
    out = {}
    for t in trials:
        if t.mlflow_run_id:
            hist = sorted(c.get_metric_history(t.mlflow_run_id, metric), key=lambda m: (m.step, m.timestamp))
            out[t.trial_id] = [(m.step, m.value) for m in hist]
    return out


def _figure(cfg: TuneConfig, trials: list[TrialSummary], curves: dict[str, list[tuple[int, float]]]) -> Any:
    """Learning curves (stopped trials dashed) and the final metric against each searched parameter."""
    from matplotlib.figure import Figure

    keys = list(cfg.search_space)
    fig = Figure(figsize=(4.2 * (1 + len(keys)), 3.6), layout="constrained")
    axes = fig.subplots(1, 1 + len(keys), squeeze=False)[0]
    ax = axes[0]
    for t in trials:
        pts = curves.get(t.trial_id) or []
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                "--" if t.outcome != "completed" else "-",
                marker="o",
                ms=3,
                label=t.trial_id,
            )
    ax.set(xlabel="epoch", ylabel=cfg.metric, title="trials (dashed: stopped early/failed)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(trials) <= 12:
        ax.legend(fontsize=6)
    for ax, key in zip(axes[1:], keys):
        pts = [(t.params.get(key), t.metric) for t in trials if t.metric is not None]
        xs = [p[0] for p in pts]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            ax.scatter(xs, [p[1] for p in pts])
            if cfg.search_space[key].type == "loguniform" or (xs and min(xs) > 0 and max(xs) / min(xs) > 100):
                ax.set_xscale("log")
        else:
            labels = sorted({json.dumps(x) for x in xs})
            ax.scatter([labels.index(json.dumps(x)) for x in xs], [p[1] for p in pts])
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set(xlabel=key, ylabel=f"last {cfg.metric}")
    return fig


def _table(cfg: TuneConfig, trials: list[TrialSummary]) -> dict[str, list[Any]]:
    table: dict[str, list[Any]] = {k: [] for k in ("trial_id", "outcome", "epochs", cfg.metric, "mlflow_run_id")}
    for key in cfg.search_space:
        table[key] = []
    for t in trials:
        for k, v in (
            ("trial_id", t.trial_id),
            ("outcome", t.outcome),
            ("epochs", t.epochs),
            (cfg.metric, t.metric),
            ("mlflow_run_id", t.mlflow_run_id),
        ):
            table[k].append(v)
        for key in cfg.search_space:
            value = t.params.get(key)
            plain = value is None or isinstance(value, (int, float, str, bool))
            table[key].append(value if plain else json.dumps(value))
    return table


def log_summary(
    cfg: TuneConfig, *, uri: str, parent: str, trials: list[TrialSummary], best: TrialSummary | None
) -> None:
    from mlflow.entities import Metric

    c = track.client(uri)
    counts = {f"trials_{o}": sum(t.outcome == o for t in trials) for o in ("completed", "stopped_early", "failed")}
    metrics = dict(counts) | {"trials": len(trials)}
    if best is not None and best.metric is not None:
        metrics[f"best_{cfg.metric}"] = best.metric
    now = int(time.time() * 1000)
    c.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    if best is not None:
        track.set_tags(
            uri,
            parent,
            {
                "srtn.best_trial_id": best.trial_id,
                "srtn.best_run_id": best.mlflow_run_id,
                "srtn.best_params": json.dumps(best.params, sort_keys=True),
            },
        )
    table = _table(cfg, trials)
    digest = hashlib.sha256(json.dumps(table, sort_keys=True, default=str).encode()).hexdigest()[:8]
    if c.get_run(parent).data.tags.get("srtn.trials_table_hash") != digest:
        have = {a.path for a in c.list_artifacts(parent)}
        name = f"trials-{digest}.json" if "trials.json" in have else "trials.json"
        # log_table appends to an existing file: a changed table (errored trials rerun) gets its own file
        c.log_table(parent, data=table, artifact_file=name)
        track.set_tags(uri, parent, {"srtn.trials_table_hash": digest})
    c.log_figure(parent, _figure(cfg, trials, _curves(uri, cfg.metric, trials)), "trials.png")


def register_best(cfg: TuneConfig, *, uri: str, parent: str, best: TrialSummary) -> tuple[str | None, str | None]:
    """The best trial's logged model (its best checkpoint, logged by `fit`) and, with
    `run.registered_model_name`, its registered version (once per best run, also across resumes)."""

    c = track.client(uri)
    model_uri = c.get_run(best.mlflow_run_id).data.tags.get("srtn.model_uri") if best.mlflow_run_id else None
    if model_uri is None:
        print(
            f"warning: best trial {best.trial_id} has no logged model (it did not finish); nothing registered",
            file=sys.stderr,
        )
        return None, None
    name = cfg.run.registered_model_name
    if not name:
        return model_uri, None
    tags = c.get_run(parent).data.tags
    if tags.get("srtn.registered_run_id") == best.mlflow_run_id and tags.get("srtn.registered_version"):
        return model_uri, tags["srtn.registered_version"]
    version = track.register_model(
        uri, model_uri, name, tags={"srtn.sweep_run_id": parent, "srtn.trial_id": best.trial_id}
    )
    track.set_tags(
        uri,
        parent,
        {
            "srtn.registered_run_id": best.mlflow_run_id,
            "srtn.registered_version": version,
            "srtn.registered_model": name,
        },
    )
    return model_uri, version


def best_train_config(cfg: TuneConfig, best: TrialSummary) -> dict[str, Any]:
    """The best trial's TrainConfig as the user wrote it (relative paths kept), ready for `srtn train`."""
    data = cfg.trial_config(best.params).model_dump(mode="json")
    data["run"]["registered_model_name"] = cfg.run.registered_model_name
    return TrainConfig.model_validate(data).model_dump(mode="json")
