"""Training with Ray Train V2 + MLflow: a real 2-worker DDP run (gloo, CPU) on tiny synthetic shards with a worker
killed mid-run, reruns of the same run name, config and tracking-server errors, and the tracking helpers."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from srtn import track
from srtn.config.base import load_config
from srtn.config.train import TrainConfig
from srtn.data.manifest import manifest_hash
from srtn.errors import ConfigError, TrackingError
from srtn.synth.shards import write_synthetic_shards

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"
PER_EPOCH = (
    "train_loss",
    "val_loss",
    "val_psnr",
    "val_ssim",
    "val_psnr_y",
    "val_ssim_y",
    "epoch_seconds",
    "samples_per_second",
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("train-shards") / "synthetic"
    return write_synthetic_shards(str(out), per_split={"train": 16, "val": 4, "test": 4}, hr_size=32, scales=(2, 4))


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module: creating one costs seconds (schema migrations)."""
    uri = track.resolve_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")
    track.check_tracking_server(uri)
    return uri


def tiny(shards: str, tmp: Path, *overrides: str, uri: str = "sqlite:///unused.db") -> TrainConfig:
    return load_config(
        TrainConfig,
        CONFIGS / "tiny.yaml",
        [f"data.shards={shards}", f"tracking.uri={uri}", f"run.storage_path={tmp}/ray_results", *overrides],
    )


def steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def forbid_ray_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make starting Ray or building a trainer (and so any worker) fail the test."""
    import srtn.runtime
    import srtn.train.fit

    def forbidden(*args, **kwargs):
        raise AssertionError("Ray work started")

    monkeypatch.setattr(srtn.runtime, "init_ray", forbidden)
    monkeypatch.setattr(srtn.train.fit, "build_trainer", forbidden)


# --------------------------------------------------------------------------- end to end (Ray)


@pytest.mark.slow
def test_two_worker_run_survives_a_killed_worker_logs_everything_once_and_a_rerun_continues_it(
    ray_session, shards, mlflow_uri, tmp_path, monkeypatch
):
    """One 2-worker DDP run checks a clean run's record and fault tolerance at once (each run costs a worker
    group start): rank 0 exits at the start of epoch 2 (first attempt only) and Ray Train restarts the worker
    group; the run still has each epoch's metrics once, its params, tags, sample images and a registered model
    equal to the best checkpoint. The same command with more epochs continues the same MLflow run; once more,
    it starts no workers."""
    from srtn.models import build_model
    from srtn.train.fit import fit, load_checkpoint_model

    cfg = tiny(
        shards, tmp_path, "run.name=two-workers", "testing.fail_at_epoch=2", "run.max_failures=1", uri=mlflow_uri
    )
    out = fit(cfg)

    assert (Path(out.run_path) / ".fault-injected-epoch-2").exists()  # the fault did happen
    assert [h["epoch"] for h in out.history] == [1, 2]
    c = track.client(out.tracking_uri)
    run = c.get_run(out.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "two-workers"
    for key in PER_EPOCH:
        assert steps(c, out.mlflow_run_id, key) == [1, 2], key  # each epoch once; never back to epoch 1
    assert run.data.params["optim.lr"] == "0.001"
    assert run.data.params["model.name"] == "srtn"
    assert run.data.params["scaling.num_workers"] == "2"
    n_params = sum(p.numel() for p in build_model("srtn", 4, **cfg.model.kwargs).parameters())
    assert run.data.tags["srtn.param_count"] == str(n_params)
    assert run.data.tags["srtn.shards_manifest_hash"] == manifest_hash(shards)
    assert run.data.tags["srtn.git_commit"]
    assert run.data.tags["srtn.run_name"] == "two-workers"
    assert [a.path for a in c.list_artifacts(out.mlflow_run_id, "samples")] == [
        "samples/epoch_001.png",
        "samples/epoch_002.png",
    ]
    assert Path(out.tracking_uri[len("sqlite:///") :]).parent.joinpath("mlartifacts").is_dir()

    # The registered model is the best checkpoint's weights and runs on a size unlike its 8x8 input example.
    assert out.registered_model_version == "1"
    registered = track.load_model("models:/srtn-tiny-x4/1", tracking_uri=out.tracking_uri)
    trained = load_checkpoint_model(out.best_checkpoint)
    x = torch.rand(2, 3, 12, 20)
    with torch.no_grad():
        expected = trained(x)
        got = registered(x)
    assert got.shape == (2, 3, 48, 80)
    torch.testing.assert_close(got, expected)
    assert out.best_metrics["val_psnr"] == max(h["val_psnr"] for h in out.history)
    assert out.runs_url == f"http://127.0.0.1:5000/#/experiments/{out.experiment_id}/runs"

    # the same command with the same run name and more epochs: Ray Train restores the run's checkpoint
    # manager from storage, get_checkpoint() gives epoch 2, and only epoch 3 is trained
    more = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 3})})
    again = fit(more)
    assert again.mlflow_run_id == out.mlflow_run_id
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert steps(c, out.mlflow_run_id, "val_psnr") == [1, 2, 3]
    run = c.get_run(out.mlflow_run_id)
    assert run.data.tags["srtn.resumed"] == "true"
    assert run.data.params["optim.epochs"] == "2"  # params are immutable: the first value stays
    assert run.info.status == "FINISHED"

    # a rerun of a finished run starts no workers and logs nothing new
    forbid_ray_work(monkeypatch)
    done = fit(more)
    assert done.latest_checkpoint == again.latest_checkpoint
    assert steps(c, out.mlflow_run_id, "val_psnr") == [1, 2, 3]


# --------------------------------------------------------------------------- fail fast (no Ray)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.epochs=-1", "optim.epochs"),
        ("optim.epoch=3", "optim.epoch"),
        ("data.scale=5", "data.scale"),
        ("model.kwargs.n_featz=8", "model"),
        ("scaling.placement_strategy=EVERYWHERE", "scaling.placement_strategy"),
    ],
)
def test_bad_config_fails_naming_the_key(override, key, shards, tmp_path):
    with pytest.raises(ConfigError) as info:
        tiny(shards, tmp_path, override)
    assert info.value.key == key
    assert override.split("=")[0].split(".")[-1] in str(info.value)


def test_scaling_section_reaches_the_trainer(shards, tmp_path):
    """Workers, resources and placement come from `scaling` (SPREAD: one worker per node on a cluster)."""
    from srtn.train.fit import build_trainer

    cfg = tiny(shards, tmp_path, "scaling.placement_strategy=SPREAD", "scaling.num_workers=4")
    trainer = build_trainer(cfg, run_name="x", mlflow_run_id="0" * 32, tracking_uri="sqlite:///x.db", datasets={})
    sc = trainer.scaling_config
    assert (sc.num_workers, sc.placement_strategy, sc.resources_per_worker) == (4, "SPREAD", {"CPU": 0.5})


def test_unreachable_tracking_server_fails_before_any_ray_work(shards, tmp_path, monkeypatch):
    import srtn.train.fit

    forbid_ray_work(monkeypatch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    cfg = tiny(shards, tmp_path, f"tracking.uri={uri}", "run.name=never")
    with pytest.raises(TrackingError, match=uri):
        srtn.train.fit.fit(cfg)
    assert not (tmp_path / "ray_results" / "never").exists()


# --------------------------------------------------------------------------- tracking helpers


def test_resolve_tracking_uri_embedded_default_is_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = track.resolve_tracking_uri(None)
    assert uri == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert track.artifact_location_for(uri) == (tmp_path / "runs" / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert track.resolve_tracking_uri(None) == "http://mlflow:5000"
    assert track.resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path}/x.db"


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        ("http://mlflow:5000/", "http://mlflow:5000/#/experiments/7/runs"),
        ("https://example.org/mlflow", "https://example.org/mlflow/#/experiments/7/runs"),
        ("sqlite:////tmp/m.db", "http://127.0.0.1:5000/#/experiments/7/runs"),
    ],
)
def test_runs_url(uri, url):
    assert track.runs_url(uri, "7") == url


def test_log_params_flat_limits_and_immutability(mlflow_uri):
    uri = mlflow_uri
    exp = track.get_or_create_experiment("params", tracking_uri=uri)
    assert track.get_or_create_experiment("params", tracking_uri=uri) == exp
    run_id = track.create_run(uri, exp, run_name="r")
    cfg = {"a": {"b": 1, "weird key!": "x"}, "long": "y" * 7000, "lst": [1, 2], "none": None}
    assert track.log_params_flat(uri, run_id, cfg) == {}
    params = track.client(uri).get_run(run_id).data.params
    assert params["a.b"] == "1"
    assert params["a.weird key_"] == "x"
    assert len(params["long"]) == 6000
    assert params["lst"] == "[1, 2]"
    assert params["none"] == "null"
    assert track.log_params_flat(uri, run_id, {"a": {"b": 2}}) == {"a.b": ("1", "2")}


def test_epoch_logger_backfills_missing_epochs_once(mlflow_uri):
    uri = mlflow_uri
    run_id = track.create_run(uri, track.get_or_create_experiment("backfill", tracking_uri=uri), run_name="r")
    log = track.EpochLogger(uri, run_id)
    log.log_epoch(1, {"val_loss": 0.5, "note": "text is skipped"})
    history = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}]
    assert log.backfill(history) == [2]
    assert log.backfill(history) == []
    assert steps(track.client(uri), run_id, "val_loss") == [1, 2]


def test_image_grid_layout():
    lr = torch.rand(5, 3, 8, 8)
    hr = torch.rand(5, 3, 32, 32)
    grid = track.image_grid({"LR": lr, "SR": hr, "HR": hr}, max_rows=4)
    # cells are enlarged to 96 px: 3 columns x (96 + 2) + 2, label 14 + 4 rows x (96 + 2) + 2
    assert grid.shape == (14 + 4 * 98 + 2, 3 * 98 + 2, 3)
    assert grid.dtype == np.uint8
    cell = grid[16 : 16 + 96, 2 : 2 + 96]
    expected = np.clip(np.rint(lr[0].numpy().transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(cell[::12, ::12], expected)  # LR shown with nearest-neighbour enlargement
