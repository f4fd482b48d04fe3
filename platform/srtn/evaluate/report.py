"""Tables and figures of one dataset's comparison: the table as markdown, a bar chart, and the training-loss
curves of the compared runs (read back from their MLflow runs). The models x datasets matrix is
`srtn.evaluate.matrix`, the side-by-side pictures `srtn.evaluate.compare_tiles`, and what the comparison run
holds `srtn.evaluate.tracking`.

Figures are drawn on Agg, whatever pyplot's backend is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from srtn.evaluate.score import ResolvedModel

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

__all__ = ["LOSS_KEYS", "bar_figure", "loss_figure", "loss_histories", "markdown_table"]

LOSS_KEYS: tuple[str, ...] = ("train_loss", "val_loss")


def markdown_table(table: pd.DataFrame) -> str:
    """One dataset's comparison table as GitHub markdown (no extra dependency)."""
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
