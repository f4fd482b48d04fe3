"""What `srtn evaluate` leaves in MLflow: the comparison table as markdown, a bar chart, the training-loss
curves of the compared runs, and one comparison run holding them with `<split>_<metric>.<model>` metrics
and tags linking the evaluated runs (which get their `test_*` metrics back).

Everything goes through `srtn.track`'s client; figures are drawn on Agg, whatever pyplot's backend is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from srtn import track
from srtn.config.evaluate import EvaluateConfig
from srtn.evaluate.score import METRICS, ResolvedModel

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

__all__ = ["LOSS_KEYS", "bar_figure", "log_comparison", "loss_figure", "loss_histories", "markdown_table"]

logger = logging.getLogger(__name__)

LOSS_KEYS: tuple[str, ...] = ("train_loss", "val_loss")


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


def bar_figure(table: pd.DataFrame, title: str) -> Figure:
    """PSNR and SSIM per model, RGB and Y side by side (`comparison.png`)."""
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


def loss_histories(client: MlflowClient, models: Sequence[ResolvedModel]) -> dict[str, dict[str, list]]:
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


def loss_figure(histories: Mapping[str, Mapping[str, list]], title: str) -> Figure:
    """`LOSS_KEYS` per epoch of each compared model's training run, log scale (`loss_curves.png`)."""
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


def _comparison_tags(cfg: EvaluateConfig, models: Sequence[ResolvedModel], markdown: str) -> dict[str, Any]:
    """Tags of the comparison run: what was evaluated, how, and the table as the run's note."""
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
        "srtn.git_commit": track.git_commit(),
        "srtn.evaluated_runs": ",".join(dict.fromkeys(m.run_id for m in models if m.run_id)),
        "mlflow.note.content": note,
    }
    for m in models:
        tags[f"srtn.model.{m.name}.uri"] = m.resolved_uri
        if m.run_id:
            tags[f"srtn.model.{m.name}.run_id"] = m.run_id
    return tags


def log_comparison(
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

    client = track.client(uri)
    split, crop = cfg.data.split, cfg.effective_crop_border
    run_id = track.create_run(uri, experiment_id, run_name=cfg.run_name, tags=_comparison_tags(cfg, models, markdown))
    try:
        track.log_params_flat(uri, run_id, cfg)
        now = int(time.time() * 1000)
        values = [
            Metric(track.sanitize_key(f"{split}_{key}.{r.model}"), float(getattr(r, key)), now, 0)
            for r in table.itertuples(index=False)
            for key in (*METRICS, "mse_uint8")
        ]
        client.log_batch(run_id, metrics=values)
        client.log_table(run_id, data=table, artifact_file="comparison.json")
        client.log_table(run_id, data=per_slide, artifact_file="per_slide.json")
        client.log_table(run_id, data=per_image, artifact_file="per_image.json")
        client.log_text(run_id, markdown + "\n", "comparison.md")
        title = f"{cfg.data.name} x{cfg.data.scale}, {split} split, crop {crop}"
        client.log_figure(run_id, bar_figure(table, title), "comparison.png")
        histories = loss_histories(client, models)
        if histories:
            loss_title = f"training runs of the compared models ({cfg.data.name} x{cfg.data.scale})"
            client.log_figure(run_id, loss_figure(histories, loss_title), "loss_curves.png")
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
