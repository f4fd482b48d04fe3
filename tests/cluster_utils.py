"""Helpers of tests/test_cluster.py: a real multi-node Ray cluster (`ray start`), an S3 server (moto) and an
MLflow tracking server on this machine, each in its own processes and always stopped by whoever started it.
Servers listen on 127.0.0.1 and are addressed there; Ray nodes advertise the host's own address (see
`LocalCluster`).

Nothing here touches another Ray instance on the machine: a cluster lives in its own short `--temp-dir`
(so its `ray_current_cluster` address file never redirects anyone's `ray.init()`), on free ports, with its
own token (`RAY_AUTH_TOKEN`, never `~/.ray/auth_token`), and `stop()` kills only the processes it started
(the `ray start --block` processes, their descendants, and any process naming its temp dir). `ray stop`
would kill every Ray process on the machine, other people's included, so it is never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
# Set in a process only by the cluster, the jobs and the servers of these tests, never inherited from the shell.
_SCRUBBED_ENV = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "PYTHONPATH",
    "MLFLOW_TRACKING_URI",
)


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for(
    check: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
    fail_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll `check()` until it returns something truthy (returned), at most `timeout` seconds; an exception
    means "not yet", except those in `fail_on`, which end the wait at once."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except fail_on:
            raise
        except Exception as exc:  # not up yet
            last = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s" + (f" (last error: {last!r})" if last else ""))


def http_ok(url: str, *, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(headers or {})), timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError):
        return False


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray/MLflow addresses, Ray tokens, S3 settings (AWS_*) and PYTHONPATH,
    plus `extra`: what a cluster node, a server or a client of these tests starts from."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV and not k.startswith("AWS_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# --------------------------------------------------------------------------- a Python without srtn


def _site_dirs() -> list[str]:
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    seen: list[str] = []
    for d in dirs:
        if d not in seen and os.path.isdir(d):
            seen.append(d)
    return seen


def bare_python(dest: Path) -> Path:
    """A virtual environment at `dest` that sees every package of this interpreter except `srtn`.

    Its one `.pth` file adds this interpreter's site-packages folders to `sys.path`; `.pth` files inside a folder
    added that way are not processed, so the editable install's `__editable__.srtn-*.pth` (which puts the
    checkout's `platform/` on `sys.path`) is ignored; the other `.pth` files are copied over. A cluster run
    with this Python can import `srtn` only from what a job brings with it: its working directory.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True, timeout=300)
    target = Path(sysconfig.get_paths(vars={"base": str(dest), "platbase": str(dest)})["purelib"])
    target.mkdir(parents=True, exist_ok=True)
    dirs = _site_dirs()
    lines: list[str] = list(dirs)
    for d in dirs:
        for pth in sorted(Path(d).glob("*.pth")):
            text = pth.read_text(errors="replace")
            if "srtn" in pth.name.lower() or str(ROOT / "platform") in text:
                continue  # the editable install of this project
            for line in text.splitlines():
                s = line.strip()
                if not s or s.startswith("#"):
                    continue
                lines.append(s if s.startswith(("import ", "import\t")) or os.path.isabs(s) else os.path.join(d, s))
    (target / "zz_srtn_tests_parent_site.pth").write_text("\n".join(lines) + "\n")
    python = dest / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u, ray, torch; print(u.find_spec('srtn') is None)"],
        capture_output=True,
        text=True,
        timeout=300,
        env=base_env(),
        cwd=str(dest),
    )
    if probe.returncode != 0 or probe.stdout.strip() != "True":
        raise RuntimeError(f"bare Python at {dest} is unusable or still imports srtn: {probe.stdout}{probe.stderr}")
    return python


