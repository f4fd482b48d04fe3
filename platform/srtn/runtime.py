"""Ray start-up in one place: embedded local instance by default, a cluster when RAY_ADDRESS is set.

Two things every Ray worker must share with the driver, wherever it runs:

- **The srtn package.** A job submitted with `ray job submit --working-dir . -- python jobs/train.py` brings
  the source along, and `jobs/*.py` put `<working dir>/platform` on the *driver's* `sys.path`; but Ray puts
  only the working dir itself on the workers' path, so tasks, actors and Train workers would fail to
  unpickle anything of srtn (or silently use another copy installed on the nodes). When the driver's srtn is
  a source tree rather than an installed package, `init_ray` ships that very folder to the workers as
  `runtime_env={"py_modules": [".../platform/srtn"]}`: Ray zips it once per content hash into the cluster's
  object store, every node unpacks it, and it comes first on the workers' `PYTHONPATH`. A job-level
  runtime env (the working dir, `env_vars` from `--runtime-env-json`) merges with it key by key. srtn
  installed in site-packages (the Docker image) is taken as installed on every node and not shipped; a local
  instance on this machine needs no shipping when the environment has srtn installed (editable included).
- **Storage settings.** Workers of a cluster get their environment from `ray start`, not from the driver:
  with `RAY_ADDRESS=... AWS_ENDPOINT_URL=... srtn tile`, the workers would read S3 from AWS itself. So when
  connecting to a cluster, the storage variables the driver has (`FORWARDED_ENV`) go to all the job's
  workers as runtime-env `env_vars`, except those the job's own runtime env sets already. They are then
  part of the job's config on the cluster (readable by whoever may use the cluster; token auth guards
  it); nodes that have their own credentials (an IAM role, pod env) need none in the driver's environment.
"""

from __future__ import annotations

import json
import logging
import os
import site
import sys
import sysconfig
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "FORWARDED_ENV",
    "connected_ray",
    "current_node_id",
    "init_ray",
    "shutdown_ray",
    "started_here",
    "worker_runtime_env",
]

logger = logging.getLogger(__name__)

# What srtn.storage reads: where S3 is and who we are there.
FORWARDED_ENV: tuple[str, ...] = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a submitted job's driver
_STARTED: dict[str, Any] = {}  # the local instance init_ray started here: node id, dashboard, keywords


def _package_dir() -> Path:
    import srtn

    return Path(srtn.__file__).resolve().parent


def _site_dirs() -> list[Path]:
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [Path(d).resolve() for d in dirs]


def _installed_in_site_packages(pkg: Path) -> bool:
    return any(pkg.is_relative_to(d) for d in _site_dirs())


def _editable_checkout_of(pkg: Path) -> bool:
    """True when this environment has srtn installed in editable mode from the checkout that holds `pkg`
    (then any process of the environment imports this same source).

    Every `srtn` distribution on the path is asked, not only the first: with `platform/` first on
    `sys.path` (as `jobs/*.py` put it), a leftover `platform/srtn.egg-info` from an old build is found
    first and has no `direct_url.json`; asking it alone shipped srtn to a local instance for nothing.
    """
    for dist in metadata.distributions(name="srtn"):
        text = dist.read_text("direct_url.json")
        if not text:
            continue
        info = json.loads(text)
        url = info.get("url", "")
        if not info.get("dir_info", {}).get("editable") or not url.startswith("file://"):
            continue
        root = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).resolve()
        if pkg.is_relative_to(root):
            return True
    return False


def _job_runtime_env() -> dict[str, Any]:
    """The runtime env of the submitted job this driver runs in ({} outside a job)."""
    try:
        return dict(json.loads(os.environ.get(_JOB_CONFIG_ENV) or "{}").get("runtime_env") or {})
    except (ValueError, AttributeError):
        return {}


def worker_runtime_env(*, cluster: bool) -> dict[str, Any]:
    """What `init_ray` adds to the job's runtime env so that workers import srtn and reach storage like the
    driver: `py_modules` (this srtn source tree) and storage `env_vars` (see the module docstring)."""
    job = _job_runtime_env()
    env: dict[str, Any] = {}
    pkg = _package_dir()
    ship = not _installed_in_site_packages(pkg) and (cluster or not _editable_checkout_of(pkg))
    if ship and "py_modules" in job:
        logger.warning("the job sets py_modules itself; srtn from %s is not added: include it there", pkg)
    elif ship:
        env["py_modules"] = [str(pkg)]
    if cluster:
        job_vars = job.get("env_vars") or {}
        forwarded = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k) and k not in job_vars}
        if forwarded:
            env["env_vars"] = forwarded
    return env


