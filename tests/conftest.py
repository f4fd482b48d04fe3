"""Shared fixtures: one real local Ray instance per session, real fixture paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
OPENSLIDE_FIXTURES = FIXTURES / "openslide"


@pytest.fixture(scope="session")
def ray_session():
    """Start Ray once per test session (2 CPUs, as on CI); tests share it."""
    import ray

    os.environ.setdefault("RAY_ENABLE_RECORD_ACTOR_TASK_LOGGING", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def openslide_fixtures() -> Path:
    if not OPENSLIDE_FIXTURES.is_dir():
        pytest.fail(f"shared OpenSlide fixtures not found at {OPENSLIDE_FIXTURES}")
    return OPENSLIDE_FIXTURES
