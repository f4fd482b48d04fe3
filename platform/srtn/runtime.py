"""Ray start-up in one place: embedded local instance by default, a cluster when RAY_ADDRESS is set."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["init_ray"]


def init_ray(**kwargs: Any) -> None:
    """Connect to Ray once; a no-op when already connected (tests, Tune trials, job drivers).

    No `RAY_ADDRESS` means a local instance on this machine (the embedded default).
    """
    import ray

    if ray.is_initialized():
        return
    kwargs.setdefault("configure_logging", True)
    kwargs.setdefault("logging_level", "WARNING")
    if not os.environ.get("RAY_ADDRESS"):
        kwargs.setdefault("include_dashboard", False)
    ray.init(**kwargs)
