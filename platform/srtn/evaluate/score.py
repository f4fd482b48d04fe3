"""The scoring maths of `srtn evaluate`, free of Ray so it runs and tests anywhere torch does.

Metric conventions (`srtn.metrics`): SR outputs are clamped to [0, 1] and **quantized to uint8**
(`round(255 x) / 255`) before any metric, as images are stored and viewed; HR tiles are uint8 already.
PSNR, SSIM (11x11 Gaussian, sigma 1.5) and MSE on RGB, and PSNR/SSIM on BT.601 luma (`_y`), after
cropping `crop_border` pixels per side (default: the scale; 0 reproduces the original work's uncropped
uint8 numbers). MSE is on [0, 1]; `mse_uint8 = 255^2 * mse` is the same on the 0-255 scale, and
bicubic's row is the original's "plain interpolation vs HR" baseline. Per-model values are means of
per-image values over the same tiles for every model.

Speed: `HrReference` does the HR half of every metric once per batch (crop, luma, the Gaussian-filtered
mean and second moment) and each model then adds only its own half (the metrics were 70% of an evaluation's
time before: 52 tiles, 4 small models, about 40 s of metrics against 10 s of model forward). The window,
filter and SSIM map are `srtn.metrics`' (`gaussian_taps`, `gaussian_filter_valid`, `ssim_map`); on a CPU the
filter runs per image plane with OpenCV's separable filter, which keeps a plane in cache (tests pin it to
`srtn.metrics.ssim` within 1e-12).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
import torch

from srtn import metrics

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "METRICS",
    "HrReference",
    "ResolvedModel",
    "aggregate",
    "in_model_order",
    "score_batch",
    "super_resolve",
]

METRICS: tuple[str, ...] = ("psnr", "ssim", "psnr_y", "ssim_y", "mse")


@dataclass(frozen=True)
class ResolvedModel:
    """A config entry bound to one concrete model: `resolved_uri` pins a version (`latest` and aliases
    are resolved once, so every actor loads the same weights); `run_id` is its training run, if any;
    `scale` is what it upsamples by (None for bicubic, which is built for each dataset's scale)."""

    name: str
    uri: str
    resolved_uri: str
    run_id: str | None
    n_params: int
    model: nn.Module | None = field(repr=False, compare=False)
    scale: int | None = None

    def applies_to(self, scale: int) -> bool:
        """Whether this model can be scored on a dataset of `scale` (else: not applicable)."""
        return self.scale is None or self.scale == scale


@lru_cache(maxsize=1)
def _taps_array() -> np.ndarray:
    return np.asarray(metrics.gaussian_taps(), dtype=np.float64)


def _filter_plane(plane: np.ndarray) -> np.ndarray:
    """The same filter on one float64 image plane with OpenCV's separable filter ('same' size, zero border)
    cropped to the 'valid' part: 2x faster than the shifted adds here, equal to them to 1e-15."""
    taps = _taps_array()
    r = len(taps) // 2
    return cv2.sepFilter2D(plane, cv2.CV_64F, taps, taps, borderType=cv2.BORDER_CONSTANT)[r:-r, r:-r]


@contextlib.contextmanager
def _one_thread(enabled: bool) -> Iterator[None]:
    """Torch on one CPU thread for the block: the per-plane metric ops are too small to share (on a busy
    2-core machine two threads made them 6x slower, against 1.7x faster model forwards)."""
    threads = torch.get_num_threads()
    if not enabled or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class HrReference:
    """The HR side of PSNR, SSIM and MSE (RGB and Y) for one batch, computed once and shared by every model
    scored on it. `hr`: float NCHW in [0, 1] from uint8.

    On a CPU, SSIM is worked out one image plane at a time on one thread (`_filter_plane`, numpy): a 256-px
    float64 plane stays in the CPU cache through the filter and the SSIM map's arithmetic (2-3x faster than
    whole batches, which stream every pass through memory); on a GPU, whole batches in torch."""

    def __init__(self, hr: torch.Tensor, *, crop_border: int) -> None:
        h, w = hr.shape[-2:]
        c = crop_border
        if 2 * c >= min(h, w) or min(h, w) - 2 * c < 11:
            raise ValueError(f"crop_border={c} leaves less than SSIM's 11x11 window of a {h}x{w} tile")
        self.shape = tuple(hr.shape)
        self.crop = c
        hr = (torch.round(hr.float() * 255.0) / 255.0).to(torch.float64)  # uint8 levels, as quantized SR outputs are
        self.rgb = self._cropped(hr).contiguous()
        self.y = metrics.rgb_to_y(self.rgb)
        self.per_plane = not hr.is_cuda
        with _one_thread(self.per_plane):
            self.rgb_moments = self._moments(self.rgb)
            self.y_moments = self._moments(self.y)

    def _cropped(self, x: torch.Tensor) -> torch.Tensor:
        c = self.crop
        return x[..., c : x.shape[-2] - c, c : x.shape[-1] - c]

    def _planes(self, x: torch.Tensor) -> list[np.ndarray] | torch.Tensor:
        """Every image plane as a contiguous float64 array (CPU); the batch itself on a GPU."""
        return list(x.cpu().numpy().reshape(-1, *x.shape[-2:])) if self.per_plane else x

    def _moments(self, hr: torch.Tensor) -> list[tuple[Any, Any]]:
        """Filtered mean and second moment of every HR plane (of the whole batch on a GPU)."""
        planes = self._planes(hr)
        if not self.per_plane:
            f = metrics.gaussian_filter_valid
            return [(f(planes), f(planes * planes))]
        return [(_filter_plane(p), _filter_plane(p * p)) for p in planes]

    def _ssim(self, sr: torch.Tensor, hr: torch.Tensor, moments: list[tuple[Any, Any]]) -> torch.Tensor:
        """Per-image SSIM: the map's mean per plane, then over channels (as srtn.metrics.ssim)."""
        n, channels = sr.shape[:2]
        if not self.per_plane:
            (mu_y, yy), f = moments[0], metrics.gaussian_filter_valid
            return metrics.ssim_map(f(sr), mu_y, f(sr * sr), yy, f(sr * hr)).mean(dim=(2, 3)).mean(1)
        means = [
            float(metrics.ssim_map(_filter_plane(x), mu_y, _filter_plane(x * x), yy, _filter_plane(x * y)).mean())
            for x, y, (mu_y, yy) in zip(self._planes(sr), self._planes(hr), moments)
        ]
        return torch.tensor(means, dtype=torch.float64).view(n, channels).mean(dim=1)

    def score(self, sr: torch.Tensor) -> dict[str, torch.Tensor]:
        """`METRICS` per image (float64, shape (N,)) of an SR batch already quantized to uint8 levels."""
        if tuple(sr.shape) != self.shape:
            raise ValueError(f"model output {tuple(sr.shape)} does not match HR {self.shape}")
        with _one_thread(self.per_plane):
            rgb = self._cropped(sr.to(torch.float64)).contiguous()
            y = metrics.rgb_to_y(rgb)
            mse = (rgb - self.rgb).pow(2).flatten(1).mean(dim=1)
            mse_y = (y - self.y).pow(2).flatten(1).mean(dim=1)
            return {
                "psnr": 10.0 * torch.log10(1.0 / mse),  # mse 0 -> inf, as srtn.metrics.psnr
                "ssim": self._ssim(rgb, self.rgb, self.rgb_moments),
                "psnr_y": 10.0 * torch.log10(1.0 / mse_y),
                "ssim_y": self._ssim(y, self.y, self.y_moments),
                "mse": mse,
            }


def super_resolve(model: nn.Module, lr: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """The model's SR of an LR batch (float NCHW in [0, 1]), clamped and quantized to uint8 levels, as float."""
    if channels_last:
        lr = lr.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        sr = model(lr)
    return torch.round(sr.float().clamp(0.0, 1.0) * 255.0) / 255.0


def score_batch(
    model: nn.Module,
    batch: Mapping[str, Any],
    *,
    crop_border: int,
    device: str | torch.device = "cpu",
    reference: HrReference | None = None,
    channels_last: bool = False,
) -> dict[str, np.ndarray]:
    """Per-image metrics of `model` on a decoded batch (`lr`, `hr`: float32 NCHW in [0, 1] from uint8).

    The SR output is clamped and quantized to uint8 levels before the metrics; returns `METRICS`
    columns (float64) plus the batch's `tile_id`/`source_id`/`split` when present. Pass the batch's
    `reference` when several models are scored on it.
    """
    lr = torch.as_tensor(np.asarray(batch["lr"]), device=device)
    if reference is None:
        reference = HrReference(torch.as_tensor(np.asarray(batch["hr"]), device=device), crop_border=crop_border)
    scores = reference.score(super_resolve(model, lr, channels_last=channels_last))
    result = {k: v.cpu().numpy().astype(np.float64) for k, v in scores.items()}
    for name in ("tile_id", "source_id", "split"):
        if name in batch:
            result[name] = np.asarray(batch[name])
    return result


def aggregate(per_image: pd.DataFrame, models: Sequence[ResolvedModel]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`(table, per_slide)` of one dataset: means of `METRICS` per model (rows in `models` order, with
    `mse_uint8`, `n_images`, `params`, `uri`, `run_id`) and per model and `source_id` (with `n_images`).
    Only models that have rows in `per_image` are listed (the others were not applicable)."""
    grouped = per_image.groupby("model", sort=False)
    table = grouped[list(METRICS)].mean()
    table["mse_uint8"] = table["mse"] * 255.0**2
    table["n_images"] = grouped.size()
    scored = [m for m in models if m.name in table.index]
    info = pd.DataFrame(
        [{"model": m.name, "params": m.n_params, "uri": m.resolved_uri, "run_id": m.run_id or ""} for m in scored],
        columns=["model", "params", "uri", "run_id"],
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
