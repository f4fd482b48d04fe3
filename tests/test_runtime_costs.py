"""What `srtn.runtime.init_ray` and `srtn.data.per_item.map_items` do to cut Ray's fixed cost (the costs
themselves are measured by benchmarks/ray_overhead.py, never here): a data job's local instance starts
without the dashboard, the head processes nobody reads or Ray Data's 0.1 s scheduling wait, its workers
import Ray Data as they start and its items run in the workers Ray prestarted; a job that needs the dashboard
gets it, restarting an instance a data job started here without it, but never one started elsewhere;
the shipping decision is not fooled by a stale egg-info; a tiling worker imports no torch or MLflow.

Each Ray case runs in its own Python process: Ray is started once per process, and these tests are about
who starts it (the session fixture's instance would make every call here a no-op)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Shared by the child scripts: the driver's descendant processes from /proc (pid -> (start tick, cmdline)).
_TREE = """
import os
def tree():
    out, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as fh:
                start = int(fh.read().rsplit(")", 1)[1].split()[19])
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\\0", b" ").decode(errors="replace")
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
        out[pid] = (start, cmd)
    return out
def dashboard_heads():
    return sorted(c.split()[0] for _, c in tree().values() if c.startswith("ray-dashboard-"))
"""


def _run(code: str, tmp_path: Path) -> dict:
    """Run `code` (which prints one JSON line last) in a fresh interpreter, on a fresh local Ray."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    script = tmp_path / "child.py"
    script.write_text(_TREE + textwrap.dedent(code))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_data_job_starts_ray_without_dashboard_and_runs_items_in_prestarted_workers(tmp_path):
    """map_items starting Ray: no dashboard head processes, not even Ray's API server; every item ran in a
    worker started no later than any other worker (Ray prestarts one per CPU; without the warm-up Ray Data's
    internal actors took those and the items waited for workers started after them); the items' workers had
    no torch or MLflow."""
    out = _run(
        """
        import json, sys
        import ray
        from srtn.data.per_item import map_items

        def probe(item):
            import os, sys
            import srtn.data.tile_job  # what a tiling task imports
            with open("/proc/self/stat") as fh:
                start = int(fh.read().rsplit(")", 1)[1].split()[19])
            heavy = sorted(m for m in ("torch", "mlflow") if m in sys.modules)
            return {"i": item["i"], "pid": os.getpid(), "start": start, "heavy": heavy}

        rows = map_items(probe, [{"i": i} for i in range(4)], fn_kwargs={}, num_cpus=1, concurrency=None)

        @ray.remote(num_cpus=0)
        class Fresh:  # a worker started after the items: what did it import before its first call?
            def loaded(self):
                return "ray.data" in sys.modules

        preloaded = ray.get(Fresh.remote().loaded.remote())
        agents = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
        workers = {pid: (s, c) for pid, (s, c) in tree().items()
                   if c.startswith("ray::") and not c.startswith(agents)}
        others = [s for pid, (s, c) in workers.items() if pid not in {r["pid"] for r in rows}]
        from ray._private import node as ray_node, services, worker
        kinds = sorted(k for k, infos in worker._global_node.all_processes.items() if infos)
        node = ray_node.Node
        ours = [f.__module__ for f in (services.get_node, node.start_api_server, node.start_monitor,
                                       node.start_log_monitor)]
        print(json.dumps({"rows": rows, "others": others, "heads": dashboard_heads(),
                          "cpus": ray.cluster_resources()["CPU"], "kinds": kinds, "ours": ours,
                          "preloaded": preloaded}))
        """,
        tmp_path,
    )
    rows = out["rows"]
    assert sorted(r["i"] for r in rows) == [0, 1, 2, 3]
    assert out["heads"] == []
    # no API-server process (Ray starts one even without the dashboard), no log monitor (worker output is not
    # streamed to this driver) and no autoscaler monitor (a fixed local instance); Ray's functions are back
    assert {"dashboard", "log_monitor", "monitor"}.isdisjoint(out["kinds"]), out["kinds"]
    assert {"gcs_server", "raylet"} <= set(out["kinds"]), out["kinds"]
    assert out["ours"] == ["ray._private.services"] + ["ray._private.node"] * 3
    # the other workers: Ray Data's actors' (and any Ray started besides); none began before an item's
    assert max(r["start"] for r in rows) <= min(out["others"], default=float("inf")), out
    assert len({r["pid"] for r in rows}) <= out["cpus"]
    assert all(r["heavy"] == [] for r in rows)
    assert out["preloaded"] is True  # every worker of the instance imports Ray Data as it starts


def test_items_run_with_a_short_scheduling_wait_and_ray_data_gets_its_own_back():
    """While map_items runs, Ray Data's loop looks for finished tasks every 0.02 s, not 0.1 s (a finished item's
    CPU sat idle up to 0.3 s), without operator reservation; both are Ray's again afterwards."""
    import ray.data
    from ray.data._internal.execution import streaming_executor_state as state

    from srtn.data.per_item import _per_item_execution

    ctx = ray.data.DataContext.get_current()
    before = (state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S, ctx.op_resource_reservation_enabled)
    with _per_item_execution():
        during = (state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S, ctx.op_resource_reservation_enabled)
    assert before == (0.1, True)
    assert during == (0.02, False)
    assert (state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S, ctx.op_resource_reservation_enabled) == before


