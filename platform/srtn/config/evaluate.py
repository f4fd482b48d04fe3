"""Config of `srtn evaluate`: trained models and bicubic on the test split of one or several datasets -> one
MLflow comparison run with the models x datasets matrix.

Blocks: `data` (one dataset: shards, scale, split) or `datasets` (a list of them), `models` (display name +
MLflow model URI per entry), the metric convention (`crop_border`), Ray Data batch-inference resources
(`batch_size`, `actors`, `cpus_per_actor`, `num_gpus`, `channels_last`), the side-by-side pictures
(`compare_tiles`) and `tracking` (MLflow URI, experiment, run name). Every key is documented in
configs/evaluate/*.yaml. URIs are checked for their form here; whether they exist is checked by
`srtn.evaluate.job.resolve_models` before any Ray work.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from srtn.config.base import Scale, StrictModel
from srtn.vocab import BICUBIC

__all__ = [
    "CompareTilesConfig",
    "EvalDataConfig",
    "EvalTrackingConfig",
    "EvaluateConfig",
    "ModelEntry",
    "check_model_uri",
]

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
    """One evaluated dataset: `data:` in the single-dataset form, an entry of `datasets:` otherwise."""

    shards: str = Field(description="tile shards folder (local or s3://): OUT of srtn tile / srtn breakhis")
    dataset: str | None = Field(
        None,
        validation_alias=AliasChoices("dataset", "name"),
        description="dataset name (key `name` or `dataset`) in tables, metric keys and the run name; default: "
        "folder name",
    )
    scale: Scale = Field(4, description="SR factor; the shards need the lr_x<scale> column")
    split: Literal["test", "val"] = Field(
        "test", description="test: final comparison (default); val only to look at model selection, never train"
    )
    limit: int | None = Field(None, ge=1, description="evaluate at most this many tiles (smoke runs); null: all")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"dataset name {value!r} must be letters, digits, '_', '.' or '-' (it is a metric key)")
        return value

    @property
    def name(self) -> str:
        return self.dataset or self.shards.rstrip("/").rsplit("/", 1)[-1] or "dataset"

    @property
    def label(self) -> str:
        """`<name>` for the test split, `<name>-val` for val: how the run name says what was scored."""
        return self.name if self.split == "test" else f"{self.name}-{self.split}"


class CompareTilesConfig(StrictModel):
    """The side-by-side pictures of the comparison run (`compare_tiles.png`, `gain_tiles.png`)."""

    count: int = Field(4, ge=0, description="fixed tiles per dataset, one row each; 0: no pictures")
    seed: int = Field(0, description="which tiles: the same seed picks the same tiles on every rerun")
    cell_size: int = Field(160, ge=48, le=512, description="side in pixels of each image and of its zoomed crop")
    gain_tiles: bool = Field(True, description="also picture each model's best and worst tile against bicubic")


class EvalTrackingConfig(StrictModel):
    uri: str | None = Field(None, description="MLflow URI; null: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db")
    experiment: str | None = Field(
        None,
        description="MLflow experiment; null: that of the evaluated training runs if they share one, else "
        "srtn-<first dataset> (as training names it)",
    )
    run_name: str | None = Field(
        None, description="comparison run name; default: compare-<dataset>-x<scale> (datasets joined by +)"
    )
    log_to_source_runs: bool = Field(
        True, description="also log test_psnr/test_ssim(_y) on each evaluated model's training run (split test only)"
    )


class EvaluateConfig(StrictModel):
    """Everything `srtn evaluate` does is set here; see configs/evaluate/*.yaml for comments."""

    data: EvalDataConfig | None = Field(None, description="the one evaluated dataset (or use datasets)")
    datasets: list[EvalDataConfig] = Field(default_factory=list, description="several datasets, one matrix")
    models: list[ModelEntry] = Field(default_factory=list)
    include_bicubic: bool = Field(True, description="add bicubic interpolation (the baseline) as a model")
    crop_border: int | None = Field(None, ge=0, description="pixels cropped per side before metrics; null: scale")
    batch_size: int = Field(16, ge=1, description="tiles per inference batch")
    actors: int | None = Field(
        None,
        ge=1,
        description="scoring actors (each holds every model once); null: one per GPU, else one per "
        "CPU of the largest node (at most 8)",
    )
    cpus_per_actor: float | None = Field(
        None,
        gt=0,
        description="CPUs (and torch threads) per actor; null: 1 with GPUs, else the largest node's "
        "CPUs less data_cpus, shared by the actors",
    )
    num_gpus: float | None = Field(None, ge=0, description="GPUs per actor; null: 1 when the cluster has GPUs, else 0")
    data_cpus: float = Field(0.25, gt=0, description="CPUs per Ray Data read task")
    channels_last: bool = Field(True, description="models and batches in channels_last memory format (faster on CPU)")
    compare_tiles: CompareTilesConfig = Field(default_factory=CompareTilesConfig)
    tracking: EvalTrackingConfig = Field(default_factory=EvalTrackingConfig)

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if (self.data is None) == (not self.datasets):
            raise ValueError("set either data (one dataset) or datasets (a list), not both and not neither")
        ds_names = [d.name for d in self.dataset_configs()]
        repeated = sorted({n for n in ds_names if ds_names.count(n) > 1})
        if repeated:
            raise ValueError(f"dataset names must be unique, repeated: {repeated} (set datasets.<i>.name)")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {dupes}")
        if self.include_bicubic and any(m.name == BICUBIC and m.uri != BICUBIC for m in self.models):
            raise ValueError("the name 'bicubic' is taken by include_bicubic; rename that model entry")
        if not self.entries():
            raise ValueError("nothing to evaluate: list models or set include_bicubic: true")
        return self

    def dataset_configs(self) -> list[EvalDataConfig]:
        """The evaluated datasets in config order (`data` alone, or `datasets`)."""
        return [self.data] if self.data is not None else list(self.datasets)

    def entries(self) -> list[ModelEntry]:
        """The models to evaluate in order, bicubic last (added when `include_bicubic` and not listed)."""
        out = list(self.models)
        if self.include_bicubic and not any(m.uri == BICUBIC for m in out):
            out.append(ModelEntry(name=BICUBIC, uri=BICUBIC))
        return out

    def crop_border_for(self, scale: int) -> int:
        """Pixels cropped per side on a dataset of this scale: `crop_border`, else the scale (BasicSR)."""
        return scale if self.crop_border is None else self.crop_border

    @property
    def experiment_name(self) -> str:
        """`tracking.experiment`, else `srtn-<first dataset>` (the evaluation prefers the training runs' own)."""
        return self.tracking.experiment or f"srtn-{self.dataset_configs()[0].name}"

    @property
    def run_name(self) -> str:
        """`compare-<dataset>-x<scale>`; several datasets are joined by `+` (one scale suffix when shared)."""
        if self.tracking.run_name:
            return self.tracking.run_name
        sets = self.dataset_configs()
        if len({d.scale for d in sets}) == 1:
            return f"compare-{'+'.join(d.label for d in sets)}-x{sets[0].scale}"
        return "compare-" + "+".join(f"{d.label}-x{d.scale}" for d in sets)
