"""What the platform must show on a real cluster (issue 8), with real servers, all on this machine:

1. `ray job submit --working-dir <copy of the repo>` runs `jobs/tile.py` on a Ray cluster started with
   `ray start` (token auth, dashboard, job API), and the shards and manifest are what they must be.
2. `s3://` in and out against an S3-compatible server (moto), tracked by a real `mlflow server` (SQLite,
   `--serve-artifacts`): slides tiled from a bucket into a bucket, then a train job (`jobs/train.py`, 2
   workers) that reads those shards, writes its checkpoints back to the bucket, and whose metrics, images and
   registered model are read back through the server. One train job checks all of it: on this 2-CPU cluster
   each train job costs a worker group start (30-50 s).
3. A 2-worker DDP training spread over two nodes ends with bit-identical weights on both ranks.
4. A train job whose tracking server is down fails at once, naming the URI, before any Ray work.

**One cluster for the module** (starting one costs 15-40 s): a head and a second node joined with
`ray start --address`, 1 CPU each (2 CPUs in all, as on CI), so every job here runs on a real multi-node
cluster. It is stopped when the module ends, pass or fail, by killing only its own processes (`ray stop`
would kill every Ray instance on the machine, e.g. the session instance of conftest.py). Nothing here
connects this pytest process to it: clients are subprocesses (`ray job submit`, a driver with
`RAY_ADDRESS`) and checks use the dashboard's HTTP API.

**"Importable from the working directory alone" is tested, not assumed.** The venv has srtn installed in
editable mode, i.e. its `platform/` folder is on every process's `sys.path`, which would hide a missing
step. So the cluster runs a *bare* Python (`cluster_utils.bare_python`): a virtual environment that sees
every installed package except srtn (asserted when it is made). Jobs are submitted from a copy of the repo
in a temp dir, so nothing can come from /work/main either. Every job passing is then evidence that the
package reached the drivers (through the working dir) and all workers (through `srtn.runtime.init_ray`,
which ships the driver's srtn as a `py_modules` entry); the DDP job also reports where each Train worker
imported srtn from: Ray's unpacked `py_modules` copy on its own node.

**Network.** The dashboard/job API, MLflow and S3 listen on 127.0.0.1 only and are addressed there. Ray's
GCS and raylets bind every interface whatever one asks, and `ray start` replaces 127.0.0.1 by the host's
own address as the node IP (unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, which forbids joining nodes):
node-to-node traffic goes to this host's own address, which Linux delivers over the loopback device.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cluster_utils import (
    ROOT,
    LocalCluster,
    bare_python,
    free_port,
    repo_copy,
    s3_bucket,
    start_mlflow_server,
)

BUCKET = "srtn-cluster-test"
# small tiles and few of them: the point is the plumbing, not the pixels
TILE_ARGS = [
    "--config",
    "configs/data/tcga_kirc_seed.yaml",
    "--set",
    "tiles.size=64",
    "--set",
    "max_tiles_per_slide=10",
    "--set",
    "execution.num_cpus_per_task=0.5",
]
TRAIN_ARGS = [
    "--config",
    "configs/train/tiny.yaml",
    "--set",
    "optim.epochs=1",
    "--set",
    "data.limit_train=16",
    "--set",
    "data.limit_val=4",
    "--set",
    "run.num_images=2",
]
PER_EPOCH = ("train_loss", "val_loss", "val_psnr", "val_ssim")


def _sets(**values: object) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k.replace('__', '.')}={v}")]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def cluster(work: Path):
    """Head + one joined node, 1 CPU each, token auth, run by a Python that cannot import srtn by itself."""
    python = bare_python(work / "bare-env")
    c = LocalCluster(python=python, log_dir=work / "cluster-logs")
    try:
        c.start_head(num_cpus=1)
        c.add_node(num_cpus=1)
        assert c.alive_nodes() == 2
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def repo(work: Path) -> Path:
    """The job's working dir: a copy of platform/, jobs/, configs/ outside /work/main."""
    return repo_copy(work / "repo")


@pytest.fixture(scope="module")
def slides(work: Path) -> Path:
    """Four small slides (SVS and TIFF), one patient each for train, val and test, plus one more."""
    from srtn.synth import write_tcga_dataset

    out = work / "slides"
    write_tcga_dataset(out, slides=4, seed=11, width=1024, height=1024, tissue_fraction=0.5)
    return out


def _ok(run, what: str) -> None:
    print(f"{what}: {run.seconds:.1f} s")
    assert run.returncode == 0, f"{what} failed (exit {run.returncode}, {run.seconds:.0f} s):\n{run.output[-8000:]}"


