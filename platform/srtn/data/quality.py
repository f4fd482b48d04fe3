"""Pure per-tile functions: quality filters and LR degradation. No Ray, no I/O.

Gray-level thresholds follow the original work (SEED.md): keep a tile if its grayscale std exceeds 30 and
no more than 40% of its pixels are near white (gray > 200) or near black (gray < 55). Two more filters,
off unless their threshold is set, keep what an SR model must not learn out of the training pairs:
- focus: `blur_effect`, the no-reference blur measure of Crete-Roffet et al. (SPIE 2007: how much of the
  tile's edge contrast survives a 9-px box blur; 0 sharp, 1 flat) of the tile's blurriest tissue quarter,
  so a tile half out of focus counts as out of focus. It is contrast-free, unlike the Laplacian's variance,
  whose sharp values differ by 3x between synthetic and real tissue and whose half-blurred tiles score
  like sharp ones (the calibration, in tests/test_quality.py's docstring);
- pen ink: `ink_fraction`, the share of pixels in marker colours H&E never makes: green and blue hues
  with marker saturation, and dark neutral (black) pixels (`INK_RANGES`).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from srtn.vocab import DownsampleMethod, QualityThresholds

__all__ = [
    "CALIBRATED_THRESHOLDS",
    "INK_RANGES",
    "blur_effect",
    "downsample",
    "gray",
    "ink_fraction",
    "ink_mask",
    "rejection_reason",
]


def gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma as uint8 (OpenCV's RGB2GRAY, as the original's PIL convert('L'))."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


_DEFAULT_THRESHOLDS = QualityThresholds()
CALIBRATED_THRESHOLDS = QualityThresholds(max_ink_fraction=0.02, max_blur=0.37)
"""The seed's gray-level filters plus focus and ink at the values calibrated on synthetic slides with known
out-of-focus and inked regions (at 0.25 and 0.5 um/px: every tile at least half in a region rejected, no
clean tile; the numbers are in tests/test_quality.py); what configs/data/tcga_kirc.yaml sets."""

REBLUR_SIZE = 9  # box-blur length of the blur effect (Crete-Roffet's choice)

INK_RANGES: tuple[tuple[str, tuple[int, int, int], tuple[int, int, int]], ...] = (
    ("green", (35, 60, 20), (90, 255, 255)),  # green to teal (green ink over pink tissue turns teal)
    ("blue", (91, 100, 20), (125, 255, 255)),  # saturated blue: hematoxylin is purple (H >= 125) or pale
    ("black", (0, 0, 0), (179, 80, 100)),  # dark and near neutral: dense nuclei and folds are saturated purple
)
"""Marker ink as OpenCV HSV boxes (H 0-179, S and V 0-255, bounds inclusive): (name, low, high)."""


def blur_effect(g: np.ndarray, *, white_level: int = 200, blocks: int = 2) -> float:
    """Blur of a gray tile in [0, 1] (0 sharp, 1 no detail at all): the largest blur effect among its
    `blocks` x `blocks` parts that are at least half tissue (gray <= `white_level`), glass being flat.

    Blur effect (Crete-Roffet, Dolmiere, Ladret, Nicolas, SPIE 6492, 2007): blur the image again with a
    `REBLUR_SIZE`-px box along each axis; the share of neighbour differences that the re-blur does not remove
    is the detail a blurred image never had. The larger of the two axes' values is the blur.
    """
    h, w = g.shape
    bh, bw = h // blocks, w // blocks
    if bh < 2 or bw < 2:
        raise ValueError(f"tile {w}x{h} too small for {blocks}x{blocks} focus blocks")
    g = np.ascontiguousarray(g[: bh * blocks, : bw * blocks])
    maps = _reblur_maps(g)
    tissue = cv2.compare(g, white_level, cv2.CMP_LE)
    blurs, in_tissue = [], []
    for i in range(blocks):
        for j in range(blocks):
            rows, cols = slice(i * bh, (i + 1) * bh), slice(j * bw, (j + 1) * bw)
            blurs.append(max(_blur_of(d_f[rows, cols], v[rows, cols]) for d_f, v in maps))
            in_tissue.append(cv2.countNonZero(tissue[rows, cols]) * 2 >= bh * bw)
    return max((b for b, t in zip(blurs, in_tissue) if t), default=max(blurs))


def _reblur_maps(g: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per axis: |neighbour differences| of `g`, and how much larger they are than those of `g` re-blurred
    (clipped at 0), both in units of 1/`REBLUR_SIZE` gray level (int16, exact)."""
    f = g.astype(np.int16)
    maps = []
    for axis, ksize in ((0, (1, REBLUR_SIZE)), (1, (REBLUR_SIZE, 1))):
        box = cv2.boxFilter(g, cv2.CV_16S, ksize, normalize=False, borderType=cv2.BORDER_REFLECT)  # 9x the mean
        if axis == 0:
            d_f, d_b = cv2.absdiff(f[1:], f[:-1]), cv2.absdiff(box[1:], box[:-1])
        else:
            d_f, d_b = cv2.absdiff(f[:, 1:], f[:, :-1]), cv2.absdiff(box[:, 1:], box[:, :-1])
        d_f = d_f * np.int16(REBLUR_SIZE)
        maps.append((d_f, cv2.max(cv2.subtract(d_f, d_b), 0)))
    return maps


def _blur_of(d_f: np.ndarray, v: np.ndarray) -> float:
    """(sum of differences - sum of what the re-blur removed) / sum of differences; 1 for a flat part."""
    s_f = cv2.sumElems(d_f)[0]
    return (s_f - cv2.sumElems(v)[0]) / s_f if s_f > 0 else 1.0


def ink_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean (h, w): pixels in any of `INK_RANGES`."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    mask = np.zeros(hsv.shape[:2], np.uint8)
    for _, low, high in INK_RANGES:
        mask |= cv2.inRange(hsv, low, high)
    return mask > 0


def ink_fraction(rgb: np.ndarray) -> float:
    """Share of a tile's pixels that look like marker ink (`INK_RANGES`)."""
    return float(np.count_nonzero(ink_mask(rgb))) / (rgb.shape[0] * rgb.shape[1])


def rejection_reason(rgb: np.ndarray, thresholds: QualityThresholds = _DEFAULT_THRESHOLDS) -> str | None:
    """None if the tile passes every filter, else the first failing filter's reason.

    Order: too_white, too_black, low_std (background and folds are the common failures), then, when their
    thresholds are set, pen_ink (`ink_fraction` > `max_ink_fraction`) and out_of_focus (`blur_effect` >
    `max_blur`). With both unset (the default) the result is the seed's, tile for tile.
    """
    g = gray(rgb)
    n = g.size
    if np.count_nonzero(g > thresholds.white_level) / n > thresholds.max_white_fraction:
        return "too_white"
    if np.count_nonzero(g < thresholds.black_level) / n > thresholds.max_black_fraction:
        return "too_black"
    if float(g.std()) <= thresholds.min_std:
        return "low_std"
    if thresholds.max_ink_fraction is not None and ink_fraction(rgb) > thresholds.max_ink_fraction:
        return "pen_ink"
    if thresholds.max_blur is not None and blur_effect(g, white_level=thresholds.white_level) > thresholds.max_blur:
        return "out_of_focus"
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
