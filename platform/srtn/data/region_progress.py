"""A progress bar for slides cut by regions: the driver's view into work that is one Ray Data item.

A slide cut whole is one item of the tiling dataset, so the slide bar (`srtn.console.progress`) moves once,
when the slide is done: minutes of a still console for one gigapixel slide. While a config may cut slides by
regions (`regions.regions_possible`), the driver starts one small actor, `RegionProgress` (no CPU), and hands
it to the slide tasks; they tell it, fire and forget, how many regions a slide has and, as each is merged,
how many are merged and how many tiles kept. A thread of the driver asks it once a second and draws a second
bar from it: regions merged of those known so far, tiles kept. A config that never cuts by regions (a cap no
larger than a region: the default) starts nothing. Progress is never worth a slide: a failed call is ignored.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from srtn.config.tile import TileConfig

# Nothing of the tiling stack at import: the actor's worker imports this module, and every import there is
# start-up time taken from the slide's region tasks (the tiling stack took 0.6 s).

__all__ = ["RegionProgress", "region_progress", "teller"]

POLL_S = 1.0


class RegionProgress:
    """Regions merged, regions known and tiles kept, per slide (the actor's class; plain Python too)."""

    def __init__(self) -> None:
        self._slides: dict[str, list[int]] = {}  # source id -> [merged, regions, kept]

    def started(self, source_id: str, regions: int) -> None:
        self._slides[source_id] = [0, regions, 0]

    def merged(self, source_id: str, merged: int, kept: int) -> None:
        slide = self._slides.setdefault(source_id, [0, merged, 0])
        slide[0], slide[2] = max(slide[0], merged), max(slide[2], kept)

    def finished(self, source_id: str) -> None:
        """The slide is done or failed: its later regions will not run (under a cap, a wave that was not needed)."""
        slide = self._slides.setdefault(source_id, [0, 0, 0])
        slide[1] = slide[0]

    def snapshot(self) -> dict[str, int]:
        merged, regions, kept = (sum(s[i] for s in self._slides.values()) for i in range(3))
        return {"slides": len(self._slides), "merged": merged, "regions": regions, "kept": kept}


def teller(progress: Any, source_id: str) -> Callable[..., None]:
    """`tell(method, *args, wait=False)`: call `progress.<method>(source_id, *args)` on the actor (or a plain
    `RegionProgress`), never raising; a no-op when `progress` is None. Not waited for unless `wait` (an actor
    runs one caller's calls in order, so a waited call means every earlier one has been counted)."""

    def tell(method: str, *args: Any, wait: bool = False) -> None:
        if progress is None:
            return
        with contextlib.suppress(Exception):
            call = getattr(progress, method)
            if not hasattr(call, "remote"):
                call(source_id, *args)
                return
            ref = call.remote(source_id, *args)
            if wait:
                import ray

                ray.get(ref, timeout=POLL_S * 5)

    return tell


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


def _poll(ray: Any, actor: Any, bar: _Bar, stop: threading.Event) -> None:
    while not stop.wait(POLL_S):
        with contextlib.suppress(Exception):
            bar.show(ray.get(actor.snapshot.remote(), timeout=POLL_S * 5))


@contextlib.contextmanager
def region_progress(cfg: TileConfig) -> Iterator[Any]:
    """While slides are tiled: the progress actor to hand to the slide tasks (None without Ray, or when this
    config cuts no slide by regions), and the driver's bar drawn from it; the bar's last line and the actor's
    end on exit."""
    from srtn.data.region_tasks import region_slots
    from srtn.data.regions import regions_possible
    from srtn.runtime import connected_ray

    ray = connected_ray()
    if ray is None or not regions_possible(cfg, slots=region_slots(cfg)):
        yield None
        return
    actor = ray.remote(num_cpus=0)(RegionProgress).remote()
    bar, stop = _Bar(), threading.Event()
    thread = threading.Thread(target=_poll, args=(ray, actor, bar, stop), name="srtn-region-progress", daemon=True)
    thread.start()
    try:
        yield actor
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):
            bar.show(ray.get(actor.snapshot.remote(), timeout=POLL_S * 5))
        bar.close()
        with contextlib.suppress(Exception):
            ray.kill(actor)
