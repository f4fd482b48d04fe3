"""`srtn predict --set slides=... --set out_dir=...`: a cohort of slides through one shared pool of model actors.

Before any work (exit 2 on a `ConfigError`): the slides are listed and given ids (`srtn.infer.cohort_io`),
`out_dir` is checked, the model is pinned and loaded once, and every slide's status record is read. A slide
whose record says `done` with the same settings fingerprint (pinned model, scale, every pixel-changing
setting) and whose output still exists is skipped, unless `overwrite`. The rest run as one Ray task each, at
most `slides_in_flight` at once, all sending their tiles to the same `actors` model actors
(`srtn.infer.pool`). Each task writes its output and then its status record, so a killed run resumes
exactly; the driver writes `_manifest.json` from all records at the end (`srtn.infer.records`), prints the
closing table and, with `tracking.log_run`, records the run in MLflow (`srtn.infer.tracking`).

Exit codes as `srtn tile`: 0, or 1 when every slide failed or any did with `strict`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from srtn.config.predict import PredictConfig
from srtn.infer.cohort_io import check_out_dir, list_cohort
from srtn.infer.predict import ModelInfo, resolve_model, slide_settings
from srtn.infer.records import build_manifest, is_done, output_uri, read_status, summary_table, write_manifest
from srtn.infer.slide_job import LocalForwarder, SlideSettings, run_item

if TYPE_CHECKING:
    from torch import nn

__all__ = ["CohortReport", "predict_cohort", "run_cohort"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CohortReport:
    """What a cohort run did: the manifest (as written), where it is, the exit code, the MLflow run if any."""

    manifest: dict[str, Any]
    manifest_uri: str
    exit_code: int
    run_id: str | None = None
    runs_url: str | None = None

    def __str__(self) -> str:
        lines = [summary_table(self.manifest), f"manifest: {self.manifest_uri}"]
        if self.run_id:
            lines.append(f"mlflow run id: {self.run_id}" + (f"  {self.runs_url}" if self.runs_url else ""))
        return "\n".join(lines)


def _plan(cfg: PredictConfig, slides: Sequence[tuple[str, str]], settings: SlideSettings) -> tuple[list, list]:
    """(items to run, records of slides already done)."""
    todo: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    for uri, sid in slides:
        previous = None if cfg.overwrite else read_status(str(cfg.out_dir), sid)
        if is_done(previous, settings.fingerprint):
            done.append({**previous, "resumed": True})  # type: ignore[dict-item]
            continue
        item = {"uri": uri, "slide": sid, "output": output_uri(str(cfg.out_dir), sid, settings.scale)}
        todo.append(item | {"index": len(todo), "status_dir": cfg.out_dir})
    if todo and cfg.tracking.log_run:
        todo[0]["thumbnails"] = True
    return todo, done


def _local_records(cfg: PredictConfig, model: nn.Module, settings: SlideSettings, todo: list) -> Iterator[dict]:
    import torch

    from srtn.infer.tiles import TileModel

    device = "cuda" if (cfg.num_gpus is None or cfg.num_gpus > 0) and torch.cuda.is_available() else "cpu"
    forwarder = LocalForwarder(TileModel(model, scale=settings.scale, device=device))
    for item in todo:
        yield run_item(item, settings, forwarder)


def _run(cfg: PredictConfig, model: nn.Module, settings: SlideSettings, todo: list) -> list[dict[str, Any]]:
    from srtn.console import progress

    def bar(records: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(progress(records, total=len(todo), desc="slides", unit="slide") if cfg.progress else records)

    if cfg.executor == "local":
        return bar(_local_records(cfg, model, settings, todo))
    from srtn.infer.pool import model_pool, run_slides

    in_flight = min(len(todo), cfg.slides_in_flight or cfg.actors + 1)
    kw = {"actors": cfg.actors, "cpus_per_actor": cfg.cpus_per_actor, "num_gpus": cfg.num_gpus}
    kw |= {"cpus_per_slide": cfg.cpus_per_slide, "in_flight": in_flight}
    with model_pool(model, scale=settings.scale, **kw) as (pool, cpus):
        records = run_slides(todo, settings, pool, in_flight=in_flight, cpus_per_slide=cpus, progress=cfg.progress)
        return bar(records)


def _log_run(cfg: PredictConfig, info: ModelInfo, manifest: dict, thumbnail: Any) -> tuple[str, str]:
    from srtn import track
    from srtn.infer.tracking import log_cohort_run

    uri = track.resolve_tracking_uri(cfg.tracking.uri)
    run_name = cfg.tracking.run_name or f"predict-{info.name or info.arch}-x{info.scale}"
    run_id, experiment_id = log_cohort_run(
        tracking_uri=uri, experiment=cfg.tracking.experiment, run_name=run_name, config=cfg, manifest=manifest,
        thumbnail=thumbnail,
    )  # fmt: skip
    return run_id, track.runs_url(uri, experiment_id)


def predict_cohort(cfg: PredictConfig, *, sr_model: nn.Module | None = None) -> CohortReport:
    """Super-resolve every slide of `cfg.slides` into `cfg.out_dir` (see the module docstring); returns the
    report. `ConfigError` before any work for a bad input, output, model or tracking server."""
    start = time.perf_counter()
    if not cfg.is_cohort or cfg.out_dir is None:
        raise ValueError("predict_cohort needs slides + out_dir")
    slides = list_cohort(cfg.slides, extensions=cfg.extensions, out_dir=cfg.out_dir)  # type: ignore[arg-type]
    check_out_dir(cfg.out_dir)
    if cfg.tracking.log_run:
        from srtn import track

        track.check_tracking_server(track.resolve_tracking_uri(cfg.tracking.uri))
    model, info = resolve_model(cfg, sr_model)
    settings = slide_settings(cfg, info)
    todo, records = _plan(cfg, slides, settings)
    n, done = len(slides), len(records)
    print(f"srtn predict: {n} slides, {done} already done, {len(todo)} to super-resolve -> {cfg.out_dir}")
    thumbnail = None
    if todo:
        for rec in _run(cfg, model, settings, todo):
            if (pair := rec.pop("thumbnail", None)) is not None:
                thumbnail = (rec["slide"], pair)
            records.append(rec)
    manifest = build_manifest(
        cfg.model_dump(mode="json"), records, model=info.as_dict(), fingerprint=settings.fingerprint,
        seconds=time.perf_counter() - start,
    )  # fmt: skip
    uri = write_manifest(cfg.out_dir, manifest)
    failed = manifest["totals"]["status"].get("failed", 0)
    if failed:
        logger.warning("%d of %d slides failed; see %s", failed, len(records), uri)
    code = 1 if failed and (cfg.strict or failed == len(records)) else 0
    run_id = url = None
    if cfg.tracking.log_run:
        run_id, url = _log_run(cfg, info, manifest, thumbnail)
    return CohortReport(manifest=manifest, manifest_uri=uri, exit_code=code, run_id=run_id, runs_url=url)


def run_cohort(cfg: PredictConfig) -> int:
    """`srtn predict` on a cohort: run it, print the closing table; returns the exit code."""
    report = predict_cohort(cfg)
    print(report)
    return report.exit_code
