"""Config of `srtn predict`: whole-slide (or region) super-resolution into pyramidal TIFFs.

Two forms: one slide (`slide` + `out`), or a cohort (`slides` + `out_dir`: a folder, a list or an `s3://`
prefix in, one `<slide id>_x<scale>.tiff` per slide out, with status records, a manifest and resume).
Coordinates: `region` is `X,Y,W,H` in level-0 pixels (OpenSlide's frame) whatever `level` is read;
`tile_size` and `overlap` are pixels of the level being read (the low-resolution input).
Every key is documented in `configs/predict/default.yaml`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from srtn.config.base import StrictModel
from srtn.config.tile import SLIDE_EXTENSIONS, TissueConfig
from srtn.vocab import BICUBIC, check_scale

__all__ = ["PredictConfig", "PredictTissueConfig", "PredictTrackingConfig", "Region", "parse_region"]

"""The model name that means "no network": bicubic interpolation (needs `scale`)."""

Region = tuple[int, int, int, int]
_MODEL_URI = re.compile(r"^(models|runs):/\S+$")


def parse_region(value: str | Region | list[int]) -> Region:
    """`"X,Y,W,H"` (level-0 pixels) or a 4-sequence -> `(x, y, w, h)`; `ValueError` says what is wrong."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 4:
            raise ValueError(f"region must be 'X,Y,W,H' (level-0 pixels), got {value!r}")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"region must be four integers 'X,Y,W,H' (level-0 pixels), got {value!r}") from None
    else:
        nums = list(value)
        if len(nums) != 4 or not all(isinstance(n, int) and not isinstance(n, bool) for n in nums):
            raise ValueError(f"region must be four integers X,Y,W,H (level-0 pixels), got {value!r}")
    x, y, w, h = nums
    if x < 0 or y < 0:
        raise ValueError(f"region origin must be >= 0, got X={x}, Y={y}")
    if w <= 0 or h <= 0:
        raise ValueError(f"region width and height must be > 0, got W={w}, H={h}")
    return x, y, w, h


class PredictTissueConfig(TissueConfig):
    """The tiling job's tissue mask; a tile below `min_fraction` tissue is upscaled by bicubic, not the model."""

    min_fraction: float = Field(0.05, ge=0, le=1, description="share of a tile the tissue mask must cover")


class PredictTrackingConfig(StrictModel):
    uri: str | None = Field(None, description="MLflow URI; null: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db")
    log_run: bool = Field(False, description="record a cohort run in MLflow (params, manifest, LR | SR thumbnails)")
    experiment: str = Field("srtn-predict", min_length=1, description="MLflow experiment of cohort runs")
    run_name: str | None = Field(None, description="null: predict-<model>-x<scale>")


class PredictConfig(StrictModel):
    """Everything `srtn predict` does is set here."""

    model: str = Field(description="models:/NAME/VERSION, runs:/RUN_ID/PATH, or 'bicubic'")
    scale: int | None = Field(None, validate_default=True, description="required for bicubic; checked for models")
    slide: str | None = Field(None, description="one slide (local path); with `out`")
    out: str | None = Field(None, description="its output TIFF (local path)")
    slides: str | list[str] | None = Field(None, description="a cohort: folder, .txt list, s3:// prefix, or a list")
    out_dir: str | None = Field(None, validate_default=True, description="the cohort's outputs: folder or s3://")
    extensions: list[str] = Field(default_factory=lambda: list(SLIDE_EXTENSIONS), description="slides in folders")
    level: int = Field(0, ge=0)
    region: Region | None = None
    tile_size: int = Field(128, ge=16, description="LR input tile side (pixels of `level`)")
    overlap: int = Field(16, ge=0, description="LR pixels shared by neighbouring tiles, blended")
    batch_size: int = Field(8, ge=1)
    batches_in_flight: int = Field(4, ge=1, description="batches of one slide with the model actors at once")
    actors: int = Field(1, ge=1, description="model replicas (Ray actors), shared by all slides")
    cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus: float | None = Field(None, ge=0, description="GPUs per actor; null: 1 if the cluster has GPUs")
    slides_in_flight: int | None = Field(None, ge=1, description="slides being read/written at once; null: actors+1")
    cpus_per_slide: float | None = Field(None, ge=0, description="CPUs reserved per slide task; null: what is left")
    executor: Literal["ray", "local"] = "ray"
    compression: Literal["jpeg", "lossless"] = "jpeg"
    quality: int = Field(90, ge=1, le=100)
    output_tile_size: int = Field(256, ge=16)
    tissue: PredictTissueConfig = Field(default_factory=PredictTissueConfig)
    tracking: PredictTrackingConfig = Field(default_factory=PredictTrackingConfig)
    overwrite: bool = Field(False, description="redo slides already done with the same model and settings")
    strict: bool = Field(False, description="exit 1 if any slide of a cohort failed")
    progress: bool = True

    @property
    def is_cohort(self) -> bool:
        return self.slides is not None

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        value = value.strip()
        if value != BICUBIC and not _MODEL_URI.match(value):
            raise ValueError("model must be an MLflow URI (models:/NAME/VERSION, runs:/RUN_ID/PATH) or 'bicubic'")
        return value

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            if info.data.get("model") == BICUBIC:
                raise ValueError("model 'bicubic' needs a scale (e.g. scale: 4)")
            return None
        return check_scale(value)

    @field_validator("out_dir")
    @classmethod
    def _one_form(cls, value: str | None, info: ValidationInfo) -> str | None:
        single = {k: info.data.get(k) for k in ("slide", "out")}
        cohort = {"slides": info.data.get("slides"), "out_dir": value}
        given = sorted(k for k, v in {**single, **cohort}.items() if v is not None)
        if any(v is not None for v in single.values()) and any(v is not None for v in cohort.values()):
            raise ValueError(f"give slide + out (one slide) or slides + out_dir (a cohort), not both (got {given})")
        if not given:
            raise ValueError("give slide + out (one slide) or slides + out_dir (a cohort)")
        for pair in (single, cohort):
            missing = [k for k, v in pair.items() if v is None]
            if len(missing) == 1 and len(pair) == 2 and any(v is not None for v in pair.values()):
                raise ValueError(f"{' and '.join(pair)} go together: {missing[0]} is missing")
        return value

    @field_validator("region", mode="before")
    @classmethod
    def _parse_region(cls, value: object) -> object:
        if value is None or value == "":
            return None
        if isinstance(value, (str, list, tuple)):
            return parse_region(value)  # type: ignore[arg-type]
        raise ValueError(f"region must be 'X,Y,W,H' (level-0 pixels), got {value!r}")

    @field_validator("overlap")
    @classmethod
    def _check_overlap(cls, value: int, info: ValidationInfo) -> int:
        tile = info.data.get("tile_size")
        if tile is not None and 2 * value >= tile:
            raise ValueError(f"overlap ({value}) must be less than half of tile_size ({tile})")
        return value

    @field_validator("output_tile_size")
    @classmethod
    def _check_output_tile(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"TIFF tiles must be a multiple of 16 pixels, got {value}")
        return value
