"""What the comparison run of `srtn evaluate` holds, and what the evaluated training runs get back.

The run (`log_comparison`): the flattened config as params; one dataset input per evaluated dataset
(`srtn.track.log_shards_input`: source the shards URI, digest the manifest hash, context the split);
metrics `<split>_<metric>.<dataset>.<model>` for every applicable cell (and `<split>_<metric>.<model>` when
one dataset is evaluated, as before); artifacts `comparison.json` / `per_slide.json` / `per_image.json`
(MLflow tables, a `dataset` column in each), `comparison.md` (per-dataset tables and the matrix),
`comparison_matrix.json` (MLflow table: a row per cell, nulls where not applicable), `comparison_matrix.md`,
`comparison_matrix.png` (heatmaps), `comparison.png` (bars, one dataset), `compare_tiles.png` (and
`compare_tiles/<dataset>.png` with several), `gain_tiles.png`, `compare_tiles.json` (which tiles, their
PSNR), `loss_curves.png`; tags linking the evaluated runs, the matrix as the run's note.

Each evaluated training run gets `test_<metric>.<dataset>` for every test dataset it was scored on, and the
MLflow contract's `test_psnr` / `test_ssim` (and `_y`) from the dataset it was trained on (the one whose
manifest hash its `srtn.shards_manifest_hash` tag names), else from the first test dataset it applies to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from srtn import track
from srtn.config.evaluate import EvaluateConfig
from srtn.evaluate.matrix import matrix_figure, matrix_markdown, matrix_records
from srtn.evaluate.pipeline import DatasetPlan
from srtn.evaluate.report import LOSS_KEYS, bar_figure, loss_figure, loss_histories, markdown_table
from srtn.evaluate.score import METRICS, ResolvedModel

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["Comparison", "log_comparison"]

logger = logging.getLogger(__name__)

_CONTRACT = ("psnr", "ssim", "psnr_y", "ssim_y")  # what a training run gets back as test_<metric>


@dataclass
class Comparison:
    """Everything one evaluation measured: per-dataset tables (`tables`, config order), the per-slide and
    per-image tables of all datasets (a `dataset` column), the models x datasets `matrix`, the pictures
    (`{artifact: RGB uint8}`) and what they show (`tiles`)."""

    plans: list[DatasetPlan]
    models: list[ResolvedModel]
    tables: dict[str, pd.DataFrame]
    per_slide: pd.DataFrame
    per_image: pd.DataFrame
    matrix: pd.DataFrame
    pictures: dict[str, np.ndarray] = field(default_factory=dict)
    tiles: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """Every dataset's table in one, `dataset` first."""
        return pd.concat([t.assign(dataset=d) for d, t in self.tables.items()], ignore_index=True)[
            ["dataset", *next(iter(self.tables.values())).columns]
        ]

    def markdown(self) -> str:
        """The per-dataset tables (just the table when one dataset is evaluated)."""
        if len(self.tables) == 1:
            return markdown_table(next(iter(self.tables.values())))
        parts = []
        for p in self.plans:
            if p.name in self.tables:
                head = f"{p.name} x{p.scale}, {p.split} split, crop_border={p.crop_border}:"
                parts.append(f"{head}\n\n{markdown_table(self.tables[p.name])}")
        return "\n\n".join(parts)

    def matrix_markdown(self, *, compact: bool = False) -> str:
        """The models x datasets matrix (`compact`: PSNR / SSIM (Y) in one cell per dataset)."""
        return matrix_markdown(self.matrix, compact=compact)


def _tags(cfg: EvaluateConfig, c: Comparison, note: str) -> dict[str, Any]:
    """Tags of the comparison run: what was evaluated, how, and the tables as the run's note."""
    plans = c.plans

    def joined(values: Sequence[Any]) -> str:
        return ",".join(str(v) for v in dict.fromkeys(values))

    tags: dict[str, Any] = {
        "srtn.job": "evaluate",
        "srtn.dataset": joined([p.name for p in plans]),
        "srtn.scale": joined([p.scale for p in plans]),
        "srtn.split": joined([p.split for p in plans]),
        "srtn.crop_border": joined([p.crop_border for p in plans]),
        "srtn.git_commit": track.git_commit(),
        "srtn.evaluated_runs": ",".join(dict.fromkeys(m.run_id for m in c.models if m.run_id)),
        "mlflow.note.content": note,
    }
    for m in c.models:
        tags[f"srtn.model.{m.name}.uri"] = m.resolved_uri
        if m.run_id:
            tags[f"srtn.model.{m.name}.run_id"] = m.run_id
    return tags


def _note(c: Comparison) -> str:
    sets = "; ".join(
        f"{p.split} split of `{p.shards}` ({p.name}, x{p.scale}, crop_border={p.crop_border})" for p in c.plans
    )
    matrix = c.matrix_markdown(compact=True)
    return f"{sets}. SR outputs quantized to uint8, RGB and BT.601 Y (`_y`).\n\n{matrix}\n\n{c.markdown()}"


