"""PSNR and SSIM for super-resolution, batched in torch (conventions of BasicSR ``metrics/psnr_ssim.py``).

Conventions, for every function here:

- Layout NCHW, values in ``[0, data_range]`` (``data_range=1.0``: float images in [0, 1]); ``pred`` and
  ``target`` must have the same shape. Inputs may live on any device and have any dtype; the computation is
  done in float64 on that device, and one value per image is returned (shape ``(N,)``, float64).
- ``crop_border=c`` drops ``c`` pixels on each of the four sides before anything else (SR papers crop the
  scale factor: border pixels depend on padding, not on the model).
- ``y_channel=True`` compares only the BT.601 luma of RGB inputs, ``Y = 16/255 + (65.481 R + 128.553 G +
  24.966 B) / 255`` (MATLAB ``rgb2ycbcr``, BasicSR), in [16/255, 235/255] for ``data_range=1``.
- PSNR is ``10 log10(data_range^2 / MSE)`` with the MSE over C, H and W; identical images give ``inf``.
- SSIM (Wang et al. 2004) uses an 11x11 Gaussian window (sigma 1.5), K1=0.01, K2=0.03, population
  (co)variances and a 'valid' convolution (no padding; the map is 10 pixels smaller in H and W), and is
  averaged over the map and then over channels. This equals ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``, which
  filters with padding and then crops the same 5 pixels per side. `gaussian_taps`, `gaussian_filter_valid`
  and `ssim_map` are the one implementation; `srtn.evaluate.score` runs them per image plane (OpenCV's
  separable filter with these taps) on a CPU.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch

__all__ = ["gaussian_filter_valid", "gaussian_taps", "psnr", "psnr_from_mse", "rgb_to_y", "ssim", "ssim_map"]

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of an RGB batch ``(N, 3, H, W)`` in [0, 1]: ``(N, 1, H, W)`` in [16/255, 235/255]."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects an RGB batch (N, 3, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"rgb_to_y expects a float tensor in [0, 1], got {x.dtype}")
    w = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True) / 255.0 + 16.0 / 255.0


def _prepare(
    pred: torch.Tensor, target: torch.Tensor, *, crop_border: int, y_channel: bool, data_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate, cast to float64, crop, convert to Y: the steps PSNR and SSIM share."""
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError("pred and target must be torch tensors")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim != 4:
        raise ValueError(f"expected an NCHW batch, got shape {tuple(pred.shape)}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    h, w = pred.shape[-2:]
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    pred, target = pred.to(torch.float64), target.to(torch.float64)
    if crop_border:
        pred = pred[..., crop_border:-crop_border, crop_border:-crop_border]
        target = target[..., crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        if pred.shape[1] != 3:
            raise ValueError(f"y_channel=True needs RGB inputs (3 channels), got {pred.shape[1]}")
        # The luma formula is defined for [0, 1]; rescale so other data ranges keep their unit.
        pred = rgb_to_y(pred / data_range) * data_range
        target = rgb_to_y(target / data_range) * data_range
    return pred, target


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    crop_border: int = 0,
    y_channel: bool = False,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, shape ``(N,)``; ``inf`` where the images are identical."""
    pred, target = _prepare(pred, target, crop_border=crop_border, y_channel=y_channel, data_range=data_range)
    mse = (pred - target).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)  # mse == 0 -> +inf


def _gaussian_window(device: torch.device) -> torch.Tensor:
    """Normalised 1D Gaussian, 11 taps, sigma 1.5 (scipy's truncated kernel at radius 5 is the same)."""
    r = _SSIM_WINDOW // 2
    x = torch.arange(-r, r + 1, dtype=torch.float64, device=device)
    g = torch.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


@lru_cache(maxsize=1)
def gaussian_taps() -> tuple[float, ...]:
    """SSIM's 11-tap Gaussian window (sigma 1.5) as Python floats: the one definition of the window."""
    return tuple(_gaussian_window(torch.device("cpu")).tolist())


def gaussian_filter_valid(x: torch.Tensor) -> torch.Tensor:
    """SSIM's separable 11x11 Gaussian over the last two axes of a float64 batch, 'valid' mode (no padding),
    as 11 shifted multiply-adds per axis: float64 grouped `conv2d` has no vectorised CPU kernel (4x slower)."""
    taps = gaussian_taps()
    for axis in (-1, -2):
        n_out = x.shape[axis] - len(taps) + 1
        out = x.narrow(axis, 0, n_out) * taps[0]
        for i, tap in enumerate(taps[1:], start=1):
            out.add_(x.narrow(axis, i, n_out), alpha=tap)
        x = out
    return x


def ssim_map(mu_x: Any, mu_y: Any, xx: Any, yy: Any, xy: Any, *, data_range: float = 1.0) -> Any:
    """SSIM's map from Gaussian-filtered moments (means, second moments, cross moment): torch tensors or numpy
    arrays alike, so the evaluation's per-plane OpenCV path (`srtn.evaluate.score`) shares this formula."""
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    crop_border: int = 0,
    y_channel: bool = False,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Mean structural similarity per image, shape ``(N,)``, averaged over channels (see module docstring)."""
    pred, target = _prepare(pred, target, crop_border=crop_border, y_channel=y_channel, data_range=data_range)
    h, w = pred.shape[-2:]
    if min(h, w) < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} after cropping, got {h}x{w}")
    f = gaussian_filter_valid
    moments = (f(pred), f(target), f(pred * pred), f(target * target), f(pred * target))
    return ssim_map(*moments, data_range=data_range).mean(dim=(2, 3)).mean(dim=1)


def psnr_from_mse(mse: float, *, data_range: float = 1.0) -> float:
    """PSNR in dB of a mean squared error (for losses logged as MSE); ``inf`` for 0."""
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)
