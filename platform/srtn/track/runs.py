"""Experiments, runs, params and tags by explicit client and run id (never the fluent API's global active run),
so a Ray worker, a Tune trial and the driver can log to the same run safely; and the one "open this run or
resume it" helper that training and tuning share.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from srtn import storage
from srtn.config.base import flatten
from srtn.track.uris import artifact_location_for, client, resolve_tracking_uri

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "create_run",
    "find_runs_by_tag",
    "get_or_create_experiment",
    "git_commit",
    "log_params_flat",
    "open_or_resume_run",
    "sanitize_key",
    "set_tags",
]

logger = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value (characters)
MAX_KEY = 250  # MLflow's limit on a param, metric or tag key
_BATCH = 100  # MLflow's limit on params/tags per log_batch call
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")


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


def open_or_resume_run(
    uri: str,
    experiment_id: str,
    *,
    record_uri: str,
    record_key: str,
    run_name: str,
    tags: Mapping[str, Any],
    parent_run_id: str | None = None,
    extra_record: Mapping[str, Any] | None = None,
    on_new: Callable[[str], None] | None = None,
) -> tuple[str, bool, dict[str, Any]]:
    """`(run id, resumed, previous record)`: the active run named by the JSON record at `record_uri` (a
    training or sweep folder's run file) when it was made for the same tracking URI, set RUNNING again;
    else a new run, written to the record (with `extra_record`) after `on_new(run_id)` ran."""
    from mlflow.exceptions import MlflowException

    record: dict[str, Any] = json.loads(storage.read_bytes(record_uri)) if storage.exists(record_uri) else {}
    if record.get("tracking_uri") == uri and record.get(record_key):
        c = client(uri)
        try:
            run = c.get_run(record[record_key])
            if run.info.lifecycle_stage == "active":
                c.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id, True, record
        except MlflowException:
            logger.warning("MLflow run %s recorded in %s is gone; starting a new run", record[record_key], record_uri)
    run_id = create_run(uri, experiment_id, run_name=run_name, tags=tags, parent_run_id=parent_run_id)
    if on_new is not None:
        on_new(run_id)
    new_record = {record_key: run_id, "tracking_uri": uri, **(extra_record or {})}
    storage.write_bytes(record_uri, json.dumps(new_record, indent=2).encode())
    return run_id, False, record


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
