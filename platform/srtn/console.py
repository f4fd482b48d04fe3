"""The console is the user's: a header per stage, a bar per long loop, a line per epoch, closing tables.

Ray, Ray Data, Ray Train and MLflow log a great deal at INFO (execution plans, progress dumps every few
seconds, every checkpoint and report). Their records still go to their own log files (Ray: the session's
`logs/` folder, e.g. `/tmp/ray/session_latest/logs/`, with Ray Data's in `ray-data.log` there and every
worker's output in `worker-*.out/.err`); only warnings and errors reach the console. `--verbose`, or
`SRTN_LOG_LEVEL=DEBUG` in the environment (inherited by `ray job submit` drivers), shows them all.

srtn's own loggers print plain messages at INFO; `print` is kept for a job's results (tables, paths, links).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = [
    "LOG_LEVEL_ENV",
    "bar",
    "configure",
    "is_verbose",
    "progress",
    "quiet_ray_data",
    "ray_init_options",
    "stage",
]

LOG_LEVEL_ENV = "SRTN_LOG_LEVEL"
# Loggers of libraries whose INFO lines are internals, not the user's story.
_LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "urllib3", "botocore", "filelock", "fsspec", "numexpr", "PIL")
# MLflow's warnings on every model it logs: torch's local version label (+cpu) and pickle's usual caveat.
_PACKAGING_NOTICES = ("mlflow.utils.requirements_utils", "mlflow.pytorch")
T = TypeVar("T")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (as logging's last-resort handler does), so a
    replaced stream (a test's capture, a redirect) is followed instead of written to after it closed."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _ConsoleFormatter(logging.Formatter):
    """srtn's own INFO lines as plain messages; anything else (a warning, another library's record, anything
    when verbose) with its level and logger name."""

    def __init__(self, *, verbose: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if not self.verbose and record.name.startswith("srtn") and record.levelno == logging.INFO:
            return record.getMessage()
        return super().format(record)


def is_verbose() -> bool:
    """True when the user asked for library internals (`--verbose` or `SRTN_LOG_LEVEL=DEBUG`)."""
    return os.environ.get(LOG_LEVEL_ENV, "").upper() == "DEBUG"


def configure(*, verbose: bool = False) -> None:
    """Set up the console of a job's driver once: srtn's messages at INFO on stderr, library loggers at WARNING
    (everything with `verbose`), Python's deprecation warnings from libraries hidden unless verbose.

    Sets `SRTN_LOG_LEVEL=DEBUG` with `verbose`, so processes started from here (Ray workers of a local
    instance, a job driver) see the same choice.
    """
    if verbose:
        os.environ[LOG_LEVEL_ENV] = "DEBUG"
    verbose = is_verbose()
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        root.addHandler(handler)  # on the root: records still propagate (pytest's caplog sees them too)
    handler.setFormatter(_ConsoleFormatter(verbose=verbose))
    logging.getLogger("srtn").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in _PACKAGING_NOTICES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not verbose:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per artifact download
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level on import
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)


def ray_init_options() -> dict[str, Any]:
    """`ray.init` keywords for the console: Ray's own driver logging at WARNING, and the output of tasks, actors
    and Train workers left in their log files instead of streamed to the driver (both shown when verbose)."""
    verbose = is_verbose()
    return {"logging_level": "INFO" if verbose else "WARNING", "configure_logging": True, "log_to_driver": verbose}


def quiet_ray_data() -> None:
    """Ray Data's console: no progress bars or periodic progress dumps, no execution-plan INFO lines, unless
    verbose (its file log, `ray-data.log` in the Ray session's logs, keeps everything). Call in the driver
    after `ray.init`, before a dataset executes; srtn shows its own bar over slides instead."""
    import ray.data

    if is_verbose():
        return
    from ray.util.debug import log_once

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    log_once("ray_data_progress_manager_disabled")  # Ray Data warns once that its bars are off: we turned them off
    if hasattr(ctx, "enable_operator_progress_bars"):
        ctx.enable_operator_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def stage(title: str) -> None:
    """A stage header on stdout, e.g. `== 2/5 Train SRTN ==`."""
    print(f"\n== {title} ==", flush=True)


def _columns(stream: Any) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def bar(*, total: int | None, desc: str, unit: str, disable: bool = False, iterable: Iterable[T] | None = None) -> Any:
    """A progress bar on stderr (tqdm), advanced by `update(n)` or by iterating it: redrawn in place on a
    terminal, a line every 30 s in a log file (a submitted job's logs)."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    sized = interactive and _columns(sys.stderr) > 0  # a pseudo-terminal of width 0 (`script`, some CI) drew nothing
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=sized,
        ncols=None if sized else 100,
        nrows=None if sized else 20,  # tqdm hides bars below a screen height it reads as 0
        mininterval=0.5 if interactive else 30.0,
        disable=disable,
        leave=True,
    )


def progress(items: Iterable[T], *, total: int | None, desc: str, unit: str) -> Iterator[T]:
    """A progress bar over `items` (`bar`), hidden for a single item."""
    yield from bar(iterable=items, total=total, desc=desc, unit=unit, disable=total is not None and total <= 1)
