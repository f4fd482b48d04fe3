"""Small helpers shared by benchmarks: peak memory and CPU of a process tree, markdown tables.

`run_measured(cmd)` starts a command and samples it and all its descendants (a Ray driver's
gcs_server, raylet and workers included) every `interval` seconds:

- memory: the sum over the tree of PSS (proportional set size, from /proc/PID/smaps_rollup), so pages
  shared between processes (Ray's shared-memory object store, shared libraries) count once in
  total rather than once per process; the plain RSS sum is reported next to it for reference (it
  overcounts shared pages);
- CPU: user+system seconds of every process seen, at its last sample (a process's last fraction of a
  sample period before it exits is lost, so this slightly undercounts).

A sampler reads only /proc, never attaches to the processes, and runs in the calling process (not
in the measured tree).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RESULT_MARKER",
    "Measured",
    "TreeSampler",
    "TreeStats",
    "environment",
    "markdown_table",
    "run_measured",
    "save_result",
]

RESULT_MARKER = "BENCH_RESULT "  # a worker prints one line `BENCH_RESULT {json}` for `run_measured`
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Direct children of `pid` from /proc/PID/task/*/children (Linux 3.5+)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    out.extend(int(c) for c in fh.read().split())
            except OSError:
                continue
    except OSError:
        pass
    return out


def _tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(_children(pid))
    return pids


def _memory_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) in KiB from smaps_rollup; None if the process is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except (OSError, ValueError):
        try:  # no smaps_rollup (old kernel): RSS for both, an overcount
            with open(f"/proc/{pid}/statm") as fh:
                rss = pss = int(fh.read().split()[1]) * _PAGE // 1024
        except (OSError, ValueError):
            return None
    return rss, pss


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class TreeStats:
    """What a `TreeSampler` saw."""

    peak_pss_mib: float = 0.0
    peak_rss_mib: float = 0.0
    peak_procs: int = 0
    cpu_s: float = 0.0
    cpu_by_role: dict[str, float] = field(default_factory=dict)  # root, ray workers, ray internal actors, other
    samples: int = 0
    memory_samples: int = 0  # samples that read PSS/RSS (`TreeSampler.MEMORY_SHARE`)
    history: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (time.time(), CPU-s by role)

    def cpu_between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds by role spent between two `time.time()` instants (to sample resolution)."""

        def at(t: float) -> dict[str, float]:
            before = [h for ts, h in self.history if ts <= t]
            return before[-1] if before else {}

        a, b = at(t0), at(t1)
        return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in b}


