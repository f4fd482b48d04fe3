"""The scoring maths of `srtn evaluate`, free of Ray so it runs and tests anywhere torch does.

Metric conventions (`srtn.metrics`): SR outputs are clamped to [0, 1] and **quantized to uint8**
(`round(255 x) / 255`) before any metric, as images are stored and viewed; HR tiles are uint8 already.
PSNR, SSIM (11x11 Gaussian, sigma 1.5) and MSE on RGB, and PSNR/SSIM on BT.601 luma (`_y`), after
cropping `crop_border` pixels per side (default: the scale; 0 reproduces the original work's uncropped
uint8 numbers). MSE is on [0, 1]; `mse_uint8 = 255^2 * mse` is the same on the 0-255 scale, and
bicubic's row is the original's "plain interpolation vs HR" baseline. Per-model values are means of
per-image values over the same tiles for every model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from srtn import metrics

if TYPE_CHECKING:
    from torch import nn

__all__ = ["METRICS", "ResolvedModel", "aggregate", "in_model_order", "score_batch"]

METRICS: tuple[str, ...] = ("psnr", "ssim", "psnr_y", "ssim_y", "mse")


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
    return table.reset_index(), in_model_order(per_slide.reset_index(), models, "source_id")


def in_model_order(df: pd.DataFrame, models: Sequence[ResolvedModel], *by: str) -> pd.DataFrame:
    """Rows sorted by the models' config order, then by `by` columns."""
    rank = df["model"].map({m.name: i for i, m in enumerate(models)})
    return df.assign(_rank=rank).sort_values(["_rank", *by]).drop(columns="_rank").reset_index(drop=True)
