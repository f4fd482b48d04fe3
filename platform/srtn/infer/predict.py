"""`srtn predict`: a trained model applied to one slide (`slide` + `out`) or a cohort (`slides` + `out_dir`).

Flow of one slide (`predict_slide`), the same code a cohort runs per slide (`srtn.infer.cohort`):

1. The driver opens the slide briefly (metadata, the region mapped to `level`, the tissue mask: every bad
   input is an error naming the slide or key before any work) and resolves the model once: an MLflow URI is
   pinned to one version (`srtn.track.pin_model_uri`) and loaded, or `bicubic` is built.
2. With `executor: ray`, a pool of `actors` model actors gets the model once each (object store), and one
   Ray task for the slide reads its LR tiles, sends batches to the pool, blends the SR tiles and writes the
   TIFF (`srtn.infer.pool`, `srtn.infer.slide_job`): the driver never holds pixels. `executor: local` runs
   the same slide code and model in this process (debugging; honest memory measurements).
3. Tiles are blended with a feathered window into bands (`srtn.infer.blending`) that stream into a tiled
   pyramidal TIFF (`srtn.pyramid`) written under a name unique to this run and renamed when complete. Its
   Aperio-style description records what made it (`srtn.infer.provenance`), read back by OpenSlide as
   `aperio.srtn.*` properties.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from srtn.config.base import load_config
from srtn.config.predict import PredictConfig
from srtn.errors import ConfigError
from srtn.infer.provenance import fingerprint
from srtn.infer.slide_job import LocalForwarder, SlideSettings, prepare, super_resolve
from srtn.vocab import BICUBIC

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelInfo", "PredictSummary", "predict_slide", "resolve_model", "run_predict", "slide_settings"]


@dataclass(frozen=True)
class ModelInfo:
    """The model a run uses: the URI as given, pinned to one version, its name, version and architecture."""

    uri: str
    pinned: str
    name: str
    version: str
    arch: str
    scale: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PredictSummary:
    """What one prediction did; `str(summary)` is the table `srtn predict` prints."""

    slide: str
    out: str
    model: str
    scale: int
    level: int
    region: tuple[int, int, int, int]  # level-0 pixels X, Y, W, H
    input_size: tuple[int, int]  # (width, height) in pixels of `level`
    output_size: tuple[int, int]  # (width, height) of the output's level 0
    levels: int
    mpp: float | None  # microns per output pixel (input level's mpp / scale)
    tiles: int
    tiles_model: int
    tiles_bicubic: int
    seconds: float

    @property
    def input_mpx_per_s(self) -> float:
        return self.input_size[0] * self.input_size[1] / 1e6 / max(self.seconds, 1e-9)

    @property
    def output_mpx_per_s(self) -> float:
        return self.output_size[0] * self.output_size[1] / 1e6 / max(self.seconds, 1e-9)

    def __str__(self) -> str:
        x, y, w, h = self.region
        mpp = "unknown" if self.mpp is None else f"{self.mpp:.4g} um/px"
        rows = [
            ("slide", self.slide),
            ("model", f"{self.model} (x{self.scale})"),
            ("region", f"level-0 {x},{y} {w}x{h}, read at level {self.level}"),
            ("input", f"{self.input_size[0]} x {self.input_size[1]} px"),
            ("output", f"{self.output_size[0]} x {self.output_size[1]} px, {self.levels} levels, {mpp}"),
            ("tiles", f"{self.tiles} ({self.tiles_model} model, {self.tiles_bicubic} bicubic background)"),
            ("time", f"{self.seconds:.1f} s"),
            ("speed", f"{self.input_mpx_per_s:.3f} input MP/s, {self.output_mpx_per_s:.2f} output MP/s"),
            ("written", self.out),
        ]
        return "\n".join(f"{k:<8} {v}" for k, v in rows)


def _arch(model: nn.Module) -> str:
    from srtn.models.registry import MODELS

    return next((name for name, cls in MODELS.items() if isinstance(cls, type) and isinstance(model, cls)), "")


def _name_and_version(pinned: str) -> tuple[str, str]:
    if m := re.match(r"^models:/([^/@]+)/(\d+)$", pinned):
        return m.group(1), m.group(2)
    if m := re.match(r"^runs:/([^/]+)/?(.*)$", pinned):
        return m.group(2) or "model", m.group(1)
    return pinned.removeprefix("models:/"), ""


def resolve_model(cfg: PredictConfig, sr_model: nn.Module | None = None) -> tuple[nn.Module, ModelInfo]:
    """The model (bicubic, `sr_model`, or `cfg.model` pinned and loaded from MLflow) and what it is; its
    scale checked against `cfg.scale`. `ConfigError` (key `model` or `scale`) before any work."""
    from srtn.models import build_model

    if sr_model is None and cfg.model == BICUBIC:
        scale = cfg.scale or 0  # the config requires a scale for bicubic
        return build_model(BICUBIC, scale), ModelInfo(BICUBIC, BICUBIC, BICUBIC, "", BICUBIC, scale)
    pinned = cfg.model
    if sr_model is None:
        from srtn import track

        try:
            tracking_uri = track.resolve_tracking_uri(cfg.tracking.uri)
            pinned, _ = track.pin_model_uri(cfg.model, tracking_uri=tracking_uri)
            sr_model = track.load_model(pinned, tracking_uri=tracking_uri)
        except Exception as exc:  # MlflowException, OSError, pickle errors: all mean "this URI is unusable"
            raise ConfigError(f"cannot load model {cfg.model!r}: {exc}", key="model") from exc
    scale = getattr(sr_model, "scale", None) or cfg.scale
    if not isinstance(scale, int):
        raise ConfigError(f"model {cfg.model!r} has no integer `scale` attribute: set scale", key="scale")
    if cfg.scale is not None and cfg.scale != scale:
        raise ConfigError(f"scale {cfg.scale} does not match the model's scale {scale}", key="scale")
    name, version = _name_and_version(pinned)
    return sr_model.eval(), ModelInfo(cfg.model, pinned, name, version, _arch(sr_model), scale)


def slide_settings(cfg: PredictConfig, model: ModelInfo) -> SlideSettings:
    """The per-slide settings of `cfg`; the fingerprint covers the pinned model and everything that changes
    an output's pixels (not the execution: actors, batches, slides in flight)."""
    import srtn
    from srtn.track.runs import git_commit

    pixels = {
        "model": model.pinned, "scale": model.scale, "level": cfg.level, "region": cfg.region,
        "tile_size": cfg.tile_size, "overlap": cfg.overlap, "tissue": cfg.tissue.model_dump(mode="json"),
        "compression": cfg.compression, "quality": cfg.quality, "output_tile_size": cfg.output_tile_size,
    }  # fmt: skip
    return SlideSettings(
        scale=model.scale, level=cfg.level, region=cfg.region, tile_size=cfg.tile_size, overlap=cfg.overlap,
        batch_size=cfg.batch_size, batches_in_flight=cfg.batches_in_flight,
        tissue=cfg.tissue.model_dump(mode="json"), compression=cfg.compression, quality=cfg.quality,
        output_tile_size=cfg.output_tile_size, model=model.as_dict(),
        code={"srtn_version": srtn.__version__, "git_commit": git_commit()}, fingerprint=fingerprint(pixels),
    )  # fmt: skip