def _check_shards(output: str) -> dict:
    """Manifest: every slide done; row counts per split equal the manifest's; all three splits present."""
    from srtn.data.manifest import read_manifest
    from srtn.data.reader import read_split_table

    manifest = read_manifest(output)
    assert manifest["totals"]["sources"] == 4
    assert manifest["totals"]["status"] == {"done": 4}, manifest["sources"]
    per_split = manifest["totals"]["per_split"]
    rows = {s: read_split_table(output, s, columns=["tile_id", "split", "hr", "lr_x4"]) for s in per_split}
    assert {s: t.num_rows for s, t in rows.items()} == per_split
    assert all(n > 0 for n in per_split.values()), per_split
    for split, table in rows.items():
        assert set(table.column("split").to_pylist()) == {split}
        assert table.column("lr_x4").null_count == 0
    return manifest


def _check_mlflow_run(uri: str, experiment: str, run_name: str, model_name: str):
    """The run finished with per-epoch metrics and its model registered; returns (client, run)."""
    from srtn import track

    c = track.client(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} in {uri}"
    runs = c.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in PER_EPOCH:
        assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == [1], key
    assert np.isfinite(run.data.metrics["val_psnr"])
    assert run.data.params["scaling.num_workers"] == "2"
    versions = c.search_model_versions(f"name = '{model_name}'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    return c, run


# --------------------------------------------------------------------------- 1. a tile job on a cluster


@pytest.mark.slow
def test_tile_job_runs_on_a_cluster_from_the_working_dir_alone(cluster, repo, slides, work):
    """`ray job submit --working-dir` of jobs/tile.py: SUCCEEDED, and shards and manifest agree."""
    shards = work / "shards"
    tile = cluster.submit(["python", "jobs/tile.py", *TILE_ARGS, *_sets(input=slides, output=shards)], working_dir=repo)
    _ok(tile, "tile job")
    info = cluster.job_info(tile.submission_id)
    assert info["status"] == "SUCCEEDED"
    assert "working_dir" in info["runtime_env"]
    manifest = _check_shards(str(shards))
    assert manifest["config"]["output"] == str(shards)


# --------------------------------------------------------------------------- 2. s3:// in and out, an MLflow server


@pytest.mark.slow
def test_s3_slides_to_shards_to_a_model_tracked_through_an_mlflow_server(cluster, repo, slides, work, monkeypatch):
    """Slides in a bucket are tiled into the bucket by a driver that connects with RAY_ADDRESS and has the S3
    settings only in its own environment (the nodes have none): `init_ray` must pass them to the workers. Then a
    train job (working dir, 2 workers) whose runtime env carries the S3 settings and only
    `MLFLOW_TRACKING_URI=http://127.0.0.1:PORT` (`init_ray` must not clash with them) reads those shards, writes
    its checkpoints to the bucket, and its metrics, sample images and registered model are read back through the
    server. One train job checks all three: each costs a worker group on a 2-CPU cluster."""
    from srtn.data.manifest import manifest_hash
    from srtn.track import load_model

    t0 = time.monotonic()
    server, uri = start_mlflow_server(work / "mlflow-server")
    print(f"mlflow server up: {time.monotonic() - t0:.1f} s")
    try:
        with s3_bucket(work / "s3", BUCKET) as s3:
            for key, value in s3["env"].items():
                monkeypatch.setenv(key, value)  # for the checks below (srtn.storage in this process)
            for slide in sorted(slides.iterdir()):
                s3["client"].upload_file(str(slide), BUCKET, f"slides/{slide.name}")

            shards = f"s3://{BUCKET}/shards"
            driver = cluster.run_driver(
                ["jobs/tile.py", *TILE_ARGS, *_sets(input=f"s3://{BUCKET}/slides", output=shards)],
                cwd=repo,
                env=s3["env"],
            )
            _ok(driver, "s3 tile driver")
            manifest = _check_shards(shards)
            assert all(r["uri"].startswith(f"s3://{BUCKET}/slides/") for r in manifest["sources"])
            keys = {o["Key"] for o in s3["client"].list_objects_v2(Bucket=BUCKET, Prefix="shards/")["Contents"]}
            assert "shards/_manifest.json" in keys and "shards/manifest.json" not in keys
            assert sum(k.endswith(".parquet") for k in keys) >= 3

            train = cluster.submit(
                [
                    "python",
                    "jobs/train.py",
                    *TRAIN_ARGS,
                    *_sets(
                        data__shards=shards,
                        data__dataset="s3",
                        run__name="s3-tiny",
                        run__storage_path=f"s3://{BUCKET}/ray_results",
                        run__registered_model_name="srtn-s3-x4",
                    ),
                ],
                working_dir=repo,
                runtime_env={"env_vars": {**s3["env"], "MLFLOW_TRACKING_URI": uri}},  # tracking.uri is null
            )
            _ok(train, "s3 train job with an MLflow server")
            info = cluster.job_info(train.submission_id)
            assert info["status"] == "SUCCEEDED"
            assert "working_dir" in info["runtime_env"]
            prefix = "ray_results/s3-tiny/"
            keys = {o["Key"] for o in s3["client"].list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
            assert any(k.endswith("/model.pt") for k in keys), sorted(keys)[:20]
            assert f"{prefix}srtn_run.json" in keys
            c, run = _check_mlflow_run(uri, "srtn-s3", "s3-tiny", "srtn-s3-x4")
            assert run.data.tags["srtn.shards_manifest_hash"] == manifest_hash(shards)

        assert "mlflow run id: " + run.info.run_id in train.output
        assert f"runs: {uri}/#/experiments/{run.info.experiment_id}/runs" in train.output
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
        assert [a.path for a in c.list_artifacts(run.info.run_id, "samples")] == ["samples/epoch_001.png"]
        local = Path(c.download_artifacts(run.info.run_id, "samples", str(work / "downloaded")))
        assert [p.name for p in local.iterdir()] == ["epoch_001.png"]
        # the registered model loads through the server (MLflow 3 keeps it as a logged model, not a run artifact)
        model = load_model("models:/srtn-s3-x4/1", tracking_uri=uri)  # MLflow's global URI is put back after
        x = torch.rand(1, 3, 10, 14)
        assert model(x).shape == (1, 3, 40, 56)
        store = work / "mlflow-server" / "artifacts"  # what the server wrote to its artifact destination
        assert len(list(store.rglob("epoch_001.png"))) == 1
        assert len(list(store.rglob("MLmodel"))) == 1
    finally:
        server.stop()


# --------------------------------------------------------------------------- 3. DDP over two nodes

DDP_PROBE = '''"""Job: 2 Ray Train workers placed with SPREAD (0.5 CPU each: PACK would put both on one node)
train srtn's tiny model with DDP. Each rank starts from its own random weights and sees its own data, so only DDP (the
initial broadcast and the gradient all-reduce) can make the weights equal. Each rank saves its node id,
where it imported srtn from and its final parameters."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "platform"))

import srtn  # noqa: E402
from srtn.runtime import init_ray  # noqa: E402


def loop(config):
    import numpy as np
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import srtn
    from srtn.models import build_model
    from srtn.synth.shards import synthetic_tile

    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(1000 + rank)
    net = build_model("srtn", 4, n_feats=8, n_blocks=1, heads=2)
    start = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    model = ray.train.torch.prepare_model(net)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(rank)
    for _ in range(config["steps"]):
        hr = np.stack([synthetic_tile(rng, 32) for _ in range(2)]).transpose(0, 3, 1, 2)
        hr = torch.from_numpy(np.ascontiguousarray(hr)).float() / 255.0
        lr = F.interpolate(hr, scale_factor=0.25, mode="area")
        loss = F.mse_loss(model(lr), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = torch.cat([p.detach().flatten() for p in net.parameters()])
    out = Path(config["out"])
    np.save(out / f"start{rank}.npy", start.numpy())
    np.save(out / f"final{rank}.npy", final.numpy())
    info = {"rank": rank, "world": ray.train.get_context().get_world_size(), "backend": dist.get_backend(),
            "ddp": isinstance(model, torch.nn.parallel.DistributedDataParallel),
            "node_id": ray.get_runtime_context().get_node_id(), "srtn_file": srtn.__file__}
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    ray.train.report({"rank": rank})


if __name__ == "__main__":
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(sys.argv[1])
    init_ray()
    TorchTrainer(
        loop,
        train_loop_config={"out": str(out), "steps": 4},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}, placement_strategy="SPREAD"),
        run_config=RunConfig(name="ddp-probe", storage_path=str(out / "ray_results")),
    ).fit()
    (out / "driver.json").write_text(json.dumps({"srtn_file": srtn.__file__}))
'''


@pytest.mark.slow
def test_ddp_workers_spread_over_two_nodes_end_with_identical_weights(cluster, work, tmp_path):
    """DDP_PROBE as a job: the two Train workers run on different nodes, start from different weights, see
    different data, and end with the same weights bit for bit; each imported srtn from its own node's copy."""
    wd = repo_copy(tmp_path / "wd")
    (wd / "ddp_probe.py").write_text(DDP_PROBE)
    out = work / "ddp"
    out.mkdir()
    run = cluster.submit(["python", "ddp_probe.py", str(out)], working_dir=wd)
    _ok(run, "DDP job")

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert all(r["ddp"] and r["backend"] == "gloo" for r in ranks)
    assert ranks[0]["node_id"] != ranks[1]["node_id"], "SPREAD put both workers on one node"
    start = [np.load(out / f"start{r}.npy") for r in (0, 1)]
    final = [np.load(out / f"final{r}.npy") for r in (0, 1)]
    assert not np.array_equal(start[0], start[1])  # different initial weights per rank...
    np.testing.assert_array_equal(final[0], final[1])  # ...synchronised by DDP, bit for bit
    assert not np.allclose(final[0], start[0])  # and it did train

    # srtn came with the job: the driver from the working dir, each worker from Ray's py_modules copy on its node
    driver = json.loads((out / "driver.json").read_text())["srtn_file"]
    assert "/runtime_resources/working_dir_files/" in driver
    files = [r["srtn_file"] for r in ranks]
    assert all("/runtime_resources/py_modules_files/" in f and f.startswith(cluster.temp_dir) for f in files), files
    assert not any(f.startswith(str(ROOT)) for f in [driver, *files])
    assert len({f.split("/runtime_resources/")[0] for f in files}) == 2  # unpacked on both nodes


# --------------------------------------------------------------------------- 4. an MLflow server that is down


@pytest.mark.slow
def test_a_train_job_fails_at_once_naming_an_mlflow_server_that_is_down(cluster, repo, work):
    """A train job whose only tracking setting is `MLFLOW_TRACKING_URI` (job env) naming a port nobody listens on
    fails at once with a message naming the URI, without its driver ever connecting to Ray."""
    from srtn.synth.shards import write_synthetic_shards

    shards = write_synthetic_shards(
        str(work / "synthetic"), per_split={"train": 16, "val": 4, "test": 4}, hr_size=32, scales=(4,)
    )
    uri = f"http://127.0.0.1:{free_port()}"
    gone = cluster.submit(
        [
            "python",
            "jobs/train.py",
            *TRAIN_ARGS,
            *_sets(
                data__shards=shards,
                data__dataset="server",
                run__name="server-down",
                run__storage_path=work / "ray_results",
            ),
        ],
        working_dir=repo,
        runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}},
    )
    print(f"job with the server down: {gone.seconds:.1f} s")
    assert gone.returncode == 1, gone.output[-4000:]
    info = cluster.job_info(gone.submission_id)
    assert info["status"] == "FAILED"
    assert f"MLflow tracking server {uri} is unreachable" in gone.output
    assert info.get("driver_info") is None  # the driver never called ray.init
    assert not (work / "ray_results" / "server-down").exists()
    seconds = (info["end_time"] - info["start_time"]) / 1000
    assert seconds < 60, f"the failing job took {seconds:.0f} s"


