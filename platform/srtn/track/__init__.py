"""MLflow in one place: where runs go (`uris`), runs and params (`runs`), pictures and per-epoch records
(`images`), the shards a run read as dataset inputs (`datasets`), model URIs (`models`). Jobs use these
helpers, never ad-hoc `mlflow.*` calls, so the embedded default, the path rules and the UI link are the same
everywhere."""

from srtn.track.datasets import log_shards_input, shards_dataset
from srtn.track.images import EpochLogger, image_grid, log_image_grid
from srtn.track.models import fluent_tracking_uri, load_model, log_model, pin_model_uri, register_model
from srtn.track.runs import (
    create_run,
    find_runs_by_tag,
    get_or_create_experiment,
    git_commit,
    log_params_flat,
    open_or_resume_run,
    sanitize_key,
    set_tags,
)
from srtn.track.uris import (
    DEFAULT_TRACKING_URI,
    DEFAULT_UI,
    artifact_location_for,
    check_tracking_server,
    client,
    resolve_tracking_uri,
    runs_url,
    ui_hint,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "DEFAULT_UI",
    "EpochLogger",
    "artifact_location_for",
    "check_tracking_server",
    "client",
    "create_run",
    "find_runs_by_tag",
    "fluent_tracking_uri",
    "get_or_create_experiment",
    "git_commit",
    "image_grid",
    "load_model",
    "log_image_grid",
    "log_model",
    "log_params_flat",
    "log_shards_input",
    "open_or_resume_run",
    "pin_model_uri",
    "register_model",
    "resolve_tracking_uri",
    "runs_url",
    "sanitize_key",
    "set_tags",
    "shards_dataset",
    "ui_hint",
]
