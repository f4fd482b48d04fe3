"""The Ray Data pass of `srtn evaluate`: every dataset's split read by tasks, one pool of scoring actors.

Shape: per dataset, `srtn.data.reader.read_split` (one read task per shard file, only `split=<split>/`
files, rows filtered on `split`), whose rows are tagged with the dataset's index and have their
`lr_x<scale>` column renamed `lr`, so that every dataset streams through the same operators -> the union
-> one `map_batches` over a pool of callable-class actors (`actor_resources`: by default one single-threaded
actor per CPU, or one per GPU). Each actor receives every model once, at start (by object reference), decodes
the PNGs of its batch, and scores, dataset by dataset, every model that applies to that dataset's scale on
the same decoded tiles (`srtn.evaluate.score.HrReference`: the HR half of the metrics once per batch). One
pass for all datasets: the actor start-up, the costly part of a small evaluation, is paid once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from srtn.data.reader import META_COLUMNS, decoded_pairs, stack_nchw
from srtn.data.schema import lr_column
from srtn.evaluate.score import METRICS, HrReference, ResolvedModel, super_resolve
from srtn.models import build_model
from srtn.vocab import BICUBIC

if TYPE_CHECKING:
    import pyarrow as pa
    from torch import nn

    from srtn.config.evaluate import EvaluateConfig

__all__ = ["ActorPlan", "DatasetPlan", "actor_resources", "dataset_plans", "models_by_scale", "score_datasets"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetPlan:
    """One evaluated dataset as the pass sees it: where its tiles are, which models apply (by scale), and the
    config key that names its shards in errors (`data.shards` or `datasets.<i>.shards`)."""

    index: int
    name: str
    shards: str
    split: str
    scale: int
    limit: int | None
    crop_border: int
    models: tuple[str, ...]
    key: str


def dataset_plans(cfg: EvaluateConfig, models: Sequence[ResolvedModel]) -> list[DatasetPlan]:
    """A plan per dataset of `cfg`, in config order, with the models whose scale matches it."""
    plans = []
    for i, d in enumerate(cfg.dataset_configs()):
        key = "data.shards" if cfg.data is not None else f"datasets.{i}.shards"
        names = tuple(m.name for m in models if m.applies_to(d.scale))
        plans.append(
            DatasetPlan(i, d.name, d.shards, d.split, d.scale, d.limit, cfg.crop_border_for(d.scale), names, key)
        )
    return plans


def models_by_scale(models: Sequence[ResolvedModel], scales: Sequence[int]) -> dict[int, dict[str, nn.Module]]:
    """`{scale: {name: model}}` for the scales evaluated: each trained model under its own scale, bicubic built
    for every scale."""
    out: dict[int, dict[str, nn.Module]] = {s: {} for s in sorted(set(scales))}
    for m in models:
        for s in out:
            if m.applies_to(s):
                out[s][m.name] = build_model(BICUBIC, s) if m.model is None else m.model
    return out


@dataclass(frozen=True)
class ActorPlan:
    """How the scoring actors are sized: `actors` of `cpus` CPUs (and `threads` torch threads) and `gpus` GPUs."""

    actors: int
    cpus: float
    gpus: float
    threads: int


MAX_AUTO_ACTORS = 8  # beyond this, auto-sized actors get more threads instead of more copies of the models


def actor_resources(cfg: EvaluateConfig) -> ActorPlan:
    """The config's sizes where set; else one actor per GPU (1 CPU each), or on CPUs one single-threaded actor
    per CPU of the largest node less one read task's share (`data_cpus`), at most `MAX_AUTO_ACTORS`. Several
    one-thread actors beat one many-thread actor here: batches run side by side, and the metrics' small
    per-plane ops never wait on each other's threads."""
    import ray

    gpus = cfg.num_gpus
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
    node_cpus = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
    free = max(0.25, node_cpus - cfg.data_cpus)
    if gpus > 0:
        actors = cfg.actors or max(1, int(cluster_gpus // gpus))
        cpus = cfg.cpus_per_actor or 1.0
    else:
        actors = cfg.actors or max(1, min(MAX_AUTO_ACTORS, round(free)))
        cpus = cfg.cpus_per_actor or max(0.25, free / actors)
    return ActorPlan(actors=actors, cpus=cpus, gpus=gpus, threads=max(1, round(cpus)))


BLOCK_BYTES = 1 << 20  # about 8 tiles of 256 px as PNG: every batch can go to another actor


@contextlib.contextmanager
def _small_blocks() -> Iterator[None]:
    """Ray Data blocks of about `BLOCK_BYTES` while the pass is built and runs. Its default (128 MiB) merges a
    read task's rows into one block, i.e. one input of the actor pool: a dataset with one test slide went to
    one actor whatever `actors` said (measured: 7 batches, 1 of 2 actors busy)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size
    ctx.target_max_block_size = BLOCK_BYTES
    try:
        yield
    finally:
        ctx.target_max_block_size = saved


def _tag_rows(table: pa.Table, *, index: int, scale: int) -> pa.Table:
    """A read block with `lr_x<scale>` renamed `lr` and the dataset's index added, so datasets can be joined."""
    import pyarrow as pa

    table = table.rename_columns(["lr" if c == lr_column(scale) else c for c in table.column_names])
    return table.append_column("dataset", pa.array(np.full(table.num_rows, index, dtype=np.int32)))


class ScoreActor:
    """Ray Data callable class: holds every compared model once (on the actor's GPU when it has one) and
    scores each batch with the models of each row's dataset, one output row per (model, tile)."""

    def __init__(
        self,
        models: Any,
        *,
        plans: Sequence[DatasetPlan],
        use_gpu: bool,
        threads: int,
        channels_last: bool,
    ) -> None:
        import ray

        if isinstance(models, ray.ObjectRef):  # passed by reference: small actor args, one copy in the store
            models = ray.get(models)
        import cv2

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)  # the metrics' filters: no OpenCV pool beside torch's in a 1-CPU actor
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.models = {
            s: {n: m.to(self.device, memory_format=fmt).eval() for n, m in group.items()} for s, group in models.items()
        }
        self.plans = {p.index: p for p in plans}
        self.channels_last = channels_last

    def _score_tiles(self, plan: DatasetPlan, hr: torch.Tensor, lr: torch.Tensor) -> list[dict[str, np.ndarray]]:
        """`METRICS` of every model of `plan` on one stack of same-sized tiles."""
        reference = HrReference(hr.to(self.device), crop_border=plan.crop_border)
        lr = lr.to(self.device)
        parts = []
        for name in plan.models:
            try:
                sr = super_resolve(self.models[plan.scale][name], lr, channels_last=self.channels_last)
                scores = reference.score(sr)
            except Exception as exc:
                raise RuntimeError(f"model {name!r} failed on a batch of {plan.name}: {exc}") from exc
            part = {k: v.cpu().numpy().astype(np.float64) for k, v in scores.items()}
            part["model"] = np.full(len(lr), name, dtype=object)
            parts.append(part)
        return parts

    def _score_rows(self, plan: DatasetPlan, rows: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Decode one dataset's rows of the batch and score them, each tile size on its own stack."""
        pairs = list(decoded_pairs({"hr": rows["hr"], lr_column(plan.scale): rows["lr"], **rows}, plan.scale))
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (hr, _) in enumerate(pairs):
            by_shape.setdefault(hr.shape, []).append(i)
        parts = []
        for idx in by_shape.values():
            hr = torch.from_numpy(stack_nchw([pairs[i][0] for i in idx], "HR"))
            lr = torch.from_numpy(stack_nchw([pairs[i][1] for i in idx], "LR"))
            meta = {c: np.asarray(rows[c])[idx] for c in META_COLUMNS}
            meta["dataset"] = np.full(len(idx), plan.name, dtype=object)
            parts.extend(part | meta for part in self._score_tiles(plan, hr, lr))
        return parts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for index in np.unique(batch["dataset"]):
            rows = np.flatnonzero(batch["dataset"] == index)
            parts.extend(
                self._score_rows(self.plans[int(index)], {c: batch[c][rows] for c in ("hr", "lr", *META_COLUMNS)})
            )
        keys = ("model", "dataset", *META_COLUMNS, *METRICS)
        if not parts:
            return {key: np.array([], dtype=np.float64 if key in METRICS else object) for key in keys}
        return {key: np.concatenate([p[key] for p in parts]) for key in keys}


def score_datasets(cfg: EvaluateConfig, models: Sequence[ResolvedModel], plans: Sequence[DatasetPlan]) -> pd.DataFrame:
    """Per-image metrics of every applicable (model, dataset) pair: one Ray Data pass over all datasets."""
    import ray

    from srtn.data.reader import read_split
    from srtn.resources import check_fits

    sizes = actor_resources(cfg)
    need = {"CPU": sizes.actors * sizes.cpus + cfg.data_cpus}
    if sizes.gpus:
        need["GPU"] = sizes.actors * sizes.gpus
    check_fits(
        need,
        what=f"{sizes.actors} scoring actor(s) x {sizes.cpus:g} CPU, {sizes.gpus:g} GPU + data_cpus={cfg.data_cpus:g}",
        hint="lower actors, cpus_per_actor, num_gpus or data_cpus",
    )
    with _small_blocks():
        parts = []
        for p in plans:
            ds = read_split(p.shards, p.split, scale=p.scale, limit=p.limit, num_cpus=cfg.data_cpus)
            ds = ds.map_batches(
                _tag_rows,
                fn_kwargs={"index": p.index, "scale": p.scale},
                batch_format="pyarrow",
                num_cpus=cfg.data_cpus,
            )
            parts.append(ds)
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        ds = ds.map_batches(
            ScoreActor,
            fn_constructor_kwargs={
                "models": ray.put(models_by_scale(models, [p.scale for p in plans])),
                "plans": list(plans),
                "use_gpu": sizes.gpus > 0,
                "threads": sizes.threads,
                "channels_last": cfg.channels_last,
            },
            batch_format="numpy",
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=sizes.actors),
            num_cpus=sizes.cpus,
            num_gpus=sizes.gpus,
        )
        start = time.perf_counter()
        per_image = ds.to_pandas()
    logger.debug("scored %d (model, tile) pairs in %.1f s", len(per_image), time.perf_counter() - start)
    return per_image
