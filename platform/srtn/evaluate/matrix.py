"""The models x datasets matrix of a comparison run, as the original work reports its result: every model on
every dataset, PSNR and SSIM on RGB and on Y.

One long table (`comparison_matrix`: a row per (model, dataset) cell, in config order) is the source of the
markdown (`matrix_markdown`: a row per model, a column group per dataset), of the JSON table the run logs
(`matrix_records`: not applicable cells as nulls) and of the heatmap (`matrix_figure`: each cell coloured
by its gain over bicubic on the same dataset, its value written in it). A model whose scale differs from a
dataset's is *not applicable* there: its cell says so instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from srtn.evaluate.score import ResolvedModel
from srtn.vocab import BICUBIC

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MATRIX_METRICS", "comparison_matrix", "matrix_figure", "matrix_markdown", "matrix_records"]

MATRIX_METRICS: tuple[str, ...] = ("psnr", "ssim", "psnr_y", "ssim_y")
_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "psnr_y": "PSNR-Y", "ssim_y": "SSIM-Y"}
NOT_APPLICABLE = "n/a"
_COLOUR_LIMIT = {"psnr": 1.0, "ssim": 0.05}  # dB, SSIM units: the colour scale of the heatmaps


def comparison_matrix(
    tables: Mapping[str, pd.DataFrame], models: Sequence[ResolvedModel], scales: Mapping[str, int]
) -> pd.DataFrame:
    """A row per (model, dataset) in config order: `model`, `dataset`, `scale` (the dataset's), `model_scale`,
    `applicable`, `MATRIX_METRICS` (NaN where not applicable), `n_images`, and `gain_psnr` / `gain_ssim` over
    bicubic on the same dataset (NaN without a bicubic row). `tables` are the per-dataset tables of
    `srtn.evaluate.score.aggregate` by dataset name; `scales` names every dataset, in config order."""
    rows = []
    empty = pd.DataFrame(columns=["model", *MATRIX_METRICS, "n_images"])
    for m in models:
        for dataset in scales:  # every dataset, also one no model applied to
            scored = tables.get(dataset, empty).set_index("model")
            row: dict[str, object] = {
                "model": m.name,
                "dataset": dataset,
                "scale": scales[dataset],
                "model_scale": m.scale if m.scale is not None else scales[dataset],
                "applicable": m.name in scored.index,
            }
            for key in MATRIX_METRICS:
                row[key] = float(scored.at[m.name, key]) if row["applicable"] else np.nan
            row["n_images"] = int(scored.at[m.name, "n_images"]) if row["applicable"] else 0
            for key in ("psnr", "ssim"):
                base = float(scored.at[BICUBIC, key]) if BICUBIC in scored.index else np.nan
                row[f"gain_{key}"] = row[key] - base if row["applicable"] else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def matrix_records(matrix: pd.DataFrame) -> pd.DataFrame:
    """`matrix` with NaN as None (JSON null), for MLflow's `log_table`: JSON has no NaN."""
    return matrix.astype(object).where(matrix.notna(), None)


def _cell(row: pd.Series, key: str) -> str:
    if not row["applicable"]:
        return NOT_APPLICABLE
    return f"{row[key]:.3f}" if key.startswith("psnr") else f"{row[key]:.4f}"


def matrix_markdown(matrix: pd.DataFrame, *, compact: bool = False) -> str:
    """GitHub markdown: a row per model, per dataset the four metrics (`compact`: one cell per dataset,
    `PSNR / SSIM (Y PSNR / SSIM)`); `n/a (x8 model)` where the scales differ."""
    datasets = list(dict.fromkeys(matrix["dataset"]))
    scales = matrix.groupby("dataset", sort=False)["scale"].first()
    keys = MATRIX_METRICS if not compact else ("",)
    head = ["model"] + [f"{d} x{scales[d]}" + (f" {_LABELS[k]}" if k else "") for d in datasets for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for model, rows in matrix.groupby("model", sort=False):
        by_dataset = rows.set_index("dataset")
        cells = []
        for d in datasets:
            row = by_dataset.loc[d]
            if not row["applicable"]:
                cells += [f"{NOT_APPLICABLE} (x{row['model_scale']} model)"] + [NOT_APPLICABLE] * (len(keys) - 1)
            elif compact:
                cells.append(f"{row['psnr']:.2f} / {row['ssim']:.3f} (Y {row['psnr_y']:.2f} / {row['ssim_y']:.3f})")
            else:
                cells += [_cell(row, k) for k in MATRIX_METRICS]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def matrix_figure(matrix: pd.DataFrame, title: str) -> Figure:
    """Heatmaps of the matrix, one panel per metric (RGB and Y): rows models, columns datasets, each cell
    coloured by its gain over bicubic on that dataset (red: worse, blue: better), its value written in it;
    not applicable cells grey."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(matrix["model"]))
    datasets = list(dict.fromkeys(matrix["dataset"]))
    width = max(7.0, 2.2 * len(datasets) * 2 + 2.0)
    fig = Figure(figsize=(width, 1.2 + 0.55 * len(models) * 2 + 1.2), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, whatever pyplot's backend is
    for ax, key in zip(fig.subplots(2, 2).ravel(), MATRIX_METRICS):
        values = matrix.pivot(index="model", columns="dataset", values=key).loc[models, datasets]
        base = matrix[matrix["model"] == BICUBIC].set_index("dataset")[key].reindex(datasets)
        gain = values - (base.to_numpy() if base.notna().any() else np.nanmean(values.to_numpy(), axis=0))
        limit = _COLOUR_LIMIT[key[:4]]  # gains beyond it saturate: a broken model must not wash out the rest
        image = ax.imshow(np.ma.masked_invalid(gain.to_numpy(dtype=float)), cmap=_diverging_cmap(), vmin=-limit,
                          vmax=limit, aspect="auto")  # fmt: skip
        fig.colorbar(image, ax=ax, shrink=0.8).set_label("vs bicubic", fontsize=7)
        for i, model in enumerate(models):
            for j, dataset in enumerate(datasets):
                v, g = values.at[model, dataset], gain.at[model, dataset]
                text = NOT_APPLICABLE if pd.isna(v) else (f"{v:.2f}" if key.startswith("psnr") else f"{v:.3f}")
                dark = not pd.isna(g) and abs(g) > 0.6 * limit
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_xticks(range(len(datasets)), datasets, rotation=15, fontsize=8)
        ax.set_yticks(range(len(models)), models, fontsize=8)
        ax.set_title(f"{_LABELS[key]} (colour: vs bicubic)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def _diverging_cmap():
    """Red-white-blue with grey for masked (not applicable) cells."""
    from matplotlib import colormaps

    return colormaps["RdBu"].with_extremes(bad="#d9d9d9")
