"""Model URIs in one place: pin a `models:/`, `runs:/` or bare-run-id URI to one concrete version, and load it.

Evaluation and prediction pin once on the driver, so every Ray actor loads the same weights even if an alias
or `latest` moves during the job. Loading downloads the artifacts with an explicit tracking/registry URI and
loads them from disk: no MLflow global state is read or changed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from srtn.track.uris import client

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["fluent_tracking_uri", "load_model", "log_model", "pin_model_uri", "register_model"]


@contextlib.contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (`start_run`, `log_model`, `register_model`) pointed at `uri` for the block only.

    `mlflow.set_tracking_uri` also writes `MLFLOW_TRACKING_URI`; afterwards the global is unset again and the
    variable is what it was, so a later change of the environment variable still takes effect (a restored
    global would silently pin the old URI).
    """
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # unsets the global and the variable...
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env  # ...so put the variable back


@contextlib.contextmanager
def _registry_notices_to_log() -> Iterator[None]:
    """MLflow's fluent registry prints "Successfully registered model ..." and "Created version ..." to stderr;
    the jobs report the registered version themselves, so those lines go to the debug log (shown verbose)."""
    from srtn.console import is_verbose

    if is_verbose():
        yield
        return
    notices = io.StringIO()
    with contextlib.redirect_stderr(notices):
        yield
    for line in notices.getvalue().splitlines():
        logger.debug("mlflow: %s", line)


def log_model(
    uri: str,
    run_id: str,
    model: nn.Module,
    *,
    registered_model_name: str | None,
    example_size: tuple[int, int, int, int],
) -> tuple[str, str | None]:
    """Log `model` to run `run_id` of the store at `uri` (pickled, any tile size: `srtn.models.serialization`),
    registering a new version of `registered_model_name` if given; `(model uri, registered version)`."""
    import mlflow

    from srtn.models.serialization import log_sr_model

    with (
        fluent_tracking_uri(uri),
        _registry_notices_to_log(),
        mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None),
    ):
        info = log_sr_model(model, name="model", registered_model_name=registered_model_name, example_size=example_size)
    version = getattr(info, "registered_model_version", None)
    return info.model_uri, None if version is None else str(version)


def register_model(uri: str, model_uri: str, name: str, *, tags: Mapping[str, Any]) -> str:
    """A new version of registered model `name` from `model_uri` in the store at `uri`; returns the version."""
    import mlflow

    with fluent_tracking_uri(uri), _registry_notices_to_log():
        return str(mlflow.register_model(model_uri, name, tags=dict(tags)).version)


def pin_model_uri(uri: str, *, tracking_uri: str) -> tuple[str, str | None]:
    """`(pinned uri, source run id)` of a `models:/`, `runs:/` or bare-run-id URI; MLflow errors propagate."""
    c = client(tracking_uri)
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/") :].split("/", 1)[0]
        c.get_run(run_id)
        return uri, run_id
    if not uri.startswith("models:/"):  # a bare run id: the model that run logged
        run = c.get_run(uri)
        logged = c.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{uri}'", max_results=50
        )
        if len(logged) > 1:
            named = [m for m in logged if m.name == "model"]
            if len(named) != 1:
                names = sorted(m.name for m in logged)
                raise ValueError(f"run {uri} logged several models {names}: use runs:/{uri}/<name>")
            logged = named
        return (f"models:/{logged[0].model_id}" if logged else f"runs:/{uri}/model"), uri
    rest = uri[len("models:/") :]
    if rest.startswith("m-") and "/" not in rest and "@" not in rest:  # MLflow 3 logged-model id
        return uri, c.get_logged_model(rest).source_run_id
    if "@" in rest:
        name, alias = rest.split("@", 1)
        mv = c.get_model_version_by_alias(name, alias)
    else:
        name, _, ref = rest.partition("/")
        if not ref:
            raise ValueError("a registered model URI needs a version, 'latest' or an alias: models:/NAME/VERSION")
        if ref.isdigit():
            mv = c.get_model_version(name, ref)
        elif ref == "latest":
            escaped = name.replace("'", "\\'")
            versions = c.search_model_versions(f"name = '{escaped}'")
            if not versions:
                raise ValueError(f"registered model {name!r} has no versions")
            mv = max(versions, key=lambda v: int(v.version))
        else:
            mv = c.get_model_version_by_alias(name, ref)
    return f"models:/{mv.name}/{mv.version}", mv.run_id or None


def _download(uri: str, *, tracking_uri: str, dst: str) -> str:
    """A local copy of the model at `uri`, found through the client of `tracking_uri` only: MLflow's own
    `models:/` resolution reads the global registry URI, so a registered version and a run's model are first
    turned into the artifact location of their logged model."""
    import mlflow.artifacts

    c = client(tracking_uri)
    if uri.startswith("models:/"):
        rest = uri[len("models:/") :]
        if rest.startswith("m-") and "/" not in rest:
            source = c.get_logged_model(rest).artifact_location
        else:
            name, _, version = rest.partition("/")  # pinned: models:/NAME/VERSION
            source = c.get_model_version_download_uri(name, version)
        return mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=dst, tracking_uri=tracking_uri)
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/") :].partition("/")
        experiment_id = c.get_run(run_id).info.experiment_id
        logged = c.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=50)
        named = [m for m in logged if m.name == (path or "model")]
        if named:
            return mlflow.artifacts.download_artifacts(
                artifact_uri=named[0].artifact_location, dst_path=dst, tracking_uri=tracking_uri
            )
        return c.download_artifacts(run_id, path, dst)  # a model saved as plain run artifacts
    return uri  # a local folder


def load_model(uri: str, *, tracking_uri: str, map_location: str = "cpu") -> nn.Module:
    """The SR model logged at `uri` (see `srtn.models.serialization`), in eval mode."""
    from srtn.models.serialization import load_sr_model

    with tempfile.TemporaryDirectory(prefix="srtn-model-") as tmp:
        return load_sr_model(_download(uri, tracking_uri=tracking_uri, dst=tmp), map_location=map_location)
