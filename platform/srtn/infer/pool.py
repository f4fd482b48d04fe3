"""One pool of model actors shared by every slide, and one Ray task per slide that feeds it.

- **Model actors** (`ModelWorker`): `actors` of them, each holding the network once (it comes from the object
  store: loaded once per actor, whatever the number of slides), `cpus_per_actor` CPUs and `num_gpus` GPUs.
  `forward(lr, use)` turns a batch of LR tiles into SR tiles; calls queue at the actor and run one at a time.
- **Slide tasks** (`slide_task`): one per slide, up to `slides_in_flight` at once. A task stages its slide
  (an `s3://` slide is copied to local disk and removed after), reads its tiles, sends batches to the actors
  round-robin (several in flight), blends the SR tiles and writes the TIFF (`srtn.infer.slide_job`), then
  publishes it and writes the slide's status record. With several slides in flight the actors' queues hold
  batches of several slides, so no actor waits on one slide's reading or writing.
- **The driver** (`run_slides`) only submits tasks, waits for their small records and draws the bars: it
  never holds pixels.

Local paths (a slide, `out_dir`) mean the driver's machine, so slide tasks with a local path run on the
driver's node (a hard node affinity); with `s3://` in and out they go wherever the cluster has room. The
storage settings the driver sees (`srtn.runtime.FORWARDED_ENV`) reach the slide tasks as `env_vars`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import ray

from srtn import storage
from srtn.errors import ConfigError, SlideError, SrtnError
from srtn.infer.slide_job import SlideSettings, run_item
from srtn.infer.tiles import TileModel

__all__ = [
    "ModelWorker",
    "PoolForwarder",
    "check_pool_fits",
    "config_error_from",
    "model_pool",
    "resolve_gpus",
    "resolve_slide_cpus",
    "run_slides",
    "slide_task",
    "start_pool",
    "stop_pool",
]

_POLL_S = 1.0  # how often the driver refreshes the tile bar while slides run


@ray.remote(concurrency_groups={"stats": 1})
class ModelWorker:
    """A Ray actor holding one copy of the network (and bicubic): `forward` runs one batch at a time; `tiles`
    answers from its own concurrency group, so the driver's progress poll never waits behind a batch."""

    def __init__(self, model: Any, *, scale: int, device: str, threads: int) -> None:
        self.core = TileModel(model, scale=scale, device=device, threads=threads)
        self.done = 0

    def forward(self, lr: np.ndarray, use: np.ndarray) -> np.ndarray:
        sr = self.core(lr, use)
        self.done += len(lr)
        return sr

    @ray.method(concurrency_group="stats")
    def tiles(self) -> int:
        return self.done


def start_pool(
    model: Any, *, scale: int, actors: int, cpus_per_actor: float, gpus: float
) -> list[ray.actor.ActorHandle]:
    """`actors` model actors sharing one copy of `model` in the object store; waits until all are up."""
    ref = ray.put(model)
    options: dict[str, Any] = {"num_cpus": cpus_per_actor}
    if gpus:
        options["num_gpus"] = gpus
    device = "cuda" if gpus > 0 else "cpu"
    pool = [
        ModelWorker.options(**options).remote(ref, scale=scale, device=device, threads=max(1, int(cpus_per_actor)))
        for _ in range(actors)
    ]
    ray.get([a.tiles.remote() for a in pool])  # constructors done: the model is loaded everywhere
    return pool


def stop_pool(pool: Sequence[ray.actor.ActorHandle]) -> None:
    for actor in pool:
        ray.kill(actor)


class PoolForwarder:
    """A slide task's side of the pool: batches go to the actors in turn (starting at `offset`, so slides
    started together begin on different actors); `result` waits for one."""

    def __init__(self, pool: Sequence[ray.actor.ActorHandle], offset: int = 0) -> None:
        self.pool, self.next = list(pool), offset

    def submit(self, lr: np.ndarray, use: np.ndarray) -> ray.ObjectRef:
        actor = self.pool[self.next % len(self.pool)]
        self.next += 1
        return actor.forward.remote(lr, use)

    def result(self, handle: ray.ObjectRef) -> np.ndarray:
        return ray.get(handle)


def slide_task(
    item: Mapping[str, Any], settings: SlideSettings, pool: Sequence[ray.actor.ActorHandle]
) -> dict[str, Any]:
    """`run_item` in a Ray task, its batches sent to the shared pool (see `srtn.infer.slide_job.run_item`)."""
    return run_item(item, settings, PoolForwarder(pool, int(item.get("index", 0))))


def _task_options(items: Sequence[Mapping[str, Any]], cpus_per_slide: float) -> dict[str, Any]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from srtn.runtime import FORWARDED_ENV

    options: dict[str, Any] = {"num_cpus": cpus_per_slide, "max_retries": 1}  # retried if its worker dies
    local = any(not storage.is_remote(i["uri"]) or not storage.is_remote(i["output"]) for i in items)
    if local:  # local paths are the driver's: run where they mean the same
        node = ray.get_runtime_context().get_node_id()
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if env and any(storage.is_remote(i["uri"]) or storage.is_remote(i["output"]) for i in items):
        options["runtime_env"] = {"env_vars": env}
    return options


