"""Test-split evaluation of trained models and bicubic, compared in one MLflow run (`srtn evaluate`).

Flow: resolve every model URI against MLflow (`latest` and aliases pinned to a version) and load each
model on the driver: a bad URI fails here, naming the entry, before any Ray work -> one Ray Data pass
reads only `OUT/split=test/*.parquet` (rows filtered on `split` too, `srtn.training_data.read_split`),
decodes PNGs in `map_batches` tasks and scores batches in a pool of callable-class actors (`actors`,
`num_gpus` per actor); each actor receives the models once, at start, and runs every model on every
batch, so all models see the same decoded tiles and each actor start-up (the costly part of a small
evaluation) is paid once, not once per model -> per-image metrics are averaged per model and per slide
on the driver -> one comparison run: tables, a bar chart, the training-loss curves of the compared
runs, `test_<metric>.<model>` metrics and tags linking the evaluated runs.

Metric conventions (`srtn.metrics`): SR outputs are clamped to [0, 1] and **quantized to uint8**
(`round(255 x) / 255`) before any metric, as images are stored and viewed; HR tiles are uint8 already.
PSNR, SSIM (11x11 Gaussian, sigma 1.5) and MSE on RGB, and PSNR/SSIM on BT.601 luma (`_y`), after
cropping `crop_border` pixels per side (default: the scale; 0 reproduces the original work's uncropped
uint8 numbers). MSE is on [0, 1]; `mse_uint8 = 255^2 * mse` is the same on the 0-255 scale, and
bicubic's row is the original's "plain interpolation vs HR" baseline. Per-model values are means of
per-image values over the same tiles for every model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from srtn import metrics, tracking
from srtn.config.evaluate import BICUBIC, EvaluateConfig, ModelEntry
from srtn.errors import ConfigError
from srtn.models import build_model
from srtn.models.serialization import load_sr_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient
    from torch import nn

__all__ = [
    "METRICS",
    "EvaluationReport",
    "ResolvedModel",
    "aggregate",
    "evaluate",
    "markdown_table",
    "resolve_models",
    "run_evaluation",
    "score_batch",
]

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("psnr", "ssim", "psnr_y", "ssim_y", "mse")
LOSS_KEYS: tuple[str, ...] = ("train_loss", "val_loss")


@dataclass(frozen=True)
class ResolvedModel:
    """A config entry bound to one concrete model: `resolved_uri` pins a version (`latest` and aliases
    are resolved once, so every actor loads the same weights); `run_id` is its training run, if any."""

    name: str
    uri: str
    resolved_uri: str
    run_id: str | None
    n_params: int
    model: nn.Module = field(repr=False, compare=False)


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


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at `uri` for the block (model loading reads the global), then
    restore exactly what was there: the global (usually unset) and `$MLFLOW_TRACKING_URI`, which
    `mlflow.set_tracking_uri` overwrites. Restoring the effective URI instead would pin it explicitly
    and silently override a later change of the environment variable."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils  # no public getter of the global

    env = os.environ.get("MLFLOW_TRACKING_URI")
    saved = getattr(tracking_utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)  # None also unsets the environment variable...
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env  # ...so put it back


def _pin(client: MlflowClient, uri: str) -> tuple[str, str | None]:
    """`(pinned uri, source run id)` of a `models:/`, `runs:/` or bare-run-id URI; MLflow errors propagate."""
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/") :].split("/", 1)[0]
        client.get_run(run_id)
        return uri, run_id
    if not uri.startswith("models:/"):  # a bare run id: the model that run logged
        run = client.get_run(uri)
        logged = client.search_logged_models(
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
        return uri, client.get_logged_model(rest).source_run_id
    if "@" in rest:
        name, alias = rest.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    else:
        name, _, ref = rest.partition("/")
        if not ref:
            raise ValueError("a registered model URI needs a version, 'latest' or an alias: models:/NAME/VERSION")
        if ref.isdigit():
            mv = client.get_model_version(name, ref)
        elif ref == "latest":
            escaped = name.replace("'", "\\'")
            versions = client.search_model_versions(f"name = '{escaped}'")
            if not versions:
                raise ValueError(f"registered model {name!r} has no versions")
            mv = max(versions, key=lambda v: int(v.version))
        else:
            mv = client.get_model_version_by_alias(name, ref)
    return f"models:/{mv.name}/{mv.version}", mv.run_id or None


def resolve_models(entries: Sequence[ModelEntry], *, scale: int, tracking_uri: str) -> list[ResolvedModel]:
    """Pin and load every entry (bicubic is built); raise one `ConfigError` naming every entry that fails.

    Runs on the driver before any Ray work; checks that each model upsamples by `scale` (`model.scale`).
    """
    client = tracking.client(tracking_uri)
    resolved: list[ResolvedModel] = []
    errors: list[str] = []
    first_key: str | None = None
    for i, entry in enumerate(entries):
        key = f"models.{i}.uri"
        try:
            if entry.uri == BICUBIC:
                resolved.append(ResolvedModel(entry.name, entry.uri, BICUBIC, None, 0, build_model(BICUBIC, scale)))
                continue
            pinned, run_id = _pin(client, entry.uri)
            with _tracking_uri(tracking_uri):
                model = load_sr_model(pinned)
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


# --------------------------------------------------------------------------- scoring (no Ray here)


def score_batch(
    model: nn.Module, batch: Mapping[str, Any], *, crop_border: int, device: str | torch.device = "cpu"
) -> dict[str, np.ndarray]:
    """Per-image metrics of `model` on a decoded batch (`lr`, `hr`: float32 NCHW in [0, 1] from uint8).

    The SR output is clamped and quantized to uint8 levels before the metrics; returns `METRICS`
    columns (float64) plus the batch's `tile_id`/`source_id`/`split` when present.
    """
    lr = torch.as_tensor(np.asarray(batch["lr"]), device=device)
    hr = torch.as_tensor(np.asarray(batch["hr"]), device=device)
    with torch.inference_mode():
        sr = model(lr)
    if sr.shape != hr.shape:
        raise ValueError(f"model output {tuple(sr.shape)} does not match HR {tuple(hr.shape)}")
    sr = torch.round(sr.float().clamp(0.0, 1.0) * 255.0) / 255.0
    hr = torch.round(hr.float() * 255.0) / 255.0  # exact uint8 levels whatever the decoder's float rounding
    kw = {"crop_border": crop_border}
    c = crop_border
    diff = (sr - hr).double()[..., c : sr.shape[-2] - c, c : sr.shape[-1] - c]
    out = {
        "psnr": metrics.psnr(sr, hr, **kw),
        "ssim": metrics.ssim(sr, hr, **kw),
        "psnr_y": metrics.psnr(sr, hr, y_channel=True, **kw),
        "ssim_y": metrics.ssim(sr, hr, y_channel=True, **kw),
        "mse": diff.pow(2).flatten(1).mean(dim=1),
    }
    result = {k: v.cpu().numpy().astype(np.float64) for k, v in out.items()}
    for name in ("tile_id", "source_id", "split"):
        if name in batch:
            result[name] = np.asarray(batch[name])
    return result


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

    from srtn.training_data import decode_eval_batch, read_split

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
        concurrency=cfg.actors,
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
    return _in_model_order(per_image, models, "tile_id")


# --------------------------------------------------------------------------- aggregation and output


def aggregate(per_image: pd.DataFrame, models: Sequence[ResolvedModel]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`(table, per_slide)`: means of `METRICS` per model (rows in `models` order, with `mse_uint8`,
    `n_images`, `params`, `uri`, `run_id`) and per model and `source_id` (with `n_images`)."""
    grouped = per_image.groupby("model", sort=False)
    table = grouped[list(METRICS)].mean()
    table["mse_uint8"] = table["mse"] * 255.0**2
    table["n_images"] = grouped.size()
    info = pd.DataFrame(
        [{"model": m.name, "params": m.n_params, "uri": m.resolved_uri, "run_id": m.run_id or ""} for m in models]
    ).set_index("model")
    table = info.join(table, how="left")[[*METRICS, "mse_uint8", "n_images", "params", "uri", "run_id"]]
    table["n_images"] = table["n_images"].fillna(0).astype(int)
    by_slide = per_image.groupby(["model", "source_id"], sort=True)
    per_slide = by_slide[list(METRICS)].mean()
    per_slide["n_images"] = by_slide.size()
    return table.reset_index(), _in_model_order(per_slide.reset_index(), models, "source_id")