class TreeSampler:
    """Samples a process tree's CPU time every `interval` and its summed PSS/RSS as often as `MEMORY_SHARE` allows,
    in a background thread.

    Reading PSS (`smaps_rollup`) walks each process's page tables under its memory-map lock: for a `srtn tile`
    tree (10 processes, 1.4 GB) about 38 ms of CPU per sample. Read every 0.2 s it took 2 CPU-s of a 15 s run on
    2 cores and made the run 1.4-2.9 s slower (3 interleaved pairs), and only where the sampler shares the
    measured cores: a run pinned to one core left it the other. So memory is read at most `MEMORY_SHARE` of
    one core's time (a heavy tree about every 1.3 s; a light one, a Pool's, every `interval`); CPU time, cheap
    to read, every `interval`."""

    MEMORY_SHARE = 0.03

    def __init__(self, root_pid: int, interval: float = 0.2) -> None:
        self.root_pid, self.interval = root_pid, interval
        self.stats = TreeStats()
        self._cpu: dict[tuple[int, str], float] = {}
        self._role: dict[tuple[int, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _start_time(self, pid: int) -> str:  # (pid, start time) names a process even if pids are reused
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            return "?"

    def _role_of(self, pid: int) -> str:
        if pid == self.root_pid:
            return "root"
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read(64)
        except OSError:
            return "other"
        if cmd.startswith(b"ray::_") and b"Actor" in cmd.split(b"\0")[0]:  # Ray Data's _StatsActor, ...
            return "ray internal actors"
        return "ray workers" if cmd.startswith(b"ray::") else "other"

    def sample(self, *, memory: bool = True) -> None:
        rss = pss = procs = 0
        for pid in _tree(self.root_pid):
            cpu = _cpu_seconds(pid)
            if cpu is None:
                continue
            procs += 1
            key = (pid, self._start_time(pid))
            self._cpu[key] = cpu
            if self._role.get(key) != "ray internal actors":  # Ray workers rename themselves per task
                self._role[key] = self._role_of(pid)
            mem = _memory_kib(pid) if memory else None
            if mem is not None:
                rss, pss = rss + mem[0], pss + mem[1]
        s = self.stats
        if memory:
            s.peak_rss_mib = max(s.peak_rss_mib, rss / 1024)
            s.peak_pss_mib = max(s.peak_pss_mib, pss / 1024)
            s.memory_samples += 1
        s.peak_procs = max(s.peak_procs, procs)
        s.cpu_s = sum(self._cpu.values())
        roles: dict[str, float] = {}
        for key, cpu in self._cpu.items():
            roles[self._role[key]] = roles.get(self._role[key], 0.0) + cpu
        s.cpu_by_role = roles
        s.history.append((time.time(), roles))
        s.samples += 1

    def _run(self) -> None:
        next_memory = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_memory:
                spent = time.thread_time()
                self.sample(memory=True)
                spent = time.thread_time() - spent
                next_memory = time.monotonic() + max(self.interval, spent / self.MEMORY_SHARE)
            else:
                self.sample(memory=False)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Measured:
    """A finished command: exit code, wall time, tree stats and the worker's JSON result (if any)."""

    returncode: int
    wall_s: float
    stats: TreeStats
    result: dict[str, Any] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""


def run_measured(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, interval: float = 0.2, timeout: float | None = None
) -> Measured:
    """Run `cmd` to completion while sampling its process tree; parse its `BENCH_RESULT` line."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with TreeSampler(proc.pid, interval) as sampler:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
    return Measured(proc.returncode, wall, sampler.stats, result, stdout, stderr)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; `align` is one character per column: l, r or c (default: l then r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = (
    "torch",
    "ray",
    "numpy",
    "pyarrow",
    "opencv-python-headless",
    "openslide-python",
    "openslide-bin",
    "tifffile",
    "imagecodecs",
    "mlflow",
)


_TOUCH = (
    "import time, numpy\n"
    "t = time.perf_counter(); a = numpy.ones(512 << 20, numpy.uint8); s = time.perf_counter() - t\n"
    "print(a.nbytes / s / 1e9)"
)


def fresh_memory_gb_s() -> float | None:
    """How fast a new process gets fresh memory: 512 MiB allocated and written once, in a child process (GB/s).
    A VM that hands free pages back to its host (virtio-balloon free-page reporting; DAMON reclaim) pays a host
    fault for each page it gets again: on the 2-core VM of 2026-12-03, 0.07-0.15 GB/s once memory had been free
    for 3 s or more, 3.1 GB/s when another process had freed it within a second; there every method ran about
    twice as slow as in the runs of 2026-12-02 and each GB of a run's peak memory cost about 10 s. Runs on
    machines whose figure differs are not comparable."""
    try:
        out = subprocess.run([sys.executable, "-c", _TOUCH], capture_output=True, text=True, timeout=120)
        return round(float(out.stdout.strip()), 2)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """What a result was measured with: git commit (`-dirty` with uncommitted changes), Python and package
    versions, CPUs, load average, and how fast fresh memory comes (`fresh_memory_gb_s`)."""
    import platform
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        run = {"cwd": REPO, "capture_output": True, "text": True, "timeout": 10}
        sha = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()  # type: ignore[call-overload]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()  # type: ignore[call-overload]
    except OSError:
        sha, dirty = "", ""
    return {
        "git_commit": sha + ("-dirty" if dirty else ""),
        "python": platform.python_version(),
        "packages": {p: version(p) for p in PACKAGES},
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_avg": os.getloadavg(),
        "fresh_memory_gb_s": fresh_memory_gb_s(),
    }


def save_result(result: dict[str, Any], stem: str, *, folder: str | os.PathLike[str] | None = None) -> str:
    """`<folder or benchmarks/results>/<stem>-<UTC time>.json` with `environment()` (unless the result has
    one already, taken when the run began); returns its path."""
    folder = os.fspath(folder) if folder else os.path.join(REPO, "benchmarks", "results")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json")
    with open(path, "w") as f:
        json.dump({"environment": result.get("environment") or environment(), **result}, f, indent=2)
    return path
