"""Config of `srtn evaluate`: trained models and bicubic on the test split -> one MLflow comparison run.

Blocks: `data` (shards, scale, split), `models` (display name + MLflow model URI per entry), the metric
convention (`crop_border`), Ray Data batch-inference resources (`batch_size`, `actors`, `cpus_per_actor`,
`num_gpus`) and `tracking` (MLflow URI, experiment, run name). Every key is documented in
configs/evaluate/*.yaml. URIs are checked for their form here; whether they exist is checked by
`srtn.evaluate.job.resolve_models` before any Ray work.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from srtn.config.base import Scale, StrictModel
from srtn.vocab import BICUBIC

__all__ = ["EvalDataConfig", "EvalTrackingConfig", "EvaluateConfig", "ModelEntry", "check_model_uri"]

"""The model URI (and default display name) that means bicubic interpolation: no MLflow model."""

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_model_uri(uri: str) -> str:
    """`uri` stripped if it has one of the accepted forms, else `ValueError` listing them.

    Accepted: `models:/<name>/<version>`, `models:/<name>/latest`, `models:/<name>@<alias>` (or
    `models:/<name>/<alias>`), `models:/m-<logged model id>`, `runs:/<run id>/<artifact path>`, a bare
    32-hex run id (its logged model), or `bicubic`.
    """
    uri = uri.strip()
    if uri == BICUBIC or _RUN_ID.match(uri):
        return uri
    if uri.startswith("models:/") and len(uri) > len("models:/"):
        return uri
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/") :].partition("/")
        if run_id and path:
            return uri
    raise ValueError(
        f"{uri!r} is not a model URI: use models:/NAME/VERSION, models:/NAME/latest, models:/NAME@ALIAS, "
        "runs:/RUN_ID/PATH, a bare run id or 'bicubic'"
    )


class ModelEntry(StrictModel):
    name: str = Field(description="display name in tables, plots and metric keys (letters, digits, _ . -)")
    uri: str = Field(description="MLflow model URI, bare run id, or 'bicubic'")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"model name {value!r} must be letters, digits, '_', '.' or '-' (it is a metric key)")
        return value

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return check_model_uri(value)


class EvalDataConfig(StrictModel):
    shards: str = Field(description="tile shards folder (local or s3://): OUT of srtn tile / srtn breakhis")
    dataset: str | None = Field(None, description="dataset name for the run name and experiment; default: folder name")
    scale: Scale = Field(4, description="SR factor; the shards need the lr_x<scale> column")
    split: Literal["test", "val"] = Field(
        "test", description="test: final comparison (default); val only to look at model selection, never train"
    )
    limit: int | None = Field(None, ge=1, description="evaluate at most this many tiles (smoke runs); null: all")

    @property
    def name(self) -> str:
        return self.dataset or self.shards.rstrip("/").rsplit("/", 1)[-1] or "dataset"


class EvalTrackingConfig(StrictModel):
    uri: str | None = Field(None, description="MLflow URI; null: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db")
    experiment: str | None = Field(
        None,
        description="MLflow experiment; null: that of the evaluated training runs if they share one, else "
        "srtn-<dataset> (as training names it)",
    )
    run_name: str | None = Field(None, description="comparison run name; default: compare-<dataset>-x<scale>")
    log_to_source_runs: bool = Field(
        True, description="also log test_psnr/test_ssim(_y) on each evaluated model's training run (split test only)"
    )


class EvaluateConfig(StrictModel):
    """Everything `srtn evaluate` does is set here; see configs/evaluate/*.yaml for comments."""

    data: EvalDataConfig
    models: list[ModelEntry] = Field(default_factory=list)
    include_bicubic: bool = Field(True, description="add bicubic interpolation (the baseline) as a model")
    crop_border: int | None = Field(None, ge=0, description="pixels cropped per side before metrics; null: scale")
    batch_size: int = Field(16, ge=1, description="tiles per inference batch")
    actors: int = Field(1, ge=1, description="inference actors per model (each holds the model once)")
    cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus: float | None = Field(None, ge=0, description="GPUs per actor; null: 1 when the cluster has GPUs, else 0")
    data_cpus: float = Field(0.25, gt=0, description="CPUs per Ray Data read/decode task")
    tracking: EvalTrackingConfig = Field(default_factory=EvalTrackingConfig)

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {dupes}")
        if self.include_bicubic and any(m.name == BICUBIC and m.uri != BICUBIC for m in self.models):
            raise ValueError("the name 'bicubic' is taken by include_bicubic; rename that model entry")
        if not self.entries():
            raise ValueError("nothing to evaluate: list models or set include_bicubic: true")
        return self

    def entries(self) -> list[ModelEntry]:
        """The models to evaluate in order, bicubic last (added when `include_bicubic` and not listed)."""
        out = list(self.models)
        if self.include_bicubic and not any(m.uri == BICUBIC for m in out):
            out.append(ModelEntry(name=BICUBIC, uri=BICUBIC))
        return out

    @property
    def effective_crop_border(self) -> int:
        return self.data.scale if self.crop_border is None else self.crop_border

    @property
    def experiment_name(self) -> str:
        """`tracking.experiment`, else `srtn-<dataset>` (the evaluation prefers the training runs' own)."""
        return self.tracking.experiment or f"srtn-{self.data.name}"

    @property
    def run_name(self) -> str:
        if self.tracking.run_name:
            return self.tracking.run_name
        suffix = "" if self.data.split == "test" else f"-{self.data.split}"
        return f"compare-{self.data.name}-x{self.data.scale}{suffix}"