def _in_model_order(df: pd.DataFrame, models: Sequence[ResolvedModel], *by: str) -> pd.DataFrame:
    """Rows sorted by the models' config order, then by `by` columns."""
    rank = df["model"].map({m.name: i for i, m in enumerate(models)})
    return df.assign(_rank=rank).sort_values(["_rank", *by]).drop(columns="_rank").reset_index(drop=True)


def markdown_table(table: pd.DataFrame) -> str:
    """The comparison table as GitHub markdown (no extra dependency)."""
    head = "| model | PSNR | SSIM | PSNR-Y | SSIM-Y | MSE | MSE (0-255) | images | params |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        lines.append(
            f"| {r.model} | {r.psnr:.3f} | {r.ssim:.4f} | {r.psnr_y:.3f} | {r.ssim_y:.4f} | {r.mse:.6f} "
            f"| {r.mse_uint8:.2f} | {r.n_images} | {r.params:,} |"
        )
    return "\n".join(lines)


def _bar_figure(table: pd.DataFrame, title: str) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.6 * len(table) + 3), 4.0), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, whatever pyplot's backend is
    x = np.arange(len(table))
    for ax, (rgb, y, label) in zip(fig.subplots(1, 2), [("psnr", "psnr_y", "PSNR (dB)"), ("ssim", "ssim_y", "SSIM")]):
        for offset, key, name in ((-0.2, rgb, "RGB"), (0.2, y, "Y")):
            bars = ax.bar(x + offset, table[key], width=0.4, label=name)
            ax.bar_label(bars, fmt="%.2f" if key.startswith("psnr") else "%.3f", fontsize=7)
        ax.set_xticks(x, table["model"], rotation=20)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        low = float(np.nanmin(table[[rgb, y]].to_numpy()))
        ax.set_ylim(bottom=max(0.0, low * 0.9))
    fig.suptitle(title)
    return fig


