"""A slide's regions on Ray: handed out in region order to up to `slots - 1` Ray tasks and the slide task
itself, and merged in order by a thread of the slide task as they come in.

The slide task cuts regions too: it holds a CPU and has everything imported, where waiting would lend its
CPU to a worker Ray must first start (0.75 s here, per large slide). Handing the regions out in order to
whichever side is free keeps every slot busy whatever a region or a worker's start costs, and the merge
follows the cutting: after the last region only its own parts are left to merge. (A fixed split, Ray the
first regions and the slide task the rest, left the slide task's share, half the slide, to merge after its
last region: 1.6 s of one busy CPU on a 40k slide.)

Without Ray (tests, a plain process) the regions run in this process, in order (`srtn.data.regions` holds
the Ray-free parts: the regions, cutting one, the merge).
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

from srtn.config.tile import TileConfig
from srtn.data.regions import RegionMerger, process_region
from srtn.data.tile_slide import SlidePlan
from srtn.runtime import connected_ray

__all__ = ["region_slots", "run_region_tasks"]

_REMOTE_REGION: dict[float, Any] = {}  # process_region as a Ray task, per CPUs a task asks


def region_slots(cfg: TileConfig) -> int:
    """How many region tasks can run at once: the cluster's CPUs over a task's (1 without Ray)."""
    ray = connected_ray()
    if ray is None:
        return 1
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cfg.execution.num_cpus_per_task))


class _Wave:
    """One wave's regions, shared by the slide task and its Ray tasks: taken in region order by whichever side
    is free; every result goes through one queue to the merge thread, the only writer of the slide's files."""

    def __init__(self, items: list[Mapping[str, Any]], merge: Callable[[Mapping[str, Any]], None]) -> None:
        self.n, self.merge = len(items), merge
        self._pending, self._lock, self.stop = collections.deque(items), threading.Lock(), threading.Event()
        self.done: queue.Queue[dict[str, Any] | None] = queue.Queue()  # None: no more results will come
        self.results: list[dict[str, Any]] = []
        self.failure: list[BaseException] = []

    def take(self) -> Mapping[str, Any] | None:
        """The next region, or None when all are taken or the wave stopped."""
        with self._lock:
            return self._pending.popleft() if self._pending and not self.stop.is_set() else None

    def _fail(self, exc: BaseException) -> None:  # re-raised in the slide task's thread
        self.failure.append(exc)
        self.stop.set()

    def dispatch(self, ray: Any, remote: Any, in_flight: int, cfg: TileConfig, group: str, plan: SlidePlan) -> None:
        """Keep `in_flight` Ray tasks running, each on the next region; a task whose worker died is a failed
        region (`process_region` itself never raises)."""
        try:
            cfg_ref, plan_ref, running = ray.put(cfg), ray.put(plan), {}
            while True:
                while len(running) < in_flight and (it := self.take()) is not None:
                    running[remote.remote(it, cfg=cfg_ref, group=group, plan=plan_ref)] = it
                if not running:
                    return
                (ref,), _ = ray.wait(list(running), num_returns=1)
                it = running.pop(ref)
                try:
                    self.done.put(ray.get(ref))
                except Exception as exc:
                    self.done.put({"source_id": it["source_id"], "region": int(it["region"]), "error": repr(exc)})
        except BaseException as exc:
            self._fail(exc)

    def merge_all(self) -> None:
        try:
            while len(self.results) < self.n and (r := self.done.get()) is not None:
                self.results.append(r)
                if r.get("error"):  # the slide fails with it: no region starts after a failed one
                    self.stop.set()
                self.merge(r)
        except BaseException as exc:
            self._fail(exc)


def run_region_tasks(
    items: list[Mapping[str, Any]],
    *,
    cfg: TileConfig,
    group: str,
    plan: SlidePlan,
    merger: RegionMerger | None = None,
    slots: int | None = None,
) -> list[dict[str, Any]]:
    """One wave of a slide's regions (see the module docstring); each result goes to `merger` as soon as it
    is in. `slots`: `region_slots(cfg)` unless given. Returns the results in region order; after a failed
    region (the slide fails with it) no other region starts."""
    merge = merger.add if merger is not None else (lambda r: None)
    ray = connected_ray()
    if ray is None:
        results = []
        for it in items:
            results.append(process_region(it, cfg=cfg, group=group, plan=plan))
            merge(results[-1])
            if results[-1].get("error"):  # the slide fails with it: the regions after it are not cut
                break
        return results
    cpus = cfg.execution.num_cpus_per_task
    if cpus not in _REMOTE_REGION:
        _REMOTE_REGION[cpus] = ray.remote(process_region).options(num_cpus=cpus)
    in_flight = max(0, min(len(items), slots or region_slots(cfg)) - 1)  # Ray tasks beside this one
    wave = _Wave(items, merge)
    merging = threading.Thread(target=wave.merge_all, name="srtn-region-merge", daemon=True)
    dispatching = threading.Thread(
        target=wave.dispatch,
        args=(ray, _REMOTE_REGION[cpus], in_flight, cfg, group, plan),
        name="srtn-region-dispatch",
        daemon=True,
    )
    merging.start()
    if in_flight:
        dispatching.start()
    cut = False
    try:
        while (it := wave.take()) is not None:
            wave.done.put(process_region(it, cfg=cfg, group=group, plan=plan))
        cut = True
    finally:
        if not cut:  # interrupted: no new regions; those running finish, then the threads end
            wave.stop.set()
        if in_flight:
            dispatching.join()
        wave.done.put(None)  # every result is queued before this, so the merge thread ends after the last
        merging.join()
    if wave.failure:
        raise wave.failure[0]
    return sorted(wave.results, key=lambda r: int(r["region"]))