# --------------------------------------------------------------------------- what init_ray adds (no Ray)


@pytest.mark.parametrize(
    ("where", "cluster", "shipped"),
    [
        ("source", False, True),
        ("source", True, True),
        ("site", False, False),
        ("site", True, False),
        ("editable", False, False),
        ("editable", True, True),
    ],
)
def test_worker_runtime_env_ships_srtn_unless_the_workers_have_it(where, cluster, shipped, tmp_path, monkeypatch):
    """A source tree is shipped; a site-packages install never; this checkout's editable install only to a cluster
    (a local instance's workers import it like the driver)."""
    import site

    from srtn import runtime

    pkg = {
        "source": tmp_path / "wd" / "platform" / "srtn",
        "site": Path(site.getsitepackages()[0]) / "srtn",
        "editable": ROOT / "platform" / "srtn",
    }[where]
    monkeypatch.setattr(runtime, "_package_dir", lambda: pkg)
    monkeypatch.setattr(runtime, "_editable_checkout_of", lambda p: p.is_relative_to(ROOT))
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    for key in runtime.FORWARDED_ENV:
        monkeypatch.delenv(key, raising=False)
    assert runtime.worker_runtime_env(cluster=cluster) == ({"py_modules": [str(pkg)]} if shipped else {})


def test_worker_runtime_env_forwards_storage_settings_the_job_does_not_set(tmp_path, monkeypatch):
    from srtn import runtime

    monkeypatch.setattr(runtime, "_package_dir", lambda: tmp_path / "srtn")
    for key in runtime.FORWARDED_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("UNRELATED", "x")
    # a job whose runtime env sets AWS_REGION and py_modules: Ray refuses to merge a driver's env that sets them too
    job = {
        "runtime_env": {
            "working_dir": "gcs://_ray_pkg_x.zip",
            "py_modules": ["gcs://_ray_pkg_y.zip"],
            "env_vars": {"AWS_REGION": "us-east-1"},
        }
    }
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert runtime.worker_runtime_env(cluster=True) == {"env_vars": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}}
    assert runtime.worker_runtime_env(cluster=False) == {}  # a local instance's workers inherit the driver's env