def _loss_histories(client: MlflowClient, models: Sequence[ResolvedModel]) -> dict[str, dict[str, list]]:
    """`{model: {metric: [(step, value), ...]}}` of the models that have a training run with a history."""
    out: dict[str, dict[str, list]] = {}
    for m in models:
        if not m.run_id:
            continue
        curves = {}
        for key in LOSS_KEYS:
            history = sorted(client.get_metric_history(m.run_id, key), key=lambda h: (h.step, h.timestamp))
            if history:
                curves[key] = [(h.step, h.value) for h in history]
        if curves:
            out[m.name] = curves
    return out


def _loss_figure(histories: Mapping[str, Mapping[str, list]], title: str) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, key in zip(fig.subplots(1, len(LOSS_KEYS), sharey=True), LOSS_KEYS):
        for name, curves in histories.items():
            if key in curves:
                steps, values = zip(*curves[key])
                ax.plot(steps, values, marker="o", markersize=3, label=name)
        ax.set_title(key)
        ax.set_xlabel("epoch (step)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- the job


def _log_comparison(
    cfg: EvaluateConfig,
    uri: str,
    experiment_id: str,
    models: Sequence[ResolvedModel],
    table: pd.DataFrame,
    per_slide: pd.DataFrame,
    per_image: pd.DataFrame,
    markdown: str,
) -> str:
    """One comparison run: params, tables, figures, per-model metrics and tags; returns its id."""
    from mlflow.entities import Metric

    client = tracking.client(uri)
    split, crop = cfg.data.split, cfg.effective_crop_border
    note = (
        f"{split} split of `{cfg.data.shards}` (x{cfg.data.scale}): SR outputs quantized to uint8, "
        f"crop_border={crop}, RGB and BT.601 Y (`_y`).\n\n{markdown}"
    )
    tags: dict[str, Any] = {
        "srtn.job": "evaluate",
        "srtn.dataset": cfg.data.name,
        "srtn.scale": cfg.data.scale,
        "srtn.split": split,
        "srtn.crop_border": crop,
        "srtn.git_commit": tracking.git_commit(),
        "srtn.evaluated_runs": ",".join(dict.fromkeys(m.run_id for m in models if m.run_id)),
        "mlflow.note.content": note,
    }
    for m in models:
        tags[f"srtn.model.{m.name}.uri"] = m.resolved_uri
        if m.run_id:
            tags[f"srtn.model.{m.name}.run_id"] = m.run_id
    run_id = tracking.create_run(uri, experiment_id, run_name=cfg.run_name, tags=tags)
    try:
        tracking.log_params_flat(uri, run_id, cfg)
        now = int(time.time() * 1000)
        values = [
            Metric(tracking.sanitize_key(f"{split}_{key}.{r.model}"), float(getattr(r, key)), now, 0)
            for r in table.itertuples(index=False)
            for key in (*METRICS, "mse_uint8")
        ]
        client.log_batch(run_id, metrics=values)
        client.log_table(run_id, data=table, artifact_file="comparison.json")
        client.log_table(run_id, data=per_slide, artifact_file="per_slide.json")
        client.log_table(run_id, data=per_image, artifact_file="per_image.json")
        client.log_text(run_id, markdown + "\n", "comparison.md")
        title = f"{cfg.data.name} x{cfg.data.scale}, {split} split, crop {crop}"
        client.log_figure(run_id, _bar_figure(table, title), "comparison.png")
        histories = _loss_histories(client, models)
        if histories:
            loss_title = f"training runs of the compared models ({cfg.data.name} x{cfg.data.scale})"
            client.log_figure(run_id, _loss_figure(histories, loss_title), "loss_curves.png")
        else:
            logger.warning("no model has a training run with %s: no loss_curves.png", "/".join(LOSS_KEYS))
        if split == "test" and cfg.tracking.log_to_source_runs:
            _log_to_source_runs(client, run_id, models, table)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _log_to_source_runs(
    client: MlflowClient, run_id: str, models: Sequence[ResolvedModel], table: pd.DataFrame
) -> None:
    """`test_psnr`, `test_ssim` (and `_y`) on each evaluated training run (the MLflow contract), with a tag
    pointing back at the comparison run; skipped for a run that two compared models share."""
    from mlflow.entities import Metric, RunTag

    counts = pd.Series([m.run_id for m in models if m.run_id]).value_counts()
    rows = table.set_index("model")
    now = int(time.time() * 1000)
    for m in models:
        if not m.run_id:
            continue
        if counts[m.run_id] > 1:
            logger.warning("run %s backs several compared models: test metrics not copied to it", m.run_id)
            continue
        values = [Metric(f"test_{k}", float(rows.at[m.name, k]), now, 0) for k in ("psnr", "ssim", "psnr_y", "ssim_y")]
        client.log_batch(m.run_id, metrics=values, tags=[RunTag("srtn.test_comparison_run", run_id)])


def _experiment(cfg: EvaluateConfig, uri: str, models: Sequence[ResolvedModel]) -> tuple[str, str]:
    """`(id, name)` of the experiment for the comparison run: `tracking.experiment` if set, else the one
    experiment all evaluated training runs belong to, else `srtn-<dataset>` (created if missing)."""
    client = tracking.client(uri)
    if not cfg.tracking.experiment:
        ids = {client.get_run(m.run_id).info.experiment_id for m in models if m.run_id}
        if len(ids) == 1:
            experiment_id = ids.pop()
            return experiment_id, client.get_experiment(experiment_id).name
    name = cfg.experiment_name
    return tracking.get_or_create_experiment(name, tracking_uri=uri), name


def evaluate(cfg: EvaluateConfig) -> EvaluationReport:
    """Evaluate every model of `cfg` (and bicubic) on the test split; log one MLflow comparison run.

    Fails before any Ray work when the tracking store is unreachable, the shards have no `data.split`
    files or a model URI cannot be resolved (`ConfigError` naming each bad entry); shards without
    `lr_x<scale>` images fail when the dataset is built, before any tile is read. Nothing is logged
    unless every model was scored.
    """
    from srtn.runtime import init_ray
    from srtn.shards import shard_files

    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    tracking.check_tracking_server(uri)
    if not shard_files(cfg.data.shards, cfg.data.split):
        raise ConfigError(
            f"no {cfg.data.split} shards under {cfg.data.shards} (expected {cfg.data.shards}/split={cfg.data.split}/"
            "*.parquet)",
            key="data.shards",
        )
    models = resolve_models(cfg.entries(), scale=cfg.data.scale, tracking_uri=uri)
    init_ray()
    per_image = _score_all(cfg, models)
    experiment_id, experiment_name = _experiment(cfg, uri, models)
    table, per_slide = aggregate(per_image, models)
    markdown = markdown_table(table)
    run_id = _log_comparison(cfg, uri, experiment_id, models, table, per_slide, per_image, markdown)
    return EvaluationReport(
        run_id=run_id,
        experiment_id=experiment_id,
        experiment_name=experiment_name,
        tracking_uri=uri,
        runs_url=tracking.runs_url(uri, experiment_id),
        table=table,
        per_slide=per_slide,
        per_image=per_image,
        markdown=markdown,
        models=list(models),
    )


def run_evaluation(cfg: EvaluateConfig) -> int:
    """`srtn evaluate`: run `evaluate`, print the comparison table and the MLflow runs page; exit code 0."""
    report = evaluate(cfg)
    d = cfg.data
    print(f"\n{d.name} x{d.scale}, {d.split} split, crop_border={cfg.effective_crop_border} (SR quantized to uint8):\n")
    print(report.markdown)
    if BICUBIC in set(report.table["model"]):
        row = report.table.set_index("model").loc[BICUBIC]
        print(f"\nbicubic vs HR (interpolation baseline): MSE {row.mse:.6f} on [0,1], {row.mse_uint8:.2f} on 0-255")
    print(f"\ncomparison run {report.run_id} ({cfg.run_name}) in experiment {report.experiment_name}")
    if not report.tracking_uri.startswith(("http://", "https://")):
        print(f"open it with: mlflow ui --backend-store-uri {report.tracking_uri}")
    print(f"MLflow runs: {report.runs_url}")
    return 0
