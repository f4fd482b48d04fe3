"""A progress bar for slides cut by regions: the driver's view into work that is one Ray Data item.

A slide cut whole is one item of the tiling dataset, so the slide bar (`srtn.console.progress`) moves once,
when the slide is done: minutes of a still console for one gigapixel slide. While a config may cut slides by
regions (`regions.regions_possible`), each slide task puts its slide's state (regions merged, regions known,
tiles kept) under one key of Ray's internal key-value store (the GCS's, which Ray's own libraries use for
such small shared state) as it starts and as each region is merged, and a thread of the driver reads those
keys once a second and draws a second bar from them; the keys are deleted when the run ends. A config that
never cuts by regions (a cap no larger than a region: the default) does nothing of this. Progress is never
worth a slide: a failed call is ignored, and a Ray without these functions draws no region bar.

Not an actor: an actor is a worker process of its own, and on 2 CPUs its start (Ray, and the modules every
worker of a data job preloads) took 1.2 CPU-s while the slide was being cut; one 20k slide cut whole on 2
CPUs took 12.7 s with it and 11.3 s with the KV store (`srtn tile` end to end, medians of 10 interleaved pairs).
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from srtn.config.tile import TileConfig

__all__ = ["ProgressRef", "RegionProgress", "read_progress", "region_progress", "teller"]

POLL_S = 1.0
_NAMESPACE = "srtn"  # the internal KV namespace of srtn's keys


class RegionProgress:
    """Regions merged, regions known and tiles kept, summed over slides (what the bar shows)."""

    def __init__(self) -> None:
        self._slides: dict[str, tuple[int, int, int]] = {}  # source id -> (merged, regions, kept)

    def update(self, source_id: str, merged: int, regions: int, kept: int) -> None:
        self._slides[source_id] = (merged, regions, kept)

    def snapshot(self) -> dict[str, int]:
        merged, regions, kept = (sum(s[i] for s in self._slides.values()) for i in range(3))
        return {"slides": len(self._slides), "merged": merged, "regions": regions, "kept": kept}


@dataclass(frozen=True)
class ProgressRef:
    """Where a run's slide tasks put their progress: the internal KV keys `<prefix><source id>`."""

    prefix: str


def _kv() -> Any:
    """Ray's internal KV functions (`ray.experimental.internal_kv`) when connected, else None (never imports Ray)."""
    from srtn.runtime import connected_ray

    if connected_ray() is None:
        return None
    try:
        from ray.experimental import internal_kv as kv
    except ImportError:
        return None
    names = (
        "_internal_kv_initialized",
        "_internal_kv_put",
        "_internal_kv_get",
        "_internal_kv_list",
        "_internal_kv_del",
    )
    if not all(callable(getattr(kv, n, None)) for n in names):
        return None
    return kv if kv._internal_kv_initialized() else None


class _Teller:
    """One slide's state, sent whole at every call (to a `ProgressRef`'s key, or a plain `RegionProgress`)."""

    def __init__(self, progress: Any, source_id: str) -> None:
        self.progress, self.source_id = progress, source_id
        self.merged, self.regions, self.kept, self.final = 0, 0, 0, False

    def __call__(self, method: str, *args: Any) -> None:
        if self.progress is None:
            return
        if method == "started":
            (self.regions,) = args
        elif method == "merged":
            self.merged, self.kept = args
        elif method == "finished":  # done or failed: its later regions will not run (a wave not needed)
            self.regions, self.final = self.merged, True
        with contextlib.suppress(Exception):
            self._send()

    def _send(self) -> None:
        state = (self.merged, self.regions, self.kept)
        if not isinstance(self.progress, ProgressRef):
            self.progress.update(self.source_id, *state)
            return
        kv = _kv()
        if kv is not None:  # a put returns once stored: the driver reads it before the slide's record
            key, value = self.progress.prefix + self.source_id, json.dumps([*state, self.final])
            kv._internal_kv_put(key, value, True, namespace=_NAMESPACE)


def teller(progress: Any, source_id: str) -> _Teller:
    """`tell(method, *args)` for one slide: `started(regions)`, `merged(merged, kept)`, `finished()`; each sends
    the slide's whole state to `progress` (a `ProgressRef`, a plain `RegionProgress`, or None: a no-op), so a
    lost call loses nothing; never raises."""
    return _Teller(progress, source_id)


def read_progress(ref: ProgressRef, into: RegionProgress, final: set[str]) -> RegionProgress:
    """`into` updated with the slides' states under `ref`; slides in `final` (updated: those that have said
    `finished`) are not read again."""
    kv = _kv()
    if kv is None:
        return into
    for key in kv._internal_kv_list(ref.prefix, namespace=_NAMESPACE):
        source_id = key.decode()[len(ref.prefix) :]
        if source_id in final:
            continue
        value = kv._internal_kv_get(key, namespace=_NAMESPACE)
        if value:
            merged, regions, kept, done = json.loads(value)
            into.update(source_id, merged, regions, kept)
            if done:
                final.add(source_id)
    return into


class _Bar:
    """The region bar, drawn only once some slide has regions."""

    def __init__(self) -> None:
        self._bar: Any = None

    def show(self, snap: dict[str, int]) -> None:
        from srtn.console import bar

        if not snap["regions"]:
            return
        if self._bar is None:
            self._bar = bar(total=snap["regions"], desc="regions", unit="region")
        self._bar.total = snap["regions"]
        self._bar.set_postfix_str(f"{snap['kept']} tiles kept", refresh=False)
        self._bar.update(snap["merged"] - self._bar.n)  # redrawn at the bar's own pace (30 s in a log file)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Poller(threading.Thread):
    """The driver's thread: reads the slides' states once a second and draws the bar."""

    def __init__(self, ref: ProgressRef) -> None:
        super().__init__(name="srtn-region-progress", daemon=True)
        self.ref, self.bar, self.stop = ref, _Bar(), threading.Event()
        self.progress, self.final = RegionProgress(), set[str]()

    def run(self) -> None:
        while not self.stop.wait(POLL_S):
            self.show()

    def show(self) -> None:
        with contextlib.suppress(Exception):
            self.bar.show(read_progress(self.ref, self.progress, self.final).snapshot())


@contextlib.contextmanager
def region_progress(cfg: TileConfig) -> Iterator[ProgressRef | None]:
    """While slides are tiled: the `ProgressRef` to hand to the slide tasks (None without Ray, or when this
    config cuts no slide by regions), and the driver's bar drawn from it; the bar's last line on exit, and
    the run's keys deleted."""
    from srtn.data.region_tasks import region_slots
    from srtn.data.regions import regions_possible

    kv = _kv()
    if kv is None or not regions_possible(cfg, slots=region_slots(cfg)):
        yield None
        return
    ref = ProgressRef(f"region-progress/{uuid.uuid4().hex}/")
    poller = _Poller(ref)
    poller.start()
    try:
        yield ref
    finally:
        poller.stop.set()
        poller.join()
        poller.show()
        poller.bar.close()
        with contextlib.suppress(Exception):
            kv._internal_kv_del(ref.prefix, del_by_prefix=True, namespace=_NAMESPACE)
