"""Whole-slide super-resolution: LR tiles -> Ray Data batch inference -> blended bands -> pyramidal TIFF.

Flow (`predict_slide`):

1. The driver opens the slide briefly: metadata, the region (level-0 `X,Y,W,H`) mapped to `level`, and the
   tissue mask of a small level; it loads the model once (MLflow URI or `bicubic`) to learn its scale.
2. `TilePlan` lays overlapping LR tiles over the region. A Ray Data pipeline runs over tile *indices* only:
   `from_items(id batches) -> map_batches(TileSuperResolver, ActorPoolStrategy(size=actors), num_gpus)`.
   Each actor gets the model once (object store), opens the slide once, reads its tiles' pixels itself, and
   sends a tile through the model when it is tissue (mask fraction >= `tissue.min_fraction`), else through
   bicubic. The driver never holds the slide's pixels.
3. Results stream back in order (`preserve_order`); `BandAssembler` blends each tile row into a float32
   strip with a feathered window and emits finished HR rows; the pyramid writer pulls them as output tiles
   (JPEG or lossless), so memory grows with the region's width, never its area.

`executor="local"` runs the same `TileSuperResolver` in the calling process (no Ray): for debugging and
for measuring memory honestly in one process.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from srtn.config.base import load_config
from srtn.config.predict import PredictConfig
from srtn.data.slides import SlideInfo, mask_fraction, open_slide, read_rgb, slide_info, tissue_mask
from srtn.errors import ConfigError, SlideError
from srtn.infer.blending import BandAssembler, RowFeeder, TilePlan
from srtn.resources import check_fits, cluster_resources
from srtn.vocab import BICUBIC

if TYPE_CHECKING:
    from torch import nn

__all__ = ["PredictSummary", "TileSuperResolver", "predict_slide", "run_predict", "region_in_level", "trim_heap"]

_MAX_BLOCKS = 10_000  # input blocks; beyond that a block holds several model batches (one actor task each)


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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc). Without it, torch's per-batch buffers stay in glibc's heap
    once its mmap threshold has adapted, and RSS grows with the number of batches: 92 -> 333 MiB above
    baseline for 16x the tiles of a bicubic run here, 79 -> 112 MiB with a trim after every batch."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _resolve(obj: Any) -> Any:
    """`ray.get` an object ref (the model and mask travel through the object store), else `obj` itself."""
    ray = sys.modules.get("ray")
    return ray.get(obj) if ray is not None and isinstance(obj, ray.ObjectRef) else obj


class TileSuperResolver:
    """Ray Data callable class: rows of tile-id lists (`"ids"`) -> one row per tile `{"id", "sr", "model", "error"}`.

    `sr` is (N, h*s, w*s, 3) uint8, `model` says which tiles went through the model (else bicubic), and
    `error` is empty or, when the slide could not be read, the reason (the driver raises `SlideError`).

    Built once per actor: the model (an `nn.Module` or an object ref to one), bicubic, and the slide handle
    (opened on first use and reopened after a failed read, because OpenSlide errors are sticky).
    """

    def __init__(
        self,
        *,
        slide: str,
        plan: TilePlan,
        model: Any,
        mask: np.ndarray | None = None,
        mask_downsample: float = 1.0,
        min_fraction: float = 0.0,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        import torch

        from srtn.models import build_model

        if threads:
            torch.set_num_threads(threads)
        model, mask = (_resolve(v) for v in (model, mask))
        self.path, self.plan = slide, plan
        self.device = torch.device(device if device != "cuda" or torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.bicubic = build_model(BICUBIC, plan.scale).to(self.device)
        self.mask, self.mask_downsample, self.min_fraction = mask, mask_downsample, min_fraction
        self._stack = contextlib.ExitStack()
        self._slide: Any = None

    def uses_model(self, x: int, y: int) -> bool:
        """Whether the tile at LR (x, y) is tissue enough for the model (else bicubic)."""
        if self.mask is None or self.min_fraction <= 0:
            return True
        p = self.plan
        x0, y0 = p.level0(x, y)
        frac = mask_fraction(self.mask, self.mask_downsample, x0, y0, max(p.tile_w, p.tile_h) * p.downsample)
        return frac >= self.min_fraction

    def _read(self, x: int, y: int) -> np.ndarray:
        import openslide

        p = self.plan
        if self._slide is None:
            self._slide = self._stack.enter_context(open_slide(self.path))
        x0, y0 = p.level0(x, y)
        try:
            return read_rgb(self._slide, x0, y0, p.level, p.tile_w, p.tile_h)
        except (openslide.OpenSlideError, OSError) as exc:
            self.close()  # sticky errors: never reuse this handle
            where = f"level {p.level} tile {p.tile_w}x{p.tile_h} at level-0 ({x0}, {y0})"
            raise SlideError(f"cannot read {where}: {exc}", path=self.path) from exc

    def forward(self, net: nn.Module, lr: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) uint8 -> (N, h*s, w*s, 3) uint8 through `net` (clamped, rounded)."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(lr).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            y = net(x).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
            return y.permute(0, 2, 3, 1).cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p, s = self.plan, self.plan.scale
        ids = np.concatenate([np.asarray(i, dtype=np.int64).reshape(-1) for i in batch["ids"]])
        coords = [p.tile(int(i))[2:] for i in ids]
        use = np.array([self.uses_model(x, y) for x, y in coords], dtype=bool)
        sr = np.zeros((len(ids), p.tile_h * s, p.tile_w * s, 3), np.uint8)
        try:
            lr = np.stack([self._read(x, y) for x, y in coords])
        except SlideError as exc:  # returned, not raised: exception causes do not survive Ray's wrappers
            return {"id": ids, "sr": sr, "model": use, "error": np.full(len(ids), exc.reason)}
        for flag, net in ((True, self.model), (False, self.bicubic)):
            idx = np.flatnonzero(use == flag)
            if idx.size:
                sr[idx] = self.forward(net, lr[idx])
        trim_heap()
        return {"id": ids, "sr": sr, "model": use, "error": np.full(len(ids), "")}

    def close(self) -> None:
        self._stack.close()
        self._slide = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()


# --------------------------------------------------------------------------- driver side


def region_in_level(cfg: PredictConfig, info: SlideInfo) -> tuple[tuple[int, int, int, int], int, int]:
    """Check `cfg.level` and `cfg.region` against the slide: (level-0 region, its width and height at level)."""
    if cfg.level >= (n := len(info.level_dimensions)):
        raise ConfigError(f"level {cfg.level} does not exist: {info.path} has levels 0..{n - 1}", key="level")
    w0, h0 = info.dimensions
    x, y, w, h = cfg.region or (0, 0, w0, h0)
    if x + w > w0 or y + h > h0:
        where = f"region {x},{y},{w},{h} (level-0 X,Y,W,H) lies outside {info.path}"
        raise ConfigError(f"{where}, whose level 0 is {w0}x{h0}", key="region", path=info.path)
    ds = info.level_downsamples[cfg.level]
    lw, lh = int(w / ds), int(h / ds)
    if lw < 1 or lh < 1:
        raise ConfigError(f"region {w}x{h} is less than one pixel at level {cfg.level} (x{ds:g})", key="region")
    return (x, y, w, h), lw, lh


def _load_model(cfg: PredictConfig, sr_model: nn.Module | None) -> tuple[nn.Module, int]:
    """The model (bicubic, `sr_model`, or loaded from MLflow) and its scale, checked against `cfg.scale`."""
    from srtn.models import build_model

    if sr_model is None and cfg.model == BICUBIC:
        return build_model(BICUBIC, cfg.scale or 0), cfg.scale or 0  # the config requires a scale for bicubic
    if sr_model is None:
        from srtn import track

        try:
            sr_model = track.load_model(cfg.model, tracking_uri=track.resolve_tracking_uri(cfg.tracking.uri))
        except Exception as exc:  # MlflowException, OSError, pickle errors: all mean "this URI is unusable"
            raise ConfigError(f"cannot load model {cfg.model!r}: {exc}", key="model") from exc
    scale = getattr(sr_model, "scale", None) or cfg.scale
    if not isinstance(scale, int):
        raise ConfigError(f"model {cfg.model!r} has no integer `scale` attribute: set scale", key="scale")
    if cfg.scale is not None and cfg.scale != scale:
        raise ConfigError(f"scale {cfg.scale} does not match the model's scale {scale}", key="scale")
    return sr_model.eval(), scale


def _local_batches(plan: TilePlan, cfg: PredictConfig, kwargs: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
    import torch

    device = "cuda" if (cfg.num_gpus is None or cfg.num_gpus > 0) and torch.cuda.is_available() else "cpu"
    resolver = TileSuperResolver(**kwargs, device=device)
    try:
        for start in range(0, plan.n_tiles, cfg.batch_size):
            yield resolver({"ids": [np.arange(start, min(start + cfg.batch_size, plan.n_tiles))]})
    finally:
        resolver.close()


def _ray_batches(plan: TilePlan, cfg: PredictConfig, kwargs: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
    import ray

    from srtn.runtime import init_ray

    init_ray()
    total = cluster_resources()
    gpus = cfg.num_gpus if cfg.num_gpus is not None else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
    check_fits(
        {"CPU": cfg.actors * cfg.cpus_per_actor, "GPU": cfg.actors * gpus},
        what=f"{cfg.actors} model actor(s) x ({cfg.cpus_per_actor:g} CPU, {gpus:g} GPU)",
        hint="lower `actors` or `cpus_per_actor`",
        have=total,
    )
    kwargs = {**kwargs, "model": ray.put(kwargs["model"]), "mask": ray.put(kwargs["mask"])}
    kwargs["device"] = "cuda" if gpus > 0 else "cpu"
    kwargs["threads"] = max(1, int(cfg.cpus_per_actor))
    # One row per model batch (a list of tile ids), one UDF call per row: batches are exactly what the config
    # says (small regions get smaller ones so no actor idles). Rows are made in the driver (from_items: no
    # read tasks competing with the actors for CPUs), at most _MAX_BLOCKS blocks.
    bs = max(1, min(cfg.batch_size, math.ceil(plan.n_tiles / cfg.actors)))
    rows = [{"ids": list(range(i, min(i + bs, plan.n_tiles)))} for i in range(0, plan.n_tiles, bs)]
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True  # the assembler needs tiles in row-major order
    ctx.enable_progress_bars = False  # the driver shows one bar over tiles instead
    try:
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), _MAX_BLOCKS)).map_batches(
            TileSuperResolver,
            fn_constructor_kwargs=kwargs,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=gpus or None,
        )
        yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    if not enabled:
        return contextlib.nullcontext(None)
    return tqdm(total=total, unit="tile", desc="super-resolving", file=sys.stderr)


def _strips(
    batches: Iterable[dict[str, np.ndarray]], plan: TilePlan, slide: str, counts: dict[str, int], tick: Callable
) -> Iterator[tuple[int, np.ndarray]]:
    """Blend batches of SR tiles (row-major) into finished HR strips."""
    assembler = BandAssembler(plan)
    for batch in batches:
        if len(batch["error"]) and batch["error"][0]:
            raise SlideError(str(batch["error"][0]), path=slide)
        counts["model"] += int(np.count_nonzero(batch["model"]))
        for i, sr in zip(batch["id"], batch["sr"]):
            yield from assembler.add(int(i), sr)
        counts["tiles"] += len(batch["id"])
        tick(len(batch["id"]))
    yield from assembler.finish()


def predict_slide(
    cfg: PredictConfig | None = None, /, *, sr_model: nn.Module | None = None, **overrides: Any
) -> PredictSummary:
    """Super-resolve `cfg.slide` (or its `region`) into the pyramidal TIFF `cfg.out`; return a summary.

    `cfg` may be omitted and given as keyword arguments (`predict_slide(model="bicubic", scale=4, ...)`),
    or given and partly overridden. `sr_model` uses that module instead of loading `cfg.model` (library
    callers such as benchmarks; `cfg.model` is then only a label). Raises `SlideError` for slides that
    cannot be opened or read, `ConfigError` for a bad level, region or model, `ResourceError` when the
    cluster cannot host the actors.
    """
    from srtn.pyramid import write_pyramid

    if cfg is None:
        cfg = load_config(PredictConfig, data=overrides)
    elif overrides:
        cfg = load_config(PredictConfig, data={**cfg.model_dump(), **overrides})
    for key in ("slide", "out"):
        if "://" in getattr(cfg, key) and not getattr(cfg, key).startswith("file://"):
            raise ConfigError(f"{key} must be a local path (OpenSlide and the TIFF writer need files)", key=key)
    start = time.perf_counter()
    with open_slide(cfg.slide) as slide:
        info = slide_info(slide, cfg.slide)
        region, lw, lh = region_in_level(cfg, info)
        mask, mask_ds = None, 1.0
        if (t := cfg.tissue).min_fraction > 0:
            mask, mask_ds = tissue_mask(slide, target_size=t.target_size, min_saturation=t.min_saturation,
                                        max_gray=t.max_gray)  # fmt: skip
    model, scale = _load_model(cfg, sr_model)
    plan = TilePlan.build(
        level=cfg.level, downsample=info.level_downsamples[cfg.level], origin=region[:2], width=lw, height=lh,
        tile_size=cfg.tile_size, overlap=cfg.overlap, scale=scale,
    )  # fmt: skip
    out_w, out_h = plan.out_size
    in_mpp = info.mpp_at(cfg.level)
    mpp = None if in_mpp is None else in_mpp / scale
    kwargs: dict[str, Any] = {"slide": cfg.slide, "plan": plan, "model": model, "mask": mask}
    kwargs |= {"mask_downsample": mask_ds, "min_fraction": cfg.tissue.min_fraction}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {"tiles": 0, "model": 0}
    source = _local_batches if cfg.executor == "local" else _ray_batches
    batches = source(plan, cfg, kwargs)
    try:
        with _progress(plan.n_tiles, cfg.progress) as bar:
            strips = _strips(batches, plan, cfg.slide, counts, bar.update if bar is not None else lambda n: None)
            about = {"source": Path(cfg.slide).name, "model": cfg.model, "scale": scale, "level": cfg.level}
            levels = write_pyramid(
                out, RowFeeder(strips, out_w), width=out_w, height=out_h, tile_size=cfg.output_tile_size, mpp=mpp,
                flavor="generic", compression=cfg.compression, quality=cfg.quality,
                description_extra={**about, "region": list(region)},
            )  # fmt: skip
    finally:
        batches.close()  # type: ignore[attr-defined]  # stops the Ray pipeline if the writer failed
    return PredictSummary(
        slide=cfg.slide, out=str(out), model=cfg.model, scale=scale, level=cfg.level, region=region,
        input_size=(plan.width, plan.height), output_size=(out_w, out_h), levels=levels, mpp=mpp,
        tiles=counts["tiles"], tiles_model=counts["model"], tiles_bicubic=counts["tiles"] - counts["model"],
        seconds=time.perf_counter() - start,
    )  # fmt: skip


def run_predict(cfg: PredictConfig) -> int:
    """`srtn predict`: run `predict_slide` and print its summary; returns the exit code."""
    print(predict_slide(cfg))
    return 0