def _cell_metrics(c: Comparison, now: int) -> list[Any]:
    """`<split>_<metric>.<dataset>.<model>` of every scored cell; `<split>_<metric>.<model>` with one dataset."""
    from mlflow.entities import Metric

    split_of = {p.name: p.split for p in c.plans}
    values = []
    for dataset, table in c.tables.items():
        for r in table.itertuples(index=False):
            for key in (*METRICS, "mse_uint8"):
                names = [f"{split_of[dataset]}_{key}.{dataset}.{r.model}"]
                if len(c.tables) == 1:
                    names.append(f"{split_of[dataset]}_{key}.{r.model}")
                values += [Metric(track.sanitize_key(n), float(getattr(r, key)), now, 0) for n in names]
    return values


def _log_inputs(uri: str, run_id: str, plans: Sequence[DatasetPlan]) -> dict[str, str | None]:
    """Every evaluated dataset as an input of the run; `{dataset: digest or None}`."""
    from srtn.data.manifest import manifest_hash

    return {
        p.name: track.log_shards_input(uri, run_id, shards=p.shards, name=p.name, context=p.split, digest=manifest_hash)
        for p in plans
    }


def _log_artifacts(client: MlflowClient, run_id: str, c: Comparison) -> None:
    client.log_table(run_id, data=c.table, artifact_file="comparison.json")
    client.log_table(run_id, data=c.per_slide, artifact_file="per_slide.json")
    client.log_table(run_id, data=c.per_image, artifact_file="per_image.json")
    client.log_text(run_id, f"{c.markdown()}\n\n{c.matrix_markdown()}\n", "comparison.md")
    client.log_table(run_id, data=matrix_records(c.matrix), artifact_file="comparison_matrix.json")
    client.log_text(run_id, c.matrix_markdown() + "\n", "comparison_matrix.md")
    names = ", ".join(f"{p.name} x{p.scale}" for p in c.plans)
    client.log_figure(run_id, matrix_figure(c.matrix, f"models x datasets ({names})"), "comparison_matrix.png")
    if len(c.tables) == 1:
        (p,) = c.plans
        title = f"{p.name} x{p.scale}, {p.split} split, crop {p.crop_border}"
        client.log_figure(run_id, bar_figure(next(iter(c.tables.values())), title), "comparison.png")
    for artifact, image in c.pictures.items():
        client.log_image(run_id, image, artifact_file=artifact)
    if c.tiles:
        client.log_dict(run_id, c.tiles, "compare_tiles.json")
    histories = loss_histories(client, c.models)
    if histories:
        client.log_figure(run_id, loss_figure(histories, "training runs of the compared models"), "loss_curves.png")
    else:
        logger.warning("no model has a training run with %s: no loss_curves.png", "/".join(LOSS_KEYS))


def log_comparison(cfg: EvaluateConfig, uri: str, experiment_id: str, c: Comparison) -> str:
    """One comparison run: params, dataset inputs, per-cell metrics, tables, figures, pictures and tags;
    returns its id (the run is FAILED if any of it fails)."""
    client = track.client(uri)
    run_id = track.create_run(uri, experiment_id, run_name=cfg.run_name, tags=_tags(cfg, c, _note(c)))
    try:
        track.log_params_flat(uri, run_id, cfg)
        digests = _log_inputs(uri, run_id, c.plans)
        metrics = _cell_metrics(c, int(time.time() * 1000))
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        _log_artifacts(client, run_id, c)
        if cfg.tracking.log_to_source_runs:
            _log_to_source_runs(client, run_id, c, digests)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _home_dataset(
    client: MlflowClient, run_id: str, scored: Mapping[str, pd.Series], digests: Mapping[str, Any]
) -> str:
    """The dataset whose test metrics a training run gets as `test_*`: the one it was trained on (same manifest
    hash), else the first it was scored on."""
    trained_on = client.get_run(run_id).data.tags.get("srtn.shards_manifest_hash")
    return next((d for d in scored if trained_on and digests.get(d) == trained_on), next(iter(scored)))


def _log_to_source_runs(client: MlflowClient, run_id: str, c: Comparison, digests: Mapping[str, Any]) -> None:
    """`test_<metric>.<dataset>` and `test_<metric>` on each evaluated training run, with a tag pointing back
    at the comparison run; skipped for a run that two compared models share (test splits only)."""
    from mlflow.entities import Metric, RunTag

    counts = pd.Series([m.run_id for m in c.models if m.run_id]).value_counts()
    tests = [p.name for p in c.plans if p.split == "test" and p.name in c.tables]
    now = int(time.time() * 1000)
    for m in c.models:
        if not m.run_id:
            continue
        if counts[m.run_id] > 1:
            logger.warning("run %s backs several compared models: test metrics not copied to it", m.run_id)
            continue
        scored = {d: c.tables[d].set_index("model").loc[m.name] for d in tests if m.name in set(c.tables[d]["model"])}
        if not scored:
            continue
        home = scored[_home_dataset(client, m.run_id, scored, digests)]
        values = [Metric(f"test_{k}", float(home[k]), now, 0) for k in _CONTRACT]
        values += [
            Metric(track.sanitize_key(f"test_{k}.{d}"), float(row[k]), now, 0)
            for d, row in scored.items()
            for k in _CONTRACT
        ]
        client.log_batch(m.run_id, metrics=values, tags=[RunTag("srtn.test_comparison_run", run_id)])