def test_a_job_that_needs_the_dashboard_gets_it_even_after_a_data_job(tmp_path):
    """init_ray() after a data job started Ray here without the dashboard restarts it with it (keeping the
    first call's num_cpus); a later data job and init_ray() keep that instance."""
    out = _run(
        """
        import json
        import ray
        from srtn.data.per_item import map_items
        from srtn.runtime import init_ray, started_here

        def node():
            return ray.get_runtime_context().get_node_id()

        init_ray(dashboard=False, num_cpus=1)  # as a data job's driver would
        rows = map_items(lambda item: {"x": item["x"] * 2}, [{"x": 1}, {"x": 2}], fn_kwargs={}, num_cpus=1,
                         concurrency=None)
        first, before, ours = node(), dashboard_heads(), started_here()
        init_ray()  # as srtn train does
        second, after = node(), dashboard_heads()
        rows += map_items(lambda item: {"x": item["x"] * 3}, [{"x": 1}], fn_kwargs={}, num_cpus=1,
                          concurrency=None)
        init_ray()
        print(json.dumps({"rows": rows, "before": before, "ours": ours, "after": after,
                          "restarted": second != first, "kept": node() == second, "still": dashboard_heads(),
                          "cpus": ray.cluster_resources()["CPU"], "here": started_here()}))
        """,
        tmp_path,
    )
    assert sorted(r["x"] for r in out["rows"]) == [2, 3, 4]
    assert out["ours"] is True and out["before"] == []
    assert out["restarted"] is True and "ray-dashboard-StateHead-0" in out["after"]
    assert out["cpus"] == 1.0
    assert out["kept"] is True and out["still"] == out["after"] and out["here"] is True


def test_a_data_job_on_an_instance_started_elsewhere_leaves_it_alone(tmp_path):
    """Ray started by someone else (a test session, a user's ray.init): map_items and init_ray() neither
    restart it nor count it as theirs to warm."""
    out = _run(
        """
        import json
        import ray
        from srtn.data.per_item import map_items
        from srtn.runtime import init_ray, started_here

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        node = ray.get_runtime_context().get_node_id()
        rows = map_items(lambda item: {"x": item["x"]}, [{"x": 5}], fn_kwargs={}, num_cpus=1, concurrency=None)
        init_ray()
        print(json.dumps({"rows": rows, "same": ray.get_runtime_context().get_node_id() == node,
                          "here": started_here(), "heads": dashboard_heads()}))
        """,
        tmp_path,
    )
    assert out == {"rows": [{"x": 5}], "same": True, "here": False, "heads": []}


def test_a_command_stops_the_ray_it_started_and_leaves_one_it_found(tmp_path):
    """`srtn tile` on a fresh process: after main() returns Ray is disconnected and every head process its
    instance had is gone, not left to Ray's exit hook; the same command in a process where Ray was already up
    leaves it up."""
    out = _run(
        f"""
        import json, os
        import ray
        import srtn.runtime
        from srtn.cli import main
        from srtn.synth.tcga import write_tcga_dataset

        slides = {str(tmp_path / "slides")!r}
        write_tcga_dataset(slides, slides=1, seed=0, width=1024, height=1024, fmt="svs")
        heads = {{}}
        real = srtn.runtime.shutdown_ray

        def spy():
            from ray._private import worker
            for kind, infos in worker._global_node.all_processes.items():
                heads.update({{kind: [i.process.pid for i in infos]}})
            real()

        srtn.runtime.shutdown_ray = spy
        config = {str(ROOT / "configs/data/tcga_kirc_seed.yaml")!r}
        args = ["tile", "--config", config, "--set", f"input={{slides}}", "--set", "max_tiles_per_slide=4"]
        first = main([*args, "--set", "output={tmp_path / "a"}"])
        up_after_first = ray.is_initialized()

        def alive(pid):
            try:
                with open(f"/proc/{{pid}}/stat") as fh:
                    return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False

        left = sorted(kind for kind, pids in heads.items() if any(alive(p) for p in pids))
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        second = main([*args, "--set", "output={tmp_path / "b"}"])
        print(json.dumps({{"codes": [first, second], "up_after_first": up_after_first, "kinds": sorted(heads),
                          "left": left, "up_after_second": ray.is_initialized()}}))
        """,
        tmp_path,
    )
    assert out["codes"] == [0, 0]
    assert out["up_after_first"] is False and {"gcs_server", "raylet"} <= set(out["kinds"]), out["kinds"]
    assert out["left"] == []
    assert out["up_after_second"] is True


def test_a_stale_egg_info_first_on_the_path_does_not_change_what_is_shipped(tmp_path):
    """jobs/*.py put platform/ first on sys.path, where an old build may have left srtn.egg-info (no
    direct_url.json): the decision must be the same as without it, locally and for a cluster."""
    shadow = tmp_path / "shadow"
    (shadow / "srtn.egg-info").mkdir(parents=True)
    (shadow / "srtn.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: srtn\nVersion: 0.0.0\n")
    code = (
        "import json, sys\n"
        "if len(sys.argv) > 1: sys.path.insert(0, sys.argv[1])\n"
        "from srtn.runtime import worker_runtime_env\n"
        "print(json.dumps([worker_runtime_env(cluster=False), worker_runtime_env(cluster=True)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    for key in [k for k in env if k.startswith("AWS_")]:
        env.pop(key)

    def decide(*extra: str) -> list:
        done = subprocess.run([sys.executable, "-c", code, *extra], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    plain, shadowed = decide(), decide(str(shadow))
    assert shadowed == plain


def test_a_tiling_driver_and_worker_import_no_torch_mlflow_or_ray():
    """What `srtn tile` imports before Ray starts, and what each slide task unpickles: no torch or MLflow
    (seconds of imports per worker for nothing), no Ray (configs are checked before Ray starts)."""
    code = (
        "import sys\n"
        "import srtn.cli, srtn.data.tile_job, srtn.data.per_item, srtn.data.breakhis.job\n"
        "bad = sorted(m for m in ('torch', 'mlflow', 'ray') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