def connected_ray() -> Any:
    """The `ray` module when this process is connected to Ray, else None; never imports or starts Ray (a
    command or a Ray-free caller that needs none never pays for it)."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def current_node_id() -> str | None:
    """The Ray node this process runs on; None when not connected to Ray."""
    ray = connected_ray()
    return None if ray is None else ray.get_runtime_context().get_node_id()


def started_here() -> bool:
    """True when Ray is connected to the local instance that `init_ray` started in this process (so its
    workers are this process's to warm, `srtn.data.per_item`)."""
    import ray

    return bool(_STARTED) and ray.is_initialized() and _STARTED["node"] == ray.get_runtime_context().get_node_id()


_NODE_POLL_S = 0.02  # how often a local start asks the GCS whether its raylet has registered


@contextmanager
def _lean_local_start(*, dashboard: bool, log_to_driver: bool) -> Iterator[None]:
    """Parts of Ray's local start that do nothing for srtn, cut for the `ray.init` inside this block.

    - The driver asks the GCS for its new raylet, and Ray's C++ accessor sleeps a full second between tries;
      the raylet registers only once its Python agents are up (about 1.3 s here), so every start lost on
      average half a second to that poll. Here the GCS's node table is read every 20 ms first, so Ray's own
      call finds the node at once (and still gives Ray's error if it never comes).
    - Without the dashboard, Ray still starts its API-server process (`dashboard.py` with only the
      usage-stats module, which `ray.init` turns off) and polls until it publishes its URL: about 1 s of
      waiting and 1 CPU-s on 2 cores, for nothing a local data job reads. It is not started then.

    - Two Python head processes that serve nobody here are not started: the log monitor when worker output
      is not streamed to the driver (`log_to_driver=False`, the console's default: it tails worker log files
      only to publish them to drivers), and, without the dashboard (a data job), the autoscaler monitor (a
      local instance has a fixed size; it only feeds `ray status`). Each took about 1 CPU-s of a
      32-slide tiling job on 2 cores; their output files stay as Ray writes them for the processes it runs.

    All replace Ray internals (`ray._private`) only where they have the shape this Ray (2.60) has; a Ray
    without them starts as usual. `benchmarks/ray_overhead.py` measures the difference.
    """
    from ray._private import node as ray_node
    from ray._private import services

    saved: list[tuple[Any, str, Any]] = []

    def replace(owner: Any, name: str, new: Any) -> None:
        if callable(getattr(owner, name, None)):
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, new)

    original_get_node = getattr(services, "get_node", None)

    def get_node(gcs_address: str, node_id: str, *args: Any, **kwargs: Any) -> Any:
        _wait_for_node(gcs_address, node_id)
        return original_get_node(gcs_address, node_id, *args, **kwargs)

    def no_api_server(self: Any, *args: Any, **kwargs: Any) -> None:
        self._webui_url = None

    def not_started(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    replace(services, "get_node", get_node)
    if not dashboard:
        replace(ray_node.Node, "start_api_server", no_api_server)
        replace(ray_node.Node, "start_monitor", not_started)
    if not log_to_driver:
        replace(ray_node.Node, "start_log_monitor", not_started)
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def _wait_for_node(gcs_address: str, node_id: str, *, timeout_s: float = 10.0) -> None:
    """Until the GCS lists `node_id` (a hex id) as a registered node, or `timeout_s`; never raises."""
    try:
        from ray._raylet import GcsClient

        client = GcsClient(address=gcs_address)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(key.hex() == node_id for key in client.get_all_node_info(timeout=5)):
                return
            time.sleep(_NODE_POLL_S)
    except Exception:  # Ray's own call, next, waits and reports
        logger.debug("fast wait for the raylet's registration not available", exc_info=True)


def init_ray(*, dashboard: bool = True, preload: Sequence[str] = (), **kwargs: Any) -> None:
    """Connect to Ray once; a no-op when already connected (tests, Tune trials, job drivers).

    No `RAY_ADDRESS` means a local instance on this machine (the embedded default), with its dashboard
    unless `dashboard=False`. Ray Train's placement-group cleaner asks the state API (served by the
    dashboard) every second whether the Train controller lives; without it each query failed ("Failed to
    query Ray Train Controller actor state") and a dead controller's placement group would never be
    freed. So Train, Tune and the default keep it; the per-item data jobs pass `dashboard=False` (its
    head processes: about 1 CPU-s at start-up, 0.05 CPU-s per second after).
    The first call of a process decides, except that a call needing the dashboard of an instance started
    here without it restarts that instance with it (earlier keywords kept; a few seconds, logged): a
    process that trains after a data job (the demo) calls `init_ray()` first. An explicit
    `include_dashboard` wins; a cluster has its own.

    The job's runtime env gets `worker_runtime_env()` merged in (a `runtime_env` passed here is kept and
    wins on conflicts). Ray's own driver logging is at WARNING unless verbose (`srtn.console`). A local
    instance starts without two of Ray's idle waits and the head processes nobody here reads
    (`_lean_local_start`); its workers import the modules in `preload` as they start, before they take
    work (Ray's `preload_python_modules`: a data job's workers import Ray Data and the item function's
    module while the driver is still starting, not in the first tasks). `preload` is not kept for a
    restart with the dashboard, and a cluster or an instance already up ignores it.
    """
    import ray

    from srtn.console import quiet_ray_data, ray_init_options

    if ray.is_initialized():
        if not (dashboard and started_here() and not _STARTED["dashboard"]):
            quiet_ray_data()
            return
        logger.info("restarting the local Ray instance with its dashboard (Ray Train needs its state API)")
        kwargs = {k: v for k, v in _STARTED["kwargs"].items() if k != "include_dashboard"} | kwargs
        ray.shutdown()
    _STARTED.clear()
    for key, value in ray_init_options().items():
        kwargs.setdefault(key, value)
    address = kwargs.get("address") or os.environ.get("RAY_ADDRESS")
    cluster = bool(address) and address != "local"
    given = dict(kwargs)
    if not cluster:
        kwargs.setdefault("include_dashboard", dashboard)
        if preload:
            system = dict(kwargs.get("_system_config") or {})
            system.setdefault("preload_python_modules", list(preload))
            kwargs["_system_config"] = system
    extra = worker_runtime_env(cluster=cluster)
    if extra:
        given_env = dict(kwargs.pop("runtime_env", None) or {})
        merged = extra | given_env
        if "env_vars" in extra and "env_vars" in given_env:
            merged["env_vars"] = extra["env_vars"] | given_env["env_vars"]
        kwargs["runtime_env"] = merged
        logger.info("Ray workers get %s", {k: (sorted(v) if k == "env_vars" else v) for k, v in extra.items()})
    if cluster:
        ray.init(**kwargs)
    else:
        streamed = bool(kwargs.get("log_to_driver", True))
        with _lean_local_start(dashboard=bool(kwargs["include_dashboard"]), log_to_driver=streamed):
            ray.init(**kwargs)
        node = ray.get_runtime_context().get_node_id()
        _STARTED.update(node=node, dashboard=bool(kwargs["include_dashboard"]), kwargs=given)
    quiet_ray_data()


def shutdown_ray() -> None:
    """Stop Ray now, rather than in Ray's exit hook, and without its slowest wait.

    Ray's `atexit` hook sleeps 0.5 s first (for log lines still in flight), then stops each head process
    with SIGTERM and up to 1 s each; the autoscaler monitor of a local instance never exits on SIGTERM, so
    every command ended with a full second of waiting for it to be SIGKILLed (measured here: 1.35 s ->
    0.35 s for `ray.shutdown`, 1.5 s off every command). The monitor of a local instance started here is
    killed first (it holds no state: the GCS has the cluster's); then `ray.shutdown()` stops the rest as
    usual. A cluster connection is only disconnected. Callers stop only what they started (`srtn.cli`).
    """
    import ray

    if not ray.is_initialized():
        return
    if started_here():
        from ray._private import ray_constants
        from ray._private import worker as ray_worker

        node = getattr(ray_worker, "_global_node", None)
        for info in getattr(node, "all_processes", {}).get(ray_constants.PROCESS_TYPE_MONITOR, []):
            info.process.kill()
    ray.shutdown()
    _STARTED.clear()
