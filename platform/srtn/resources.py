"""The one resource check that training, tuning and prediction run on the driver before they start Ray work.

A Ray job whose actors or workers cannot all be placed does not fail: it waits forever. So each job states
what it holds at once (`need`, e.g. Train workers plus the CPUs Ray Data's tasks need beside them) and
`check_fits` compares it with the cluster, raising a `ResourceError` that says what was asked, what there is,
and which keys to lower.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping

from srtn.errors import ResourceError

__all__ = ["check_fits", "cluster_resources", "describe", "how_many_fit"]


def cluster_resources() -> dict[str, float]:
    """The connected Ray cluster's total resources (`ray.cluster_resources()`)."""
    import ray

    return dict(ray.cluster_resources())


def how_many_fit(need: Mapping[str, float], have: Mapping[str, float]) -> int:
    """How many units of `need` fit in `have` at once (0: not even one)."""
    counts = [math.floor(have.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(counts) if counts else sys.maxsize


def describe(res: Mapping[str, float], keys: Iterable[str] = ()) -> str:
    """`2 CPU, 0 GPU`: the amounts of CPU and of every key in `keys` (0 where `res` has none)."""
    return ", ".join(f"{res.get(k, 0.0):g} {k}" for k in sorted({"CPU", *keys}))


def check_fits(
    need: Mapping[str, float],
    *,
    what: str,
    hint: str,
    have: Mapping[str, float] | None = None,
) -> int:
    """How many units of `need` fit the cluster (`have`, default the connected one); a `ResourceError` saying
    `what` needs `need`, what the cluster has and `hint` (the keys to lower) when not even one does."""
    have = cluster_resources() if have is None else have
    fits = how_many_fit(need, have)
    if fits < 1:
        raise ResourceError(f"{what} needs {describe(need, need)}; the cluster has {describe(have, need)}: {hint}")
    return fits
