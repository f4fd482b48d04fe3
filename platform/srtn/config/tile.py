"""Config of `srtn tile`: slides -> HR/LR tile pairs -> Parquet shards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from srtn.config.base import DataJobConfig, Scale, StrictModel
from srtn.vocab import DownsampleMethod, QualityThresholds

__all__ = ["TileConfig", "SLIDE_EXTENSIONS"]

SLIDE_EXTENSIONS: list[str] = [".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif"]


class TileGridConfig(StrictModel):
    size: int = Field(256, ge=8, description="tile side in HR pixels (of `level`, or of `mpp`)")
    level: int = Field(0, ge=0, description="pyramid level tiles are cut from (mpp: null only)")
    stride: int | None = Field(None, ge=1, description="step between tiles (HR pixels); default = size")
    mpp: float | None = Field(
        None,
        gt=0,
        description="target microns per HR pixel: every tile covers size x mpp microns whatever the scan's "
        "magnification (read from the level that best covers it, anti-aliased resample); null: pixels of `level`",
    )

    @model_validator(mode="after")
    def _mpp_or_level(self) -> TileGridConfig:
        if self.mpp is not None and self.level != 0:
            raise ValueError(
                f"tiles.mpp {self.mpp} picks the level per slide; leave tiles.level at 0 (got {self.level})"
            )
        return self

    @property
    def step(self) -> int:
        return self.stride or self.size


class FilterConfig(StrictModel):
    min_std: float = Field(30.0, ge=0)
    white_level: int = Field(200, ge=0, le=255)
    black_level: int = Field(55, ge=0, le=255)
    max_white_fraction: float = Field(0.4, ge=0, le=1)
    max_black_fraction: float = Field(0.4, ge=0, le=1)
    max_ink_fraction: float | None = Field(
        None, ge=0, le=1, description="reject a tile with more pen-ink pixels (green, blue, dark neutral); null: off"
    )
    max_blur: float | None = Field(
        None, ge=0, le=1, description="reject a tile whose blurriest tissue quarter has a larger blur effect; null: off"
    )

    def thresholds(self) -> QualityThresholds:
        return QualityThresholds(**self.model_dump())


class TissueConfig(StrictModel):
    min_fraction: float = Field(0.5, ge=0, le=1, description="share of a tile the tissue mask must cover")
    target_size: int = Field(2048, ge=64, description="longest side of the level the mask is computed on")
    min_saturation: int = Field(20, ge=0, le=255)
    max_gray: int = Field(225, ge=0, le=255)


class LowResConfig(StrictModel):
    scales: list[Scale] = Field(default_factory=lambda: [4, 8], min_length=1)
    method: DownsampleMethod | Literal["pyramid"] = Field(
        "lanczos", description="lanczos | bicubic | area (we downsample), pyramid (the slide's own level at the scale)"
    )
    pyramid_fallback: DownsampleMethod | None = Field(
        None, description="method: pyramid only: for a scale the slide has no level for; null: the slide fails"
    )

    @field_validator("scales")
    @classmethod
    def _sorted(cls, scales: list[int]) -> list[int]:
        return sorted(set(scales))


class SplitConfig(StrictModel):
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    by: Literal["auto", "patient", "slide", "spatial", "site"] = Field(
        "auto",
        description="auto: spatial blocks for a single slide, else patient (TCGA barcode) or slide; "
        "site: the TCGA tissue source site, so val and test hold sites never trained on",
    )
    block_size: int = Field(2048, ge=1, description="side of a spatial block in level-0 pixels (by: spatial)")
    salt: str = ""

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, ratios: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"ratios must be non-negative with a positive sum, got {list(ratios)}")
        return ratios


class QcConfig(StrictModel):
    enabled: bool = Field(True, description="draw OUT/_qc/<slide>.png per slide and OUT/_qc/index.html")
    max_size: int = Field(1024, ge=128, le=4096, description="longest side of a slide's QC picture (px)")


class ExecutionConfig(StrictModel):
    num_cpus_per_task: float = Field(1.0, gt=0, description="CPUs reserved per slide task")
    concurrency: int | None = Field(None, ge=1, description="max slide tasks at once (default: as CPUs allow)")
    max_read_errors: int = Field(10, ge=1, description="tile read errors after which a slide is given up")
    region_tiles: int = Field(
        512,
        ge=1,
        description="max_tiles_per_slide null: a slide with more tissue candidates is cut by several region tasks "
        "of about this many candidates each (one slide uses every CPU); their files are merged per split. "
        "With one CPU for region tasks, the slide is cut in one task (regions would only add the merge)",
    )
    row_group_rows: int = Field(
        128, ge=1, description="rows per Parquet row group: a task holds at most this many rows per split"
    )


class TileConfig(DataJobConfig):
    """Everything `srtn tile` does is set here; see configs/data/tcga_kirc.yaml for comments."""

    extensions: list[str] = Field(default_factory=lambda: list(SLIDE_EXTENSIONS))
    tiles: TileGridConfig = Field(default_factory=TileGridConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    tissue: TissueConfig = Field(default_factory=TissueConfig)
    lr: LowResConfig = Field(default_factory=LowResConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    qc: QcConfig = Field(default_factory=QcConfig)
    slide_mpp: dict[str, float] | str | None = Field(
        None,
        description="MPP (microns per level-0 pixel) of slides whose file has none: {slide id or file-name glob: mpp} "
        "or a CSV file with columns slide,mpp; only read with tiles.mpp",
    )
    max_tiles_per_slide: int | None = Field(
        100, ge=1, description="cap per slide (a seeded random sample of the passing tiles); null: every passing tile"
    )
    seed: int = 0
    overwrite: bool = False
    strict: bool = False

    @field_validator("slide_mpp")
    @classmethod
    def _positive_mpp(cls, value: dict[str, float] | str | None) -> dict[str, float] | str | None:
        if isinstance(value, dict):
            bad = {k: v for k, v in value.items() if not v > 0}
            if bad:
                raise ValueError(f"slide_mpp values must be positive microns per pixel, got {bad}")
        return value

    @model_validator(mode="after")
    def _tile_divisible(self) -> TileConfig:
        bad = [s for s in self.lr.scales if self.tiles.size % s]
        if bad:
            raise ValueError(f"tiles.size {self.tiles.size} is not divisible by lr.scales {bad}")
        return self
