"""MLflow in one place: tracking URI resolution, fail-fast server check, experiments, runs, params, images.

Every job (training, tuning, evaluation) goes through these helpers, never through ad-hoc `mlflow.*`
calls, so the embedded default, the path rules and the UI link are the same everywhere:

- No URI in the config and no `MLFLOW_TRACKING_URI` means `sqlite:///runs/mlflow.db` with artifacts
  under `runs/mlartifacts` (MLflow 3.7+ would otherwise pick `./mlflow.db` silently). Relative sqlite
  and file paths are made absolute, because Ray Train workers run in another working directory.
- Logging goes through an explicit `MlflowClient` and a run id (`EpochLogger`), not the fluent API's
  global active run, so a Ray worker, a Tune trial and the driver can log to the same run safely.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from srtn.config.base import flatten
from srtn.errors import TrackingError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from pydantic import BaseModel

__all__ = [
    "DEFAULT_TRACKING_URI",
    "DEFAULT_UI",
    "EpochLogger",
    "artifact_location_for",
    "check_tracking_server",
    "client",
    "create_run",
    "find_runs_by_tag",
    "get_or_create_experiment",
    "git_commit",
    "image_grid",
    "log_image_grid",
    "log_params_flat",
    "resolve_tracking_uri",
    "runs_url",
    "sanitize_key",
    "set_tags",
]

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
DEFAULT_UI = "http://127.0.0.1:5000"
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value (characters)
MAX_KEY = 250  # MLflow's limit on a param, metric or tag key
_BATCH = 100  # MLflow's limit on params/tags per log_batch call
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")


# --------------------------------------------------------------------------- URIs and the server


def resolve_tracking_uri(cfg_uri: str | None = None) -> str:
    """The tracking URI to use: the config's, else `MLFLOW_TRACKING_URI`, else the embedded default.

    `sqlite:///relative.db` and plain/`file:` paths are made absolute (and their folder created), so
    processes with another working directory (Ray workers) write to the same store.
    """
    uri = (cfg_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI).strip()
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path.startswith("/"):  # sqlite:////abs/path.db
            db = Path(path)
        else:
            db = Path(path).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"
    if "://" not in uri or uri.startswith("file://"):
        local = Path(uri[len("file://") :] if uri.startswith("file://") else uri).resolve()
        local.mkdir(parents=True, exist_ok=True)
        return local.as_uri()
    return uri


def artifact_location_for(uri: str) -> str | None:
    """Where new experiments keep artifacts: `mlartifacts/` beside a sqlite database (the embedded
    default gives `runs/mlartifacts`), else None (a tracking server decides, e.g. proxied artifacts)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def check_tracking_server(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, before any Ray work, when an http(s) tracking server cannot be reached.

    Sends one short GET to `<uri>/health` (the MLflow server's health endpoint) without retries:
    a refused connection, a DNS failure, a timeout or a 5xx answer raises `TrackingError` naming the
    URI. Local stores (sqlite, file) are checked by opening them.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it, or unset "
                "MLFLOW_TRACKING_URI / tracking.uri to use the embedded sqlite:///runs/mlflow.db"
            ) from exc
        if status >= 500:
            raise TrackingError(f"MLflow tracking server {uri} answered {url} with HTTP {status}")
        return
    if uri.startswith("sqlite:///"):
        try:
            client(uri).search_experiments(max_results=1)
        except Exception as exc:
            raise TrackingError(f"MLflow tracking store {uri} cannot be opened: {exc}") from exc


def runs_url(uri_or_host: str, experiment_id: str, *, ui: str = DEFAULT_UI) -> str:
    """Link to the experiment's runs table (MLflow 3's UI otherwise opens a GenAI overview page).

    For an http(s) tracking server that is the server itself; for a local store it is the address of
    `mlflow ui --backend-store-uri <uri>` (`ui`, default http://127.0.0.1:5000).
    """
    base = uri_or_host if uri_or_host.startswith(("http://", "https://")) else ui
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"


def client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# --------------------------------------------------------------------------- experiments and runs


def get_or_create_experiment(
    name: str, *, tracking_uri: str | None = None, artifact_location: str | None = None
) -> str:
    """Id of experiment `name`, created if missing (with `artifact_location`, default
    `artifact_location_for(uri)`); safe when several processes race to create it."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or resolve_tracking_uri()
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location or artifact_location_for(uri))
    except MlflowException:
        exp = c.get_experiment_by_name(name)  # another process created it first
        if exp is None:
            raise
        return exp.experiment_id


def create_run(
    uri: str,
    experiment_id: str,
    *,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a run (status RUNNING) and return its id; `parent_run_id` makes it a child run (Tune)."""
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client(uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def find_runs_by_tag(uri: str, experiment_id: str, key: str, value: str) -> list[str]:
    """Ids of the experiment's runs whose tag `key` equals `value`, newest first."""
    escaped = value.replace("'", "\\'")
    runs = client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{key}` = '{escaped}'", order_by=["attributes.start_time DESC"]
    )
    return [r.info.run_id for r in runs]


# --------------------------------------------------------------------------- params, tags, provenance


def sanitize_key(key: str) -> str:
    """A valid MLflow param/metric/tag key: disallowed characters become `_`, at most 250 characters."""
    return _BAD_KEY_CHARS.sub("_", key)[:MAX_KEY] or "_"


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) > MAX_PARAM_VALUE:
        text = text[: MAX_PARAM_VALUE - 3] + "..."
    return text


def log_params_flat(
    uri: str, run_id: str, cfg: BaseModel | Mapping[str, Any], *, prefix: str = ""
) -> dict[str, tuple[str, str]]:
    """Log a (nested) config as flat dotted params; returns the params it could not log.

    Values are JSON text (strings as-is) cut to MLflow's 6000 characters; keys are made valid. MLflow
    params are immutable, so on a resumed run a param that already holds another value (e.g. more
    epochs on a rerun) is left as it was and returned as `{key: (logged, new)}`.
    """
    from mlflow.entities import Param

    flat = {sanitize_key(f"{prefix}{k}"): _param_value(v) for k, v in flatten(cfg).items()}
    c = client(uri)
    existing = c.get_run(run_id).data.params
    conflicts = {k: (existing[k], v) for k, v in flat.items() if k in existing and existing[k] != v}
    todo = [Param(k, v) for k, v in flat.items() if k not in existing]
    for i in range(0, len(todo), _BATCH):
        c.log_batch(run_id, params=todo[i : i + _BATCH])
    if conflicts:
        logger.warning("run %s keeps its earlier values for params %s", run_id, sorted(conflicts))
    return conflicts


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(sanitize_key(k), _param_value(v)) for k, v in tags.items() if v is not None]
    c = client(uri)
    for i in range(0, len(items), _BATCH):
        c.log_batch(run_id, tags=items[i : i + _BATCH])


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the code (`SRTN_GIT_COMMIT` if set, for images built without `.git`), with a
    `-dirty` suffix for uncommitted changes; None outside a git checkout."""
    if os.environ.get("SRTN_GIT_COMMIT"):
        return os.environ["SRTN_GIT_COMMIT"]
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head or None


# --------------------------------------------------------------------------- images


def _to_hwc_uint8(images: Any) -> np.ndarray:
    """(N, C, H, W) float in [0, 1] (torch or numpy) or (N, H, W, C) uint8 to (N, H, W, 3) uint8."""
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        arr = arr.transpose(0, 2, 3, 1)  # float input is NCHW
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def image_grid(
    columns: Mapping[str, Any], *, max_rows: int = 4, pad: int = 2, label_height: int = 14, min_cell: int = 96
) -> np.ndarray:
    """One RGB uint8 image: a row per sample, a column per entry of `columns` (e.g. LR | bicubic | SR | HR).

    Each column is a batch (NCHW float in [0, 1] or NHWC uint8); smaller images are enlarged with
    nearest-neighbour to the largest size (at least `min_cell` pixels), so LR pixels stay visible. Column
    names head the grid.
    """
    import cv2

    if not columns:
        raise ValueError("image_grid needs at least one column")
    batches = {name: _to_hwc_uint8(imgs) for name, imgs in columns.items()}
    rows = min(max_rows, *(b.shape[0] for b in batches.values()))
    h = max(b.shape[1] for b in batches.values())
    w = max(b.shape[2] for b in batches.values())
    zoom = max(1, -(-min_cell // min(h, w)))  # small tiles are enlarged so pixels and labels stay readable
    h, w = h * zoom, w * zoom
    n_cols = len(batches)
    grid = np.full((label_height + rows * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for c, (name, batch) in enumerate(batches.items()):
        x0 = pad + c * (w + pad)
        cv2.putText(grid, name[:24], (x0, label_height - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for r in range(rows):
            img = batch[r]
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST)
            y0 = label_height + pad + r * (h + pad)
            grid[y0 : y0 + h, x0 : x0 + w] = img
    return grid


def log_image_grid(
    uri: str, run_id: str, columns: Mapping[str, Any], *, artifact_file: str, max_rows: int = 4
) -> np.ndarray:
    """Log `image_grid(columns)` as a PNG artifact of the run; returns the grid."""
    grid = image_grid(columns, max_rows=max_rows)
    client(uri).log_image(run_id, grid, artifact_file=artifact_file)
    return grid


# --------------------------------------------------------------------------- per-epoch logging


class EpochLogger:
    """Per-epoch metrics and sample images of one MLflow run, by run id (no global active run).

    Used by rank 0 of a Ray Train worker group; Tune makes one per trial on a child run. Metrics are
    logged with `step=epoch`. After a restart, `backfill(history)` logs the epochs that a checkpoint
    holds but MLflow missed (a crash between the checkpoint and the log), and never logs a step twice.
    """

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.uri = tracking_uri
        self.run_id = run_id
        self._client = client(tracking_uri)

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self._client.get_metric_history(self.run_id, key)}

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(sanitize_key(k), float(v), now, int(epoch))
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self._client.log_batch(self.run_id, metrics=items)

    def backfill(self, history: Sequence[Mapping[str, Any]], *, key: str = "val_loss") -> list[int]:
        """Log the entries of `history` (dicts with `epoch`) whose step MLflow lacks; returns their epochs."""
        have = self.logged_steps(key)
        missing = [h for h in history if int(h["epoch"]) not in have]
        for entry in missing:
            self.log_epoch(int(entry["epoch"]), {k: v for k, v in entry.items() if k != "epoch"})
        return [int(h["epoch"]) for h in missing]

    def log_images(self, epoch: int, columns: Mapping[str, Any], *, max_rows: int = 4) -> str:
        artifact = f"samples/epoch_{epoch:03d}.png"
        log_image_grid(self.uri, self.run_id, columns, artifact_file=artifact, max_rows=max_rows)
        return artifact

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        set_tags(self.uri, self.run_id, tags)
