"""One Ray Data task per work item (a slide, a patient): the shape of every data job here.

Each task reads its own input, writes its own shard files and returns only a small record, so the
dataset's rows are tiny and memory never grows with the number of items.

Ray Data's operator resource reservation is turned off while these run. It keeps part of the CPU budget
back for downstream operators and output buffers, which here do not exist (the driver consumes small
records): with it on, a 2-CPU machine ran one slide task instead of two for a third of the tiling job
(measured: 76% -> 88% CPU busy, 19.0 -> 16.4 s for 32 slides). Memory stays bounded by the number of
running tasks, each of which holds one item.

Ray's fixed cost is cut where it is pure overhead (`benchmarks/ray_overhead.py` measures each part):

- A local instance started here has no dashboard (`init_ray(dashboard=False)`): nothing here reads it.
- Its start skips two of Ray's waits (`srtn.runtime._lean_local_start`): the API-server process Ray starts even
  without a dashboard, and the one-second poll for the new raylet (about 3 s less per 32-slide job here).
- Its workers import Ray Data and the item function's module as they start (`init_ray(preload=...)`), while
  the driver still starts, not in their first task (about 1 s less for 32 slides here).
- Ray Data's scheduling loop waits up to 0.1 s for finished tasks before it submits the next one, and as it
  budgets tasks to the CPUs, no task waits in Ray's queue: each item's CPU sat idle 0.1-0.3 s after it
  finished (measured with `ray.timeline`: 15 gaps of about 0.2 s per worker in a 32-slide job, a known
  limitation: ray-project/ray#42377, #45934). While items run that wait is 0.02 s (`_TASK_WAIT_S`): gaps of
  0.03-0.07 s, for about 0.05 CPU-s per second more in the driver.
- Its workers are warmed. Ray prestarts one worker per CPU, and Ray Data's first dataset creates two
  internal actors (`_StatsActor`, `_AutoscalingCoordinatorActor`) that each take an idle fresh worker:
  they took the prestarted ones, and the first items waited for new workers to start (about 2 s here).
  The first map_items call on a local instance started in this process (`srtn.runtime.started_here`;
  not a cluster, not an instance someone else started) submits one task per CPU at once, not waited
  for, that claims a prestarted worker and imports Ray Data and the item function's module there while
  the driver imports Ray Data itself; the items then run in those workers, the actors start their own.
  (With the preload above, those imports are already done when the task arrives.)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["map_items", "start_ray_for"]

_WARMED: set[str] = set()  # local instances (node ids) whose workers a map_items call here has warmed


_TASK_WAIT_S = 0.02  # how long Ray Data's scheduling loop waits for a finished task before it looks again


@contextmanager
def _per_item_execution() -> Iterator[None]:
    """Ray Data set for one task per item while the block runs (see the module docstring): no operator
    reservation, and a finished item's CPU handed to the next item within `_TASK_WAIT_S`."""
    import ray.data
    from ray.data._internal.execution import streaming_executor_state as executor_state

    ctx = ray.data.DataContext.get_current()
    saved = ctx.op_resource_reservation_enabled
    ctx.op_resource_reservation_enabled = False
    wait_name = "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S"
    saved_wait = getattr(executor_state, wait_name, None)
    if isinstance(saved_wait, float):
        setattr(executor_state, wait_name, min(saved_wait, _TASK_WAIT_S))
    try:
        yield
    finally:
        ctx.op_resource_reservation_enabled = saved
        if isinstance(saved_wait, float):
            setattr(executor_state, wait_name, saved_wait)


def _import_modules(names: Sequence[str]) -> list[str]:
    """Import `names` in this worker; returns those that failed (a warm-up never fails the job)."""
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
    return failed


def _modules_for(fn: Callable[..., Any]) -> list[str]:
    """What a worker running `fn` as a Ray Data item imports: Ray Data and `fn`'s module (not `__main__`)."""
    module = getattr(fn, "__module__", None)
    return ["ray.data"] + ([module] if module not in (None, "__main__") else [])


def _warm_workers(fn: Callable[..., Any]) -> None:
    """One task per CPU of the fresh local instance, importing Ray Data and `fn`'s module (see the module
    docstring); submitted, not waited for."""
    import ray

    modules = _modules_for(fn)
    task = ray.remote(num_cpus=1)(_import_modules)
    for _ in range(max(1, int(ray.cluster_resources().get("CPU", 1)))):
        task.remote(modules)


def start_ray_for(fn: Callable[..., Any]) -> None:
    """Ray as `map_items(fn, ...)` needs it: `init_ray` (without its dashboard if this starts it) and, on a local
    instance started here, its workers warmed for `fn` once. `map_items` calls it; a caller that starts actors
    of its own calls it first, so that they do not take the prestarted workers (see the module docstring)."""
    import ray

    from srtn.runtime import init_ray, started_here

    init_ray(dashboard=False, preload=_modules_for(fn))
    if started_here() and ray.get_runtime_context().get_node_id() not in _WARMED:
        _WARMED.add(ray.get_runtime_context().get_node_id())
        _warm_workers(fn)


def map_items(
    fn: Callable[..., dict[str, Any]],
    items: Sequence[dict[str, Any]],
    *,
    fn_kwargs: dict[str, Any],
    num_cpus: float,
    concurrency: int | None,
    desc: str = "items",
    unit: str = "item",
) -> list[dict[str, Any]]:
    """`fn(item, **fn_kwargs)` for every item, one Ray Data task each (Ray started by `init_ray`, without
    its dashboard if this starts it), under a progress bar that advances as each item's result arrives."""
    from srtn.console import progress

    start_ray_for(fn)
    import ray.data

    with _per_item_execution():
        ds = ray.data.from_items(list(items), override_num_blocks=max(1, len(items)))
        compute = ray.data.TaskPoolStrategy(size=concurrency) if concurrency else None
        ds = ds.map(fn, fn_kwargs=fn_kwargs, num_cpus=num_cpus, compute=compute)
        return list(progress(ds.iter_rows(), total=len(items), desc=desc, unit=unit))
