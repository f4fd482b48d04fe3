"""Where runs are recorded: the tracking URI (embedded default, absolute paths), the fail-fast server check,
the MLflow client, and the UI link and hint every job prints at its end.

No URI in the config and no `MLFLOW_TRACKING_URI` means `sqlite:///runs/mlflow.db` with artifacts under
`runs/mlartifacts` (MLflow 3.7+ would otherwise pick `./mlflow.db` silently). Relative sqlite and file paths
are made absolute, because Ray Train workers run in another working directory.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from srtn.errors import TrackingError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "DEFAULT_TRACKING_URI",
    "DEFAULT_UI",
    "artifact_location_for",
    "check_tracking_server",
    "client",
    "resolve_tracking_uri",
    "runs_url",
    "ui_hint",
]

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
DEFAULT_UI = "http://127.0.0.1:5000"


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


def ui_hint(uri: str, experiment_id: str) -> list[str]:
    """The lines a job prints at its end so the user can open its runs: the command that serves a local
    store, then the link to the experiment's runs table."""
    lines = [] if uri.startswith(("http://", "https://")) else [f"mlflow ui --backend-store-uri {uri} --port 5000"]
    return [*lines, runs_url(uri, experiment_id)]
