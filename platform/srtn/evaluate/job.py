"""Test-split evaluation of trained models and bicubic, compared in one MLflow run (`srtn evaluate`).

Flow: resolve every model URI against MLflow (`latest` and aliases pinned to a version) and load each
model on the driver: a bad URI fails here, naming the entry, before any Ray work -> one Ray Data pass
reads only `OUT/split=test/*.parquet` (rows filtered on `split` too, `srtn.data.reader.read_split`),
decodes PNGs in `map_batches` tasks and scores batches in a pool of callable-class actors (`actors`,
`num_gpus` per actor); each actor receives the models once, at start, and runs every model on every
batch, so all models see the same decoded tiles and each actor start-up (the costly part of a small
evaluation) is paid once, not once per model -> per-image metrics are averaged per model and per slide
on the driver (`score`) -> one comparison run: tables, a bar chart, the training-loss curves of the
compared runs, `test_<metric>.<model>` metrics and tags linking the evaluated runs (`report`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from srtn import track
from srtn.config.evaluate import EvaluateConfig, ModelEntry
from srtn.errors import ConfigError
from srtn.evaluate.report import log_comparison, markdown_table
from srtn.evaluate.score import METRICS, ResolvedModel, aggregate, in_model_order, score_batch
from srtn.models import build_model
from srtn.vocab import BICUBIC

__all__ = ["EvaluationReport", "comparison_experiment", "evaluate", "resolve_models", "run_evaluation"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    """What `evaluate` measured and where it logged it. Tables are pandas DataFrames, one row per model
    (`table`), per model and source slide (`per_slide`), per model and tile (`per_image`)."""

    run_id: str
    experiment_id: str
    experiment_name: str
    tracking_uri: str
    runs_url: str
    table: pd.DataFrame
    per_slide: pd.DataFrame
    per_image: pd.DataFrame
    markdown: str
    models: list[ResolvedModel]


# --------------------------------------------------------------------------- resolving model URIs


def resolve_models(entries: Sequence[ModelEntry], *, scale: int, tracking_uri: str) -> list[ResolvedModel]:
    """Pin and load every entry (bicubic is built); raise one `ConfigError` naming every entry that fails.

    Runs on the driver before any Ray work; checks that each model upsamples by `scale` (`model.scale`).
    """
    resolved: list[ResolvedModel] = []
    errors: list[str] = []
    first_key: str | None = None
    for i, entry in enumerate(entries):
        key = f"models.{i}.uri"
        try:
            if entry.uri == BICUBIC:
                resolved.append(ResolvedModel(entry.name, entry.uri, BICUBIC, None, 0, build_model(BICUBIC, scale)))
                continue
            pinned, run_id = track.pin_model_uri(entry.uri, tracking_uri=tracking_uri)
            model = track.load_model(pinned, tracking_uri=tracking_uri)
            model_scale = getattr(model, "scale", scale)
            if model_scale != scale:
                raise ValueError(f"it upsamples x{model_scale}, the evaluation is x{scale} (data.scale)")
            n_params = sum(p.numel() for p in model.parameters())
            resolved.append(ResolvedModel(entry.name, entry.uri, pinned, run_id, n_params, model))
        except Exception as exc:  # MlflowException, OSError, pickle errors: all mean "this entry is unusable"
            first_key = first_key or key
            errors.append(f"  {key}: model {entry.name!r} ({entry.uri}): {str(exc).strip().splitlines()[0]}")
    if errors:
        raise ConfigError(
            f"cannot resolve model URI(s) in tracking store {tracking_uri}:\n" + "\n".join(errors), key=first_key
        )
    return resolved


# --------------------------------------------------------------------------- the Ray Data scoring pass


class _ScoreActor:
    """Ray Data callable class: holds every compared model once (on the actor's GPU when it has one) and
    scores each decoded batch with all of them, one output row per (model, tile)."""

    def __init__(self, models: Any, *, crop_border: int, use_gpu: bool) -> None:
        import ray

        if isinstance(models, ray.ObjectRef):  # passed by reference: small actor args, one copy in the store
            models = ray.get(models)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.models = {name: model.to(self.device).eval() for name, model in models.items()}
        self.crop_border = crop_border

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for name, model in self.models.items():
            try:
                scores = score_batch(model, batch, crop_border=self.crop_border, device=self.device)
            except Exception as exc:
                raise RuntimeError(f"model {name!r} failed on a batch: {exc}") from exc
            scores["model"] = np.full(len(scores["psnr"]), name, dtype=object)
            parts.append(scores)
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _num_gpus(cfg: EvaluateConfig) -> float:
    if cfg.num_gpus is not None:
        return cfg.num_gpus
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _score_all(cfg: EvaluateConfig, models: Sequence[ResolvedModel]) -> pd.DataFrame:
    """Per-image metrics of every model over the evaluated split: one Ray Data pass (read -> decode tasks
    -> one actor pool whose actors hold all models), so every model sees the same decoded tiles."""
    import ray

    from srtn.data.reader import decode_eval_batch, read_split

    d = cfg.data
    num_gpus = _num_gpus(cfg)
    ds = read_split(d.shards, d.split, scale=d.scale, limit=d.limit, num_cpus=cfg.data_cpus)
    ds = ds.map_batches(
        decode_eval_batch,
        fn_kwargs={"scale": d.scale, "keep_meta": True},
        batch_format="numpy",
        batch_size=cfg.batch_size,
        num_cpus=cfg.data_cpus,
    )
    ds = ds.map_batches(
        _ScoreActor,
        fn_constructor_kwargs={
            "models": ray.put({m.name: m.model for m in models}),
            "crop_border": cfg.effective_crop_border,
            "use_gpu": num_gpus > 0,
        },
        batch_format="numpy",
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=num_gpus,
    )
    start = time.perf_counter()
    per_image = ds.to_pandas()
    logger.info(
        "scored %d models on %d tiles in %.1f s",
        len(models),
        per_image["tile_id"].nunique(),
        time.perf_counter() - start,
    )
    if per_image.empty:
        raise ConfigError(f"no {d.split} tiles under {d.shards}", key="data.shards")
    wrong = sorted(set(per_image["split"]) - {d.split})
    if wrong:  # read_split filters on the column; this guards the contract
        raise RuntimeError(f"rows of split(s) {wrong} reached the {d.split} evaluation")
    per_image = per_image[["model", "tile_id", "source_id", "split", *METRICS]]
    return in_model_order(per_image, models, "tile_id")


# --------------------------------------------------------------------------- the job


def comparison_experiment(cfg: EvaluateConfig, uri: str, models: Sequence[ResolvedModel]) -> tuple[str, str]:
    """`(id, name)` of the experiment for the comparison run: `tracking.experiment` if set, else the one
    experiment all evaluated training runs belong to, else `srtn-<dataset>` (created if missing)."""
    client = track.client(uri)
    if not cfg.tracking.experiment:
        ids = {client.get_run(m.run_id).info.experiment_id for m in models if m.run_id}
        if len(ids) == 1:
            experiment_id = ids.pop()
            return experiment_id, client.get_experiment(experiment_id).name
    name = cfg.experiment_name
    return track.get_or_create_experiment(name, tracking_uri=uri), name


def evaluate(cfg: EvaluateConfig) -> EvaluationReport:
    """Evaluate every model of `cfg` (and bicubic) on the test split; log one MLflow comparison run.

    Fails before any Ray work when the tracking store is unreachable, the shards have no `data.split`
    files or a model URI cannot be resolved (`ConfigError` naming each bad entry); shards without
    `lr_x<scale>` images fail when the dataset is built, before any tile is read. Nothing is logged
    unless every model was scored.
    """
    from srtn.data.shards import shard_files
    from srtn.runtime import init_ray

    uri = track.resolve_tracking_uri(cfg.tracking.uri)
    track.check_tracking_server(uri)
    if not shard_files(cfg.data.shards, cfg.data.split):
        raise ConfigError(
            f"no {cfg.data.split} shards under {cfg.data.shards} (expected {cfg.data.shards}/split={cfg.data.split}/"
            "*.parquet)",
            key="data.shards",
        )
    models = resolve_models(cfg.entries(), scale=cfg.data.scale, tracking_uri=uri)
    init_ray()
    per_image = _score_all(cfg, models)
    experiment_id, experiment_name = comparison_experiment(cfg, uri, models)
    table, per_slide = aggregate(per_image, models)
    markdown = markdown_table(table)
    run_id = log_comparison(cfg, uri, experiment_id, models, table, per_slide, per_image, markdown)
    return EvaluationReport(
        run_id=run_id,
        experiment_id=experiment_id,
        experiment_name=experiment_name,
        tracking_uri=uri,
        runs_url=track.runs_url(uri, experiment_id),
        table=table,
        per_slide=per_slide,
        per_image=per_image,
        markdown=markdown,
        models=list(models),
    )


def run_evaluation(cfg: EvaluateConfig) -> int:
    """`srtn evaluate`: run `evaluate`, print the comparison table and how to open its runs; exit code 0."""
    report = evaluate(cfg)
    d = cfg.data
    print(f"\n{d.name} x{d.scale}, {d.split} split, crop_border={cfg.effective_crop_border} (SR quantized to uint8):\n")
    print(report.markdown)
    if BICUBIC in set(report.table["model"]):
        row = report.table.set_index("model").loc[BICUBIC]
        print(f"\nbicubic vs HR (interpolation baseline): MSE {row.mse:.6f} on [0,1], {row.mse_uint8:.2f} on 0-255")
    print(f"\ncomparison run {report.run_id} ({cfg.run_name}) in experiment {report.experiment_name}")
    for line in track.ui_hint(report.tracking_uri, report.experiment_id):
        print(line)
    return 0