def _tile_bar(enabled: bool, total: int | None) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total, desc="tiles", unit="tile", file=sys.stderr, dynamic_ncols=interactive, leave=False,
        ncols=None if interactive else 100, mininterval=0.5 if interactive else 30.0,
    )  # fmt: skip


def run_slides(
    items: Sequence[Mapping[str, Any]],
    settings: SlideSettings,
    pool: Sequence[ray.actor.ActorHandle],
    *,
    in_flight: int,
    cpus_per_slide: float,
    progress: bool = True,
    tiles_total: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Run `slide_task` over `items`, at most `in_flight` at once; yield each record as its slide finishes,
    while a bar over tiles (those the pool has done) advances."""
    remote = ray.remote(slide_task).options(**_task_options(items, cpus_per_slide))
    todo = list(items)
    todo.reverse()
    pending: dict[ray.ObjectRef, Mapping[str, Any]] = {}
    bar = _tile_bar(progress, tiles_total)
    base = sum(ray.get([a.tiles.remote() for a in pool])) if bar is not None else 0
    try:
        while todo or pending:
            while todo and len(pending) < max(1, in_flight):
                item = todo.pop()
                pending[remote.remote(item, settings, pool)] = item
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S if bar is not None else None)
            if bar is not None:
                bar.update(sum(ray.get([a.tiles.remote() for a in pool])) - base - bar.n)
            for ref in ready:
                yield _record_of(ref, pending.pop(ref), settings)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if bar is not None:
            bar.close()


def _record_of(ref: ray.ObjectRef, item: Mapping[str, Any], settings: SlideSettings) -> dict[str, Any]:
    """The slide task's record; a task that died (its worker or node lost, after one retry) is a failed slide
    like any other, recorded by the driver."""
    from srtn.infer.records import write_status

    try:
        return ray.get(ref)
    except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
        record = {"slide": item["slide"], "uri": item["uri"], "output": item["output"], "status": "failed"}
        record |= {"fingerprint": settings.fingerprint, "error": f"the slide task died: {type(exc).__name__}: {exc}"}
        record |= {"error_type": type(exc).__name__, "error_key": None, "seconds": None}
        if item.get("status_dir"):
            write_status(item["status_dir"], record)
        return record


def check_pool_fits(*, actors: int, cpus_per_actor: float, gpus: float, slides: float) -> None:
    """`ResourceError` before any actor starts when the actors (and the slide tasks' CPUs) cannot all fit."""
    from srtn.resources import check_fits

    check_fits(
        {"CPU": actors * cpus_per_actor + slides, "GPU": actors * gpus},
        what=f"{actors} model actor(s) x ({cpus_per_actor:g} CPU, {gpus:g} GPU) + {slides:g} CPU for slide tasks",
        hint="lower `actors`, `cpus_per_actor` or `cpus_per_slide`",
    )


def resolve_gpus(num_gpus: float | None) -> float:
    """GPUs per actor: as configured, else 1 when the cluster has a GPU."""
    if num_gpus is not None:
        return num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def resolve_slide_cpus(cpus_per_slide: float | None, *, actors: int, cpus_per_actor: float, in_flight: int) -> float:
    """CPUs reserved per slide task: as configured, else what the actors leave, shared by the slides in
    flight (at most 1 each; 0 on a machine the actors fill: the OS then shares the CPUs)."""
    if cpus_per_slide is not None:
        return cpus_per_slide
    left = ray.cluster_resources().get("CPU", 0) - actors * cpus_per_actor
    return max(0.0, min(1.0, left / max(1, in_flight)))


def config_error_from(record: Mapping[str, Any], path: str) -> SrtnError:
    """The error a failed single-slide record stands for (raised by `srtn predict --slide`)."""
    if record.get("error_type") == "ConfigError":
        return ConfigError(str(record.get("error")), key=record.get("error_key"), path=path)
    return SlideError(str(record.get("error")), path=path)


@contextmanager
def model_pool(
    model: Any,
    *,
    scale: int,
    actors: int,
    cpus_per_actor: float,
    num_gpus: float | None,
    cpus_per_slide: float | None,
    in_flight: int,
) -> Iterator[tuple[list[ray.actor.ActorHandle], float]]:
    """Ray started (`srtn.runtime.init_ray`), the resources checked, `actors` model actors up: yields the pool
    and the CPUs each slide task reserves; the actors are stopped after."""
    from srtn.runtime import init_ray

    init_ray(dashboard=False)  # actors and tasks only: the dashboard is for Ray Train (init_ray)
    gpus = resolve_gpus(num_gpus)
    cpus = resolve_slide_cpus(cpus_per_slide, actors=actors, cpus_per_actor=cpus_per_actor, in_flight=in_flight)
    check_pool_fits(actors=actors, cpus_per_actor=cpus_per_actor, gpus=gpus, slides=cpus * in_flight)
    pool = start_pool(model, scale=scale, actors=actors, cpus_per_actor=cpus_per_actor, gpus=gpus)
    try:
        yield pool, cpus
    finally:
        stop_pool(pool)
