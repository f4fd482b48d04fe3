"""Pure functions that turn a 400X image and its patient's 100X images into aligned HR/LR crops.

No Ray, no I/O: tests and the serial benchmark call them directly. Coordinates are in pixels of the
image named: HR coordinates in the 400X image, LR coordinates in the matched 175x115 region of the
100X image (so LR = HR / scale exactly, which is why every HR coordinate is a multiple of the scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from srtn.data.quality import gray
from srtn.vocab import CropPosition, MatchMethod

__all__ = ["Match", "to_gray", "best_match", "crop_origin", "crop_pair", "copy_paste"]


@dataclass(frozen=True)
class Match:
    """Where a 400X image sits inside a 100X image: top-left (x, y) of the LR region, in 100X pixels."""

    lr_id: str
    x: int
    y: int
    score: float


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (uint8, the quality filter's `gray`); 2-D input is returned as is, so callers may pass
    precomputed grays."""
    return rgb if rgb.ndim == 2 else gray(rgb)


def _template_of(hr400: np.ndarray, lr_size: tuple[int, int]) -> np.ndarray:
    """The 400X image at 100X scale (INTER_AREA: the box average a 4x coarser sensor pixel sees), in gray."""
    return to_gray(cv2.resize(hr400, tuple(lr_size), interpolation=cv2.INTER_AREA))


def best_match(
    hr400: np.ndarray,
    candidates: Sequence[tuple[str, np.ndarray]],
    *,
    lr_size: tuple[int, int] = (175, 115),
    method: MatchMethod = "TM_CCOEFF_NORMED",
) -> Match | None:
    """The best-scoring location of `hr400` (resized to `lr_size` = (width, height)) over all candidates.

    Candidates are `(id, image)` with RGB or gray 100X images. Ties keep the first candidate. None when
    there is nothing to search (no candidates, or a flat template whose normalised score is undefined).
    """
    templ = _template_of(hr400, lr_size)
    if float(templ.std()) < 1e-3:
        return None
    code = getattr(cv2, method)
    best: Match | None = None
    for lr_id, image in candidates:
        g = to_gray(image)
        if g.shape[0] < templ.shape[0] or g.shape[1] < templ.shape[1]:
            continue
        scores = np.nan_to_num(cv2.matchTemplate(g, templ, code), nan=-1.0, posinf=-1.0, neginf=-1.0)
        _, top, _, (x, y) = cv2.minMaxLoc(scores)
        if best is None or top > best.score:
            best = Match(lr_id, int(x), int(y), float(top))
    return best


def crop_origin(position: CropPosition, width: int, height: int, size: int, scale: int) -> tuple[int, int]:
    """Top-left (x, y) of a `size` square HR crop, rounded down to a multiple of `scale` (exact LR alignment)."""
    if size > width or size > height:
        raise ValueError(f"crop {size} does not fit in a {width}x{height} image")
    if position == "top_left":
        x, y = 0, 0
    elif position == "center":
        x, y = (width - size) // 2, (height - size) // 2
    elif position == "bottom_right":
        x, y = width - size, height - size
    else:
        raise ValueError(f"unknown crop position {position!r}; choose top_left, center or bottom_right")
    return x - x % scale, y - y % scale


def crop_pair(hr: np.ndarray, lr: np.ndarray, x: int, y: int, size: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The HR crop at (x, y) and its LR counterpart at (x/scale, y/scale), `size/scale` wide."""
    if x % scale or y % scale or size % scale:
        raise ValueError(f"crop ({x}, {y}) size {size} is not aligned to scale {scale}")
    if hr.shape[0] != lr.shape[0] * scale or hr.shape[1] != lr.shape[1] * scale:
        raise ValueError(f"HR {hr.shape[:2]} is not {scale}x LR {lr.shape[:2]}")
    s = size // scale
    lx, ly = x // scale, y // scale
    return hr[y : y + size, x : x + size].copy(), lr[ly : ly + s, lx : lx + s].copy()


def copy_paste(
    hr: np.ndarray, lr: np.ndarray, *, regions: int, size: int, scale: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Copy `regions` random squares onto random places, the same moves in HR and LR (new arrays).

    HR squares are `size` wide at multiples of `scale`; the LR square is `size/scale` wide at the HR
    position / scale, so the augmented pair stays exactly aligned. Pastes apply in order (a later
    source may include an earlier paste), identically in both images.
    """
    if size % scale or size > min(hr.shape[:2]):
        raise ValueError(f"region size {size} must be a multiple of {scale} and fit in the crop")
    if hr.shape[0] != lr.shape[0] * scale or hr.shape[1] != lr.shape[1] * scale:
        raise ValueError(f"HR {hr.shape[:2]} is not {scale}x LR {lr.shape[:2]}")
    hr, lr = hr.copy(), lr.copy()
    s = size // scale
    max_x, max_y = (hr.shape[1] - size) // scale, (hr.shape[0] - size) // scale
    for _ in range(regions):
        sx, tx = (int(v) for v in rng.integers(0, max_x + 1, 2))
        sy, ty = (int(v) for v in rng.integers(0, max_y + 1, 2))
        hr[ty * scale : ty * scale + size, tx * scale : tx * scale + size] = hr[
            sy * scale : sy * scale + size, sx * scale : sx * scale + size
        ].copy()
        lr[ty : ty + s, tx : tx + s] = lr[sy : sy + s, sx : sx + s].copy()
    return hr, lr
