"""The shards a run read, as an MLflow dataset input: what fills the runs table's Dataset column.

One input per dataset and run (`MlflowClient.log_inputs`, what `mlflow.log_input` does for the active run):
an MLflow `MetaDataset` named after the dataset, whose source is the shards URI (`local` or `s3` source type)
and whose digest is the shards' manifest hash, with the split the run used as its context (`train` for
training and tuning, `test` or `val` for evaluation). Two runs on different shards therefore show different
digests, and a rerun on rebuilt shards shows that its data changed even where the path did not.

`track` sits below `data`, so the digest comes from the caller: a string, or the function that computes it
from the shards URI (`srtn.data.manifest.manifest_hash`). Shards without a readable manifest get no input (a
warning says so) rather than a digest that would not tell two datasets apart.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable

from srtn import storage
from srtn.track.uris import client

__all__ = ["DIGEST_ERRORS", "log_shards_input", "shards_dataset"]

logger = logging.getLogger(__name__)

DIGEST_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError)
"""What computing a manifest hash raises for shards without a readable manifest (missing, torn, old layout)."""


def _source_uri(shards: str) -> str:
    """Absolute local path or the remote URI as given: a relative path would name another folder elsewhere."""
    return shards if storage.is_remote(shards) else os.path.abspath(shards)


def shards_dataset(shards: str, *, name: str, digest: str):
    """The MLflow `MetaDataset` of a shards folder: source = its URI, digest = its manifest hash."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # MLflow registers the local-file source twice (schemes "" and "file") and warns that the path "can be
        # interpreted in multiple ways": both are the same LocalArtifactDatasetSource class
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(_source_uri(shards))
    return MetaDataset(source, name=name, digest=digest)


def log_shards_input(
    uri: str,
    run_id: str,
    *,
    shards: str,
    name: str,
    context: str,
    digest: str | Callable[[str], str],
) -> str | None:
    """Log `shards` as a dataset input of run `run_id` with `context` (the split); returns the digest logged,
    or None when `digest` is a function that found no manifest (logged as a warning, the run goes on).

    MLflow keeps one input per dataset (name + digest) and run, so a resumed run logging it again changes
    nothing."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if callable(digest):
        try:
            digest = digest(shards)
        except DIGEST_ERRORS as exc:
            logger.warning("shards %s have no readable manifest (%s): no dataset input logged", shards, exc)
            return None
    dataset = shards_dataset(shards, name=name, digest=digest)
    tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)]
    client(uri).log_inputs(run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags)])
    return digest