def repo_copy(dest: Path) -> Path:
    """What a job's `--working-dir` needs: platform/ (the package source), jobs/, configs/, pyproject.toml."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*.tmp")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("platform", "jobs", "configs"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


# --------------------------------------------------------------------------- processes


def _descendants(pids: Sequence[int]) -> set[int]:
    """`pids` and every process below them (from /proc, Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.add(pid)
        todo.extend(children.get(pid, []))
    return out


def _naming(marker: str) -> set[int]:
    """Processes whose command line or working directory contains `marker`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if marker in cmd or cwd.startswith(marker):
            found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def kill_processes(pids: set[int], *, grace: float = 10.0) -> None:
    """SIGTERM `pids`, SIGKILL what is left after `grace` seconds."""
    pids = {p for p in pids if p != os.getpid()}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        pids = {p for p in pids if _alive(p)}
        if not pids:
            return


def stop_process_tree(proc: subprocess.Popen[Any], *, grace: float = 10.0) -> None:
    kill_processes(_descendants([proc.pid]), grace=grace)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


# --------------------------------------------------------------------------- Ray cluster


@dataclass
class JobRun:
    submission_id: str
    returncode: int
    output: str
    seconds: float


class LocalCluster:
    """A Ray cluster of `ray start` nodes on this machine, run by `python` (e.g. `bare_python`), token auth on.

    Every node runs `ray start --block` as a child of this process (its own session), in its own temp dir, so
    the test owns it. Clients (`ray job submit`, a driver with `RAY_ADDRESS`) get `client_env()`. The dashboard
    and job API listen on 127.0.0.1 and the GCS is addressed as 127.0.0.1:port; but `ray start` replaces
    127.0.0.1 by the host's own address as the node IP (only `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` prevents
    that, and it forbids joining nodes), so nodes talk to each other through this host's own address, which
    Linux delivers over the loopback device, and the GCS and raylets bind all interfaces as Ray always does.
    """

    def __init__(self, *, python: Path, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.python = Path(python)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # short: Ray's Unix socket paths under it must stay below 108 characters
        self.temp_dir = tempfile.mkdtemp(prefix="srtn-ray-", dir="/tmp")
        self.token = os.urandom(32).hex()
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.nodes: list[subprocess.Popen[Any]] = []
        self.env = base_env(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            # the jobs' `python` is the first on PATH of `ray start` (PITFALLS.md)
            PATH=f"{self.python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # for Ray's own clients inside the cluster (Train's placement-group cleaner uses the state API): with
            # several Ray instances on one machine, their address lookup fails without it (as set by KubeRay)
            RAY_ADDRESS=f"{LOOPBACK}:{self.gcs_port}",
            **dict(env or {}),
        )

    @property
    def gcs_address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def client_env(self, **extra: str) -> dict[str, str]:
        return base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, **extra)

    def _ray(self, *args: str) -> list[str]:
        return [str(self.python), "-m", "ray.scripts.scripts", *args]

    def _start_node(self, args: list[str], name: str) -> subprocess.Popen[Any]:
        ports = [
            "--node-manager-port",
            "--object-manager-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
        ]
        cmd = self._ray(
            "start",
            "--block",
            "--disable-usage-stats",
            "--temp-dir",
            os.path.join(self.temp_dir, name),
            "--object-store-memory",
            str(200 * 1024 * 1024),
            *args,
            *[a for p in ports for a in (p, str(free_port()))],
        )
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.temp_dir, start_new_session=True
            )
        self.nodes.append(proc)
        return proc

    def _start_with_retries(
        self, args: list[str], name: str, ready: Callable[[], bool], *, timeout: float, attempts: int = 3
    ) -> None:
        """`ray start` gives a node's raylet 30 s to register with the GCS (hard-coded in Ray); a heavily loaded
        machine can miss that. Then whatever that attempt left running is killed and the node started again."""
        for attempt in range(1, attempts + 1):
            node_name = name if attempt == 1 else f"{name}-retry{attempt}"
            proc = self._start_node(args, node_name)

            def up(proc: subprocess.Popen[Any] = proc, node_name: str = node_name) -> bool:
                if proc.poll() is not None:
                    log = (self.log_dir / f"{node_name}.log").read_text(errors="replace")
                    raise _NodeStartError(f"ray start ({node_name}) exited with {proc.returncode}:\n{log[-3000:]}")
                return ready()

            try:
                wait_for(up, timeout=timeout, what=f"Ray node {node_name}", fail_on=(_NodeStartError,))
                return
            except (_NodeStartError, TimeoutError):
                kill_processes(_descendants([proc.pid]) | _naming(os.path.join(self.temp_dir, node_name)))
                self.nodes.remove(proc)
                if attempt == attempts:
                    raise

    def start_head(self, *, num_cpus: float, timeout: float = 240) -> None:
        args = [
            "--head",
            "--num-cpus",
            str(num_cpus),
            "--port",
            str(self.gcs_port),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            LOOPBACK,
            "--dashboard-port",
            str(self.dashboard_port),
            "--ray-client-server-port",
            str(free_port()),
        ]
        self._start_with_retries(args, "head", lambda: self.alive_nodes() >= 1, timeout=timeout)
        # the job API answers once the dashboard's job module is up
        wait_for(
            lambda: self.ray_cli("job", "list", "--address", self.dashboard_url, timeout=60).returncode == 0,
            timeout=timeout,
            what="Ray job API",
            interval=2,
        )

    def add_node(self, *, num_cpus: float, timeout: float = 240) -> None:
        before = self.alive_nodes()
        args = ["--address", self.gcs_address, "--num-cpus", str(num_cpus)]
        self._start_with_retries(args, f"node{len(self.nodes)}", lambda: self.alive_nodes() > before, timeout=timeout)

    def alive_nodes(self) -> int:
        """Alive nodes, from the dashboard's state API (HTTP with the token: no Ray connection here)."""
        try:
            data = self._api("/api/v0/nodes?limit=100")
        except (urllib.error.URLError, OSError, ValueError):
            return 0
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return sum(1 for n in rows if n.get("state") == "ALIVE")

    def ray_cli(
        self, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._ray(*args),
            env=dict(env or self.client_env()),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.temp_dir,
        )

    def submit(
        self,
        entrypoint: Sequence[str],
        *,
        working_dir: Path,
        runtime_env: Mapping[str, Any] | None = None,
        timeout: float = 600,
    ) -> JobRun:
        """`ray job submit --working-dir ... -- ENTRYPOINT`, waiting for the end (it exits 1 on FAILED); a job
        still running after `timeout` seconds is stopped and reported with returncode 124."""
        sid = f"srtn-test-{os.urandom(4).hex()}"
        args = [
            "job",
            "submit",
            "--address",
            self.dashboard_url,
            "--submission-id",
            sid,
            "--working-dir",
            str(working_dir),
        ]
        if runtime_env:
            args += ["--runtime-env-json", json.dumps(dict(runtime_env))]
        t0 = time.monotonic()
        try:
            done = self.ray_cli(*args, "--", *entrypoint, timeout=timeout)
            code, out = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            self.ray_cli("job", "stop", "--address", self.dashboard_url, "--no-wait", sid, timeout=60)
            partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            code, out = 124, f"{partial}\n[timed out after {timeout:.0f} s; job stopped]"
        return JobRun(sid, code, out, time.monotonic() - t0)

    def run_driver(
        self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 600
    ) -> JobRun:
        """`python ARGS` in `cwd` with the cluster's Python as a driver that connects itself (`RAY_ADDRESS` set
        to the GCS, token in its environment), as one runs a script on a head node; `env` is added to its
        environment only, not the cluster's."""
        t0 = time.monotonic()
        try:
            done = subprocess.run(
                [str(self.python), *args],
                cwd=str(cwd),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.client_env(RAY_ADDRESS=self.gcs_address, **dict(env or {})),
            )
            code, out = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            code, out = 124, f"{partial}\n[timed out after {timeout:.0f} s]"
        return JobRun("driver", code, out, time.monotonic() - t0)

    def _api(self, path: str) -> Any:
        """GET the dashboard's HTTP API with the token (no Ray connection from this process)."""
        req = urllib.request.Request(f"{self.dashboard_url}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def job_info(self, submission_id: str) -> dict[str, Any]:
        """The job's record from the job API: `status`, `message`, `driver_node_id`, `runtime_env`, ..."""
        return dict(self._api(f"/api/jobs/{submission_id}"))

    def stop(self) -> None:
        """Kill this cluster's processes only, then remove its temp dir (logs first copied to `log_dir`)."""
        pids = _descendants([p.pid for p in self.nodes]) | _naming(self.temp_dir)
        kill_processes(pids)
        for proc in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        leftovers = _naming(self.temp_dir)  # e.g. a job driver re-parented when its supervisor died
        if leftovers:
            kill_processes(leftovers, grace=5)
        for logs in Path(self.temp_dir).glob("*/session_latest/logs"):
            dest = self.log_dir / f"ray_logs_{logs.parents[1].name}"
            shutil.copytree(logs, dest, dirs_exist_ok=True, ignore_dangling_symlinks=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# --------------------------------------------------------------------------- servers


class _NodeStartError(RuntimeError):
    """`ray start` exited."""


class ServerProcess:
    """A server started as a subprocess in its own process group, stopped with everything below it."""

    def __init__(self, cmd: Sequence[str], *, log: Path, env: Mapping[str, str], cwd: Path) -> None:
        self.log = log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                list(cmd), env=dict(env), stdout=f, stderr=subprocess.STDOUT, cwd=str(cwd), start_new_session=True
            )

    def wait_until(self, check: Callable[[], Any], *, timeout: float, what: str) -> None:
        def ready() -> Any:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            return check()

        try:
            wait_for(ready, timeout=timeout, what=what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log.read_text(errors='replace')[-3000:]}") from None

    def stop(self) -> None:
        stop_process_tree(self.proc)


def start_mlflow_server(workdir: Path, *, port: int | None = None, timeout: float = 300) -> tuple[ServerProcess, str]:
    """`mlflow server` on loopback: SQLite backend, artifacts served by the server (`--serve-artifacts`)."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [
        str(mlflow_bin) if mlflow_bin.exists() else "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        f"{LOOPBACK}:{port},localhost:{port},{LOOPBACK},localhost",
    ]
    server = ServerProcess(cmd, log=workdir / "server.log", env=base_env(), cwd=workdir)
    uri = f"http://{LOOPBACK}:{port}"
    server.wait_until(lambda: http_ok(f"{uri}/health"), timeout=timeout, what="mlflow server")
    return server, uri


def start_s3_server(workdir: Path, *, timeout: float = 120) -> tuple[ServerProcess, str]:
    """moto's S3-compatible server on loopback (`moto_server -H 127.0.0.1 -p PORT`)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    moto_bin = Path(sys.executable).parent / "moto_server"
    cmd = [str(moto_bin) if moto_bin.exists() else "moto_server", "-H", LOOPBACK, "-p", str(port)]
    server = ServerProcess(cmd, log=workdir / "moto.log", env=base_env(), cwd=workdir)
    uri = f"http://{LOOPBACK}:{port}"
    server.wait_until(lambda: http_ok(f"{uri}/moto-api/"), timeout=timeout, what="moto server")
    return server, uri


@contextlib.contextmanager
def s3_bucket(workdir: Path, bucket: str, *, timeout: float = 120) -> Iterator[dict[str, Any]]:
    """A moto S3 server with one bucket, for a test module: `{"env": AWS_* variables, "client": boto3 client}`;
    stopped on exit."""
    import boto3

    server, endpoint = start_s3_server(workdir, timeout=timeout)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    env["AWS_REGION"] = "us-east-1"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")  # fmt: skip
        client.create_bucket(Bucket=bucket)
        yield {"env": env, "client": client}
    finally:
        server.stop()
