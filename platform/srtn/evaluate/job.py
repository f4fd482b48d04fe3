"""Test-split evaluation of trained models and bicubic on one or several datasets, compared in one MLflow run
(`srtn evaluate`).

Flow: check every dataset's shards against their manifest and resolve every model URI against MLflow
(`latest` and aliases pinned to a version), loading each model on the driver and reading its scale: a bad
shard or URI fails here, named, before any Ray work -> one Ray Data pass over all datasets
(`srtn.evaluate.pipeline`: only the files each manifest lists for the split, rows filtered on `split` too;
one pool of scoring actors, each holding every model once and running, on each dataset's tiles, the models
whose scale matches it) -> per-image metrics averaged per dataset, model and slide on the driver (`score`)
-> the models x datasets matrix (`matrix`; a model of another scale is *not applicable* on a dataset, not an
error) and the side-by-side pictures (`compare_tiles`) -> one comparison run (`tracking`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from srtn import track
from srtn.config.evaluate import EvaluateConfig, ModelEntry
from srtn.errors import ConfigError, ShardError
from srtn.evaluate.compare_tiles import comparison_pictures
from srtn.evaluate.matrix import comparison_matrix
from srtn.evaluate.pipeline import DatasetPlan, dataset_plans, score_datasets
from srtn.evaluate.report import markdown_table
from srtn.evaluate.score import METRICS, ResolvedModel, aggregate, in_model_order
from srtn.evaluate.tracking import Comparison, log_comparison
from srtn.vocab import BICUBIC

__all__ = ["EvaluationReport", "comparison_experiment", "evaluate", "model_scale", "resolve_models", "run_evaluation"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    """What `evaluate` measured and where it logged it. `table` has a row per (dataset, model) scored,
    `matrix` one per (model, dataset) cell (not applicable ones included); `comparison` holds the rest
    (per-slide and per-image tables, pictures)."""

    run_id: str
    experiment_id: str
    experiment_name: str
    tracking_uri: str
    runs_url: str
    comparison: Comparison
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went: checks, models, ray_start, ...

    @property
    def table(self) -> pd.DataFrame:
        return self.comparison.table

    @property
    def matrix(self) -> pd.DataFrame:
        return self.comparison.matrix

    @property
    def per_slide(self) -> pd.DataFrame:
        return self.comparison.per_slide

    @property
    def per_image(self) -> pd.DataFrame:
        return self.comparison.per_image

    @property
    def markdown(self) -> str:
        return self.comparison.markdown()

    @property
    def models(self) -> list[ResolvedModel]:
        return self.comparison.models


# --------------------------------------------------------------------------- resolving model URIs


def model_scale(model: torch.nn.Module) -> int:
    """What `model` upsamples by: its `scale` attribute (every srtn model has one), else one probe forward."""
    scale = getattr(model, "scale", None)
    if isinstance(scale, int) and not isinstance(scale, bool):
        return scale
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 8, 8))
    return int(out.shape[-1] // 8)


def resolve_models(entries: Sequence[ModelEntry], *, tracking_uri: str) -> list[ResolvedModel]:
    """Pin and load every entry and read its scale (bicubic: any scale); raise one `ConfigError` naming every
    entry that fails. Runs on the driver before any Ray work."""
    resolved: list[ResolvedModel] = []
    errors: list[str] = []
    first_key: str | None = None
    for i, entry in enumerate(entries):
        key = f"models.{i}.uri"
        try:
            if entry.uri == BICUBIC:
                resolved.append(ResolvedModel(entry.name, entry.uri, BICUBIC, None, 0, None, None))
                continue
            pinned, run_id = track.pin_model_uri(entry.uri, tracking_uri=tracking_uri)
            model = track.load_model(pinned, tracking_uri=tracking_uri)
            n_params = sum(p.numel() for p in model.parameters())
            resolved.append(ResolvedModel(entry.name, entry.uri, pinned, run_id, n_params, model, model_scale(model)))
        except Exception as exc:  # MlflowException, OSError, pickle errors: all mean "this entry is unusable"
            first_key = first_key or key
            errors.append(f"  {key}: model {entry.name!r} ({entry.uri}): {str(exc).strip().splitlines()[0]}")
    if errors:
        raise ConfigError(
            f"cannot resolve model URI(s) in tracking store {tracking_uri}:\n" + "\n".join(errors), key=first_key
        )
    return resolved


def comparison_experiment(cfg: EvaluateConfig, uri: str, models: Sequence[ResolvedModel]) -> tuple[str, str]:
    """`(id, name)` of the experiment for the comparison run: `tracking.experiment` if set, else the one
    experiment all evaluated training runs belong to, else `srtn-<first dataset>` (created if missing)."""
    client = track.client(uri)
    if not cfg.tracking.experiment:
        ids = {client.get_run(m.run_id).info.experiment_id for m in models if m.run_id}
        if len(ids) == 1:
            experiment_id = ids.pop()
            return experiment_id, client.get_experiment(experiment_id).name
    name = cfg.experiment_name
    return track.get_or_create_experiment(name, tracking_uri=uri), name


# --------------------------------------------------------------------------- the job


class _Clock:
    """Seconds per phase of a job (`lap(name)` closes the phase begun at the previous lap)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now