def _local_device(cfg: PredictConfig) -> str:
    import torch

    return "cuda" if (cfg.num_gpus is None or cfg.num_gpus > 0) and torch.cuda.is_available() else "cpu"


def _tile_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="tile", desc="super-resolving", file=sys.stderr, disable=not enabled)


def _run_on_ray(cfg: PredictConfig, model: nn.Module, settings: SlideSettings, n_tiles: int) -> dict[str, Any]:
    from srtn.infer.pool import config_error_from, model_pool, run_slides

    item = {"uri": cfg.slide, "slide": "slide", "output": cfg.out, "index": 0}
    kw = {"actors": cfg.actors, "cpus_per_actor": cfg.cpus_per_actor, "num_gpus": cfg.num_gpus}
    with model_pool(model, scale=settings.scale, cpus_per_slide=cfg.cpus_per_slide, in_flight=1, **kw) as (pool, cpus):
        (record,) = run_slides(
            [item], settings, pool, in_flight=1, cpus_per_slide=cpus, progress=cfg.progress, tiles_total=n_tiles
        )
    if record["status"] != "done":
        raise config_error_from(record, path=str(cfg.slide))
    return record


def predict_slide(
    cfg: PredictConfig | None = None, /, *, sr_model: nn.Module | None = None, **overrides: Any
) -> PredictSummary:
    """Super-resolve `cfg.slide` (or its `region`) into the pyramidal TIFF `cfg.out`; return a summary.

    `cfg` may be omitted and given as keyword arguments (`predict_slide(model="bicubic", scale=4, ...)`),
    or given and partly overridden. `sr_model` uses that module instead of loading `cfg.model` (library
    callers such as benchmarks; `cfg.model` is then only a label). Raises `SlideError` for slides that
    cannot be opened or read (naming the slide), `ConfigError` for a bad level, region or model,
    `ResourceError` when the cluster cannot host the actors.
    """
    if cfg is None:
        cfg = load_config(PredictConfig, data=overrides)
    elif overrides:
        cfg = load_config(PredictConfig, data={**cfg.model_dump(), **overrides})
    if cfg.is_cohort or cfg.slide is None or cfg.out is None:
        raise ConfigError("predict_slide needs slide + out; a cohort (slides + out_dir) is predict_cohort", key="slide")
    for key in ("slide", "out"):
        if "://" in getattr(cfg, key) and not getattr(cfg, key).startswith("file://"):
            raise ConfigError(f"{key} must be a local path (use slides + out_dir for s3://)", key=key)
    start = time.perf_counter()
    model, info = resolve_model(cfg, sr_model)
    settings = slide_settings(cfg, info)
    prep = prepare(cfg.slide, settings)  # every bad input named before any work
    if cfg.executor == "local":
        from srtn.infer.tiles import TileModel

        forwarder = LocalForwarder(TileModel(model, scale=info.scale, device=_local_device(cfg)))
        with _tile_bar(prep.plan.n_tiles, cfg.progress) as bar:
            record = super_resolve(cfg.slide, cfg.out, settings, forwarder, tick=bar.update)
    else:
        record = _run_on_ray(cfg, model, settings, prep.plan.n_tiles)
    return PredictSummary(
        slide=cfg.slide, out=cfg.out, model=cfg.model, scale=info.scale, level=cfg.level,
        region=tuple(record["region"]), input_size=tuple(record["input_size"]),  # type: ignore[arg-type]
        output_size=tuple(record["output_size"]), levels=record["levels"], mpp=record["mpp"],  # type: ignore[arg-type]
        tiles=record["tiles"], tiles_model=record["tiles_model"], tiles_bicubic=record["tiles_bicubic"],
        seconds=time.perf_counter() - start,
    )  # fmt: skip


def run_predict(cfg: PredictConfig) -> int:
    """`srtn predict`: one slide (print its summary) or a cohort (`srtn.infer.cohort`); returns the exit code."""
    if cfg.is_cohort:
        from srtn.infer.cohort import run_cohort

        return run_cohort(cfg)
    print(predict_slide(cfg))
    return 0
