"""Names and small value types that every floor shares: scales, splits, origins, the bicubic baseline's name,
downsampling and matching modes, filter thresholds.

Pure Python with no third-party import, so `srtn.config` and `srtn.models` (which must not import pipeline
modules) and the Ray-free GPU checks can all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BICUBIC",
    "ORIGINS",
    "SPLITS",
    "SUPPORTED_SCALES",
    "CropPosition",
    "DownsampleMethod",
    "MatchMethod",
    "QualityThresholds",
    "check_scale",
]

SUPPORTED_SCALES: tuple[int, ...] = (2, 3, 4, 8)
SPLITS: tuple[str, ...] = ("train", "val", "test")
ORIGINS: tuple[str, ...] = ("downsampled", "matched", "pyramid")  # how a row's LR was made
BICUBIC = "bicubic"  # the parameter-free baseline: a model name, and a model URI in evaluate/predict configs

DownsampleMethod = Literal["lanczos", "bicubic", "area"]
CropPosition = Literal["top_left", "center", "bottom_right"]
MatchMethod = Literal["TM_CCOEFF_NORMED", "TM_CCORR_NORMED"]  # normalised scores where higher is better


def check_scale(scale: int, *, what: str = "scale") -> int:
    """`scale` if it is one of `SUPPORTED_SCALES`, else a `ValueError` naming `what` and the choices."""
    if scale not in SUPPORTED_SCALES:
        raise ValueError(f"{what} {scale} not supported; choose one of {list(SUPPORTED_SCALES)}")
    return scale


@dataclass(frozen=True)
class QualityThresholds:
    """The tile filters: the gray-level ones of SEED.md, then focus and pen ink (None = off, the seed's
    behaviour). `max_*_fraction` are shares of pixels in [0, 1]; `max_blur` bounds the blur effect (0 sharp,
    1 flat) of the tile's blurriest tissue quarter (`srtn.data.quality.blur_effect`)."""

    min_std: float = 30.0
    white_level: int = 200
    black_level: int = 55
    max_white_fraction: float = 0.4
    max_black_fraction: float = 0.4
    max_ink_fraction: float | None = None
    max_blur: float | None = None
