"""Pure per-tile functions: quality filters and LR degradation. No Ray, no I/O.

Thresholds follow the original work (SEED.md): keep a tile if its grayscale std exceeds 30 and no
more than 40% of its pixels are near white (gray > 200) or near black (gray < 55).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from srtn.vocab import DownsampleMethod, QualityThresholds

__all__ = ["downsample", "gray", "rejection_reason"]


def gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma as uint8 (OpenCV's RGB2GRAY, as the original's PIL convert('L'))."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


_DEFAULT_THRESHOLDS = QualityThresholds()


def rejection_reason(rgb: np.ndarray, thresholds: QualityThresholds = _DEFAULT_THRESHOLDS) -> str | None:
    """None if the tile passes every filter, else the first failing filter's reason.

    Order: too_white, too_black, low_std (background and folds are the common failures).
    """
    g = gray(rgb)
    n = g.size
    if np.count_nonzero(g > thresholds.white_level) / n > thresholds.max_white_fraction:
        return "too_white"
    if np.count_nonzero(g < thresholds.black_level) / n > thresholds.max_black_fraction:
        return "too_black"
    if float(g.std()) <= thresholds.min_std:
        return "low_std"
    return None


def downsample(rgb: np.ndarray, scale: int, method: DownsampleMethod = "lanczos") -> np.ndarray:
    """Anti-aliased downsampling of an RGB uint8 tile by an integer factor.

    - `lanczos`: Pillow's Lanczos, which widens its kernel by the factor (anti-aliased): the
      original scripts' `Image.ANTIALIAS`, the default.
    - `bicubic`: Pillow's anti-aliased bicubic (close to MATLAB `imresize`, the SR literature's usual
      degradation).
    - `area`: OpenCV `INTER_AREA`, a box average: exact block means for integer factors.
    """
    h, w = rgb.shape[:2]
    if scale < 1 or h % scale or w % scale:
        raise ValueError(f"tile {w}x{h} is not divisible by scale {scale}")
    size = (w // scale, h // scale)
    if method == "area":
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    if method in ("lanczos", "bicubic"):
        resample = Image.Resampling.LANCZOS if method == "lanczos" else Image.Resampling.BICUBIC
        return np.asarray(Image.fromarray(rgb).resize(size, resample=resample))
    raise ValueError(f"unknown downsampling method {method!r}; choose lanczos, bicubic or area")