def _check_datasets(cfg: EvaluateConfig) -> None:
    """Every dataset's shards against their manifest, before any Ray work (`ShardError` naming the files; in
    the list form its key names the entry, `datasets.<i>.shards`)."""
    from srtn.data.reader import check_shards

    for i, d in enumerate(cfg.dataset_configs()):
        try:
            check_shards(d.shards, d.scale, splits=(d.split,))
        except ShardError as exc:
            if cfg.data is not None:
                raise
            key = (exc.key or "data.shards").replace("data.", f"datasets.{i}.", 1)
            raise ShardError(
                f"datasets.{i} ({d.name}): {exc}", path=exc.path or d.shards, problems=exc.problems, key=key
            ) from exc


def _per_dataset(plans: Sequence[DatasetPlan], models: Sequence[ResolvedModel], per_image: pd.DataFrame):
    """`(tables, per_slide, per_image)`: each dataset's table (config order) and the per-slide and per-image
    tables of all datasets in dataset, model and tile order; a dataset without rows is an error naming it."""
    tables, slides, images = {}, [], []
    for p in plans:
        rows = per_image[per_image["dataset"] == p.name] if not per_image.empty else per_image
        if not p.models:
            continue
        if rows.empty:
            raise ConfigError(f"no {p.split} tiles under {p.shards} ({p.name})", key=p.key)
        wrong = sorted(set(rows["split"]) - {p.split})
        if wrong:  # read_split filters on the column; this guards the contract
            raise RuntimeError(f"rows of split(s) {wrong} reached the {p.split} evaluation of {p.name}")
        rows = in_model_order(rows[["model", "dataset", "tile_id", "source_id", "split", *METRICS]], models, "tile_id")
        table, per_slide = aggregate(rows, models)
        tables[p.name] = table
        slides.append(per_slide.assign(dataset=p.name))
        images.append(rows)
    if not tables:
        raise ConfigError("no model applies to any dataset's scale: nothing was scored", key="models")
    per_slide = pd.concat(slides, ignore_index=True)
    return (
        tables,
        per_slide[["dataset", *[c for c in per_slide.columns if c != "dataset"]]],
        pd.concat(images, ignore_index=True),
    )


def evaluate(cfg: EvaluateConfig) -> EvaluationReport:
    """Evaluate every model of `cfg` (and bicubic) on the split of every dataset; log one comparison run.

    Fails before any Ray work when the tracking store is unreachable, a dataset's shard folder does not
    match its manifest for its split at its scale (`ShardError` naming every missing, extra, truncated or
    changed file, no `lr_x<scale>` images, no files of the split) or a model URI cannot be resolved
    (`ConfigError` naming each bad entry). Nothing is logged unless every applicable pair was scored.
    """
    from srtn.runtime import init_ray

    clock = _Clock()
    uri = track.resolve_tracking_uri(cfg.tracking.uri)
    track.check_tracking_server(uri)
    _check_datasets(cfg)
    clock.lap("checks")
    models = resolve_models(cfg.entries(), tracking_uri=uri)
    plans = dataset_plans(cfg, models)
    for p in plans:
        skipped = [m.name for m in models if m.name not in p.models]
        if skipped:
            logger.warning("%s is x%d: %s not applicable (another scale)", p.name, p.scale, ", ".join(skipped))
    clock.lap("models")
    init_ray(dashboard=False)  # scoring needs no dashboard (Ray Train is what needs one: init_ray)
    clock.lap("ray_start")
    per_image = score_datasets(cfg, models, [p for p in plans if p.models])
    clock.lap("scoring")
    tables, per_slide, per_image = _per_dataset(plans, models, per_image)
    matrix = comparison_matrix(tables, models, {p.name: p.scale for p in plans})
    comparison = Comparison(list(plans), list(models), tables, per_slide, per_image, matrix)
    pics = cfg.compare_tiles
    if pics.count > 0:
        comparison.pictures, comparison.tiles = comparison_pictures(
            [p for p in plans if p.name in tables], models, per_image, count=pics.count, seed=pics.seed,
            cell=pics.cell_size, gain_tiles=pics.gain_tiles, channels_last=cfg.channels_last,
        )  # fmt: skip
    clock.lap("pictures")
    experiment_id, experiment_name = comparison_experiment(cfg, uri, models)
    run_id = log_comparison(cfg, uri, experiment_id, comparison)
    clock.lap("mlflow")
    logger.debug("evaluation seconds: %s", {k: round(v, 2) for k, v in clock.seconds.items()})
    return EvaluationReport(
        run_id=run_id,
        experiment_id=experiment_id,
        experiment_name=experiment_name,
        tracking_uri=uri,
        runs_url=track.runs_url(uri, experiment_id),
        comparison=comparison,
        seconds=clock.seconds,
    )


def run_evaluation(cfg: EvaluateConfig) -> int:
    """`srtn evaluate`: run `evaluate`, print the tables, the matrix and how to open its runs; exit code 0."""
    report = evaluate(cfg)
    c = report.comparison
    for p in c.plans:
        if p.name not in c.tables:
            continue
        print(f"\n{p.name} x{p.scale}, {p.split} split, crop_border={p.crop_border} (SR quantized to uint8):\n")
        print(markdown_table(c.tables[p.name]))
        table = c.tables[p.name].set_index("model")
        if BICUBIC in table.index:
            row = table.loc[BICUBIC]
            print(f"\nbicubic vs HR (interpolation baseline): MSE {row.mse:.6f} on [0,1], {row.mse_uint8:.2f} on 0-255")
    if len(c.plans) > 1:
        print(f"\nmodels x datasets, PSNR / SSIM (RGB, and Y):\n\n{c.matrix_markdown(compact=True)}")
    print(f"\ncomparison run {report.run_id} ({cfg.run_name}) in experiment {report.experiment_name}")
    for line in track.ui_hint(report.tracking_uri, report.experiment_id):
        print(line)
    return 0
