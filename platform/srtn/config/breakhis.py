"""Config of `srtn breakhis`: real HR/LR pairs from BreakHis by template matching (configs/data/breakhis.yaml).

Cross-key rules (crop and region sizes divisible by the scale, crops inside the 400X image) are
checked here, so a bad value fails at load time naming its key, before Ray starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from srtn.config.base import DataJobConfig, StrictModel
from srtn.vocab import CropPosition, DownsampleMethod, MatchMethod, QualityThresholds

__all__ = [
    "MatchingConfig",
    "CropsConfig",
    "AugmentationConfig",
    "SelectionConfig",
    "SplitConfig",
    "ExecutionConfig",
    "BreakHisConfig",
]


class MatchingConfig(StrictModel):
    """Where each 400X image sits inside its patient's 100X images."""

    threshold: float = Field(0.95, gt=0.0, le=1.0)
    lr_size: tuple[int, int] = (175, 115)  # (width, height): a 700x460 400X field of view at 100X
    scale: Literal[2, 4, 8] = 4
    method: MatchMethod = "TM_CCOEFF_NORMED"
    search_scope: Literal["patient", "all"] = "patient"

    @field_validator("lr_size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) <= 0:
            raise ValueError("lr_size must be two positive integers (width, height)")
        return v


class CropsConfig(StrictModel):
    """Square HR crops per pair and where they sit in the 400X image."""

    hr_size: int = Field(260, gt=0)
    positions: list[CropPosition] = Field(default_factory=lambda: ["top_left", "center", "bottom_right"], min_length=1)

    @field_validator("positions")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"positions repeat: {v}")
        return v


class AugmentationConfig(StrictModel):
    """Copy-paste: one extra row per train crop with `regions` squares moved, HR and LR alike."""

    enabled: bool = True
    regions: int = Field(3, ge=1)
    size: int = Field(64, gt=0)  # HR pixels; the LR square is size / scale
    seed: int | None = None  # None: the top-level seed


class SelectionConfig(StrictModel):
    """Drop crops with too much background or too much dark (gray levels of the HR crop)."""

    white_level: int = Field(200, ge=0, le=255)
    black_level: int = Field(55, ge=0, le=255)
    max_white_fraction: float = Field(0.3, ge=0.0, le=1.0)
    max_black_fraction: float = Field(0.3, ge=0.0, le=1.0)
    min_std: float = Field(0.0, ge=0.0)  # 0: off (the original BreakHis selection had no std filter)

    def thresholds(self) -> QualityThresholds:
        return QualityThresholds(**self.model_dump())


class SplitConfig(StrictModel):
    """Train/val/test by patient (as `srtn tile` splits by patient): no patient in two splits."""

    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    salt: str = ""  # change to draw a different (still deterministic) split

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or sum(v) <= 0:
            raise ValueError(f"ratios must be three non-negative numbers with a positive sum, got {list(v)}")
        return v


class ExecutionConfig(StrictModel):
    """Ray resources of the per-patient tasks."""

    num_cpus_per_task: float = Field(1.0, gt=0)
    concurrency: int | None = Field(None, ge=1)  # None: as many tasks as the CPUs allow


class BreakHisConfig(DataJobConfig):
    """Everything `srtn breakhis` needs; `input` is the BreaKHis_v1 folder (or any folder above the PNGs)."""

    matching: MatchingConfig = Field(default_factory=MatchingConfig)
    crops: CropsConfig = Field(default_factory=CropsConfig)
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    lr_mode: Literal["matched", "downsampled"] = "matched"
    downsample_method: DownsampleMethod = "lanczos"
    overwrite: bool = False
    strict: bool = False
    seed: int = 0

    @field_validator("crops")
    @classmethod
    def _crops_fit(cls, v: CropsConfig, info: ValidationInfo) -> CropsConfig:
        matching: MatchingConfig | None = info.data.get("matching")
        if matching is None:
            return v
        w, h = matching.lr_size
        if v.hr_size % matching.scale:
            raise ValueError(f"crops.hr_size {v.hr_size} must be a multiple of matching.scale {matching.scale}")
        if v.hr_size > min(w, h) * matching.scale:
            raise ValueError(
                f"crops.hr_size {v.hr_size} exceeds the 400X image ({w * matching.scale}x{h * matching.scale})"
            )
        return v

    @field_validator("augmentation")
    @classmethod
    def _regions_fit(cls, v: AugmentationConfig, info: ValidationInfo) -> AugmentationConfig:
        matching, crops = info.data.get("matching"), info.data.get("crops")
        if matching is not None and v.size % matching.scale:
            raise ValueError(f"augmentation.size {v.size} must be a multiple of matching.scale {matching.scale}")
        if crops is not None and v.size > crops.hr_size:
            raise ValueError(f"augmentation.size {v.size} exceeds crops.hr_size {crops.hr_size}")
        return v

    @property
    def augmentation_seed(self) -> int:
        return self.seed if self.augmentation.seed is None else self.augmentation.seed
