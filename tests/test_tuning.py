"""Tuning with Ray Tune + Ray Train V2 + MLflow on the session's 2-CPU Ray: a real ASHA sweep whose driver is
killed after its first trial and resumed with --resume, an infeasible sweep, and config errors (no Ray)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from srtn import track
from srtn.config.base import load_config
from srtn.config.tune import TuneConfig
from srtn.errors import ConfigError, ResourceError
from srtn.synth.shards import write_synthetic_shards

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "tune"
GOOD_LR, BAD_LR = 1.0e-2, 1.0e-7  # after one epoch the good trial is far above the bad one (still at its init)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("tune-shards") / "synthetic"
    return write_synthetic_shards(str(out), per_split={"train": 16, "val": 4, "test": 4}, hr_size=32, scales=(4,))


def sweep_yaml(path: Path, shards: str, tmp: Path, **top: object) -> Path:
    """A 2-trial ASHA sweep of a tiny SRTN, 2 epochs each, one trial at a time; written as a user would."""
    doc = {
        "train": {
            "data": {"shards": shards, "dataset": "tune-test", "patch_size": 8, "shuffle_buffer": 8},
            "model": {"name": "srtn", "kwargs": {"n_feats": 8, "n_blocks": 1, "heads": 2}},
            "optim": {"batch_size": 8, "epochs": 2},
            "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "data_cpus": 0.25, "data_concurrency": 1},
            "run": {"storage_path": str(tmp / "sweeps"), "log_images_every": 0, "num_to_keep": 1},
            "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"},
        },
        "search_space": {"optim.lr": {"type": "grid", "values": [GOOD_LR, BAD_LR]}},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent_trials": 1,
        "run": {"name": "lr-sweep", "registered_model_name": "tune-test-best"},
        **top,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def trial_states(sweep_dir: Path) -> dict[str, str]:
    """Trial id -> status in Tune's latest saved experiment state."""
    files = sorted(glob.glob(str(sweep_dir / "experiment_state-*.json")), key=os.path.getmtime)
    if not files:
        return {}
    try:
        state = json.loads(Path(files[-1]).read_text())
    except (json.JSONDecodeError, OSError):
        return {}  # caught mid-write
    out = {}
    for trial_json, _ in state["trial_data"]:
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        out[trial["trial_id"]] = trial["status"]
    return out


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# --------------------------------------------------------------------------- end to end (Ray)


@pytest.mark.slow
def test_asha_sweep_killed_after_first_trial_resumes_without_rerunning_it(ray_session, shards, tmp_path):
    """`srtn tune` runs in its own process on the session's Ray and is killed (SIGKILL) once Tune has saved the
    first trial as TERMINATED; `--resume` then finishes the sweep in this process. The finished trial is not run
    again (same MLflow child run, each epoch logged once), the parent run is the same, ASHA's rung from before
    the kill still stops the bad trial after its first epoch, and the best trial's model is registered."""
    from srtn.tune.sweep import SWEEP_FILE, tune_sweep

    config = sweep_yaml(tmp_path / "sweep.yaml", shards, tmp_path)
    sweep_dir = tmp_path / "sweeps" / "lr-sweep"
    env = os.environ | {
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "TUNE_GLOBAL_CHECKPOINT_S": "0",  # Tune saves its experiment state on every step: the kill point is exact
        "PYTHONPATH": str(ROOT / "platform"),
    }
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "srtn.cli", "tune", "--config", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 420
        # Kill once the saved state has the first trial TERMINATED *and* the second trial: Tune creates grid
        # trials lazily, so a state saved right as the first one ends may not list the second yet.
        while not ("TERMINATED" in (states := trial_states(sweep_dir)).values() and len(states) == 2):
            tail = (tmp_path / "first.log").read_text()[-4000:]
            assert proc.poll() is None, tail
            assert time.monotonic() < deadline, f"no trial finished in time:\n{tail}"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    first = trial_states(sweep_dir)
    done = [t for t, s in first.items() if s == "TERMINATED"]
    assert len(done) == 1 and len(first) == 2, first
    parent_before = json.loads((sweep_dir / SWEEP_FILE).read_text())["parent_run_id"]
    uri = track.resolve_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    c = track.client(uri)
    finished_run = track.find_runs_by_tag(
        uri, c.get_experiment_by_name("srtn-tune-test").experiment_id, "srtn.run_name", f"lr-sweep-{done[0]}"
    )
    assert len(finished_run) == 1
    before = c.get_run(finished_run[0])

    out = tune_sweep(load_config(TuneConfig, config, ["resume=true"]))

    assert out.parent_run_id == parent_before
    by_lr = {t.params["optim.lr"]: t for t in out.trials}
    good, bad = by_lr[GOOD_LR], by_lr[BAD_LR]
    assert good.trial_id == done[0]  # grid order: the good learning rate ran first
    assert (good.outcome, good.epochs) == ("completed", 2)
    assert (bad.outcome, bad.epochs) == ("stopped_early", 1)  # cut at ASHA's first rung (epoch 1)
    assert bad.metric < good.metric
    assert out.best_trial_id == good.trial_id and out.best_run_id == good.mlflow_run_id
    assert out.best_params == {"optim.lr": GOOD_LR}
    assert out.best_config["optim"]["lr"] == GOOD_LR and out.best_config["data"]["shards"] == shards

    # MLflow: one parent, one child per trial, per-epoch metrics; the finished trial untouched by the resume
    children = c.search_runs([out.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{out.parent_run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted([good.mlflow_run_id, bad.mlflow_run_id])
    assert good.mlflow_run_id == before.info.run_id
    after = c.get_run(good.mlflow_run_id)
    assert after.info.start_time == before.info.start_time and after.info.end_time == before.info.end_time
    for key in ("val_psnr", "train_loss", "val_ssim"):
        assert steps(c, good.mlflow_run_id, key) == [1, 2], key  # each epoch once: not trained again
        assert steps(c, bad.mlflow_run_id, key) == [1], key  # its last epoch reached MLflow too
    statuses = {r.info.run_id: (r.info.status, r.data.tags["srtn.trial_outcome"]) for r in children}
    assert statuses == {good.mlflow_run_id: ("FINISHED", "completed"), bad.mlflow_run_id: ("KILLED", "stopped_early")}
    assert after.data.params["optim.lr"] == str(GOOD_LR)
    parent = c.get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search_space.optim.lr.type"] == "grid"
    assert parent.data.params["scheduler.type"] == "asha"
    assert parent.data.metrics["best_val_psnr"] == pytest.approx(good.metric)
    assert parent.data.metrics["trials_stopped_early"] == 1 and parent.data.metrics["trials_completed"] == 1
    assert parent.data.tags["srtn.best_trial_id"] == good.trial_id
    assert {"trials.json", "trials.png", "best_config.json"} <= {a.path for a in c.list_artifacts(out.parent_run_id)}
    table = json.loads(Path(c.download_artifacts(out.parent_run_id, "trials.json", str(tmp_path))).read_text())
    assert len(table["data"]) == 2

    # the best trial's model is registered, and no Train worker of the stopped trial is left holding CPUs
    assert out.registered_model_version == "1"
    assert c.get_model_version("tune-test-best", "1").run_id == good.mlflow_run_id
    deadline = time.monotonic() + 60
    while ray_session.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert ray_session.available_resources().get("CPU", 0) == 2, ray_session.available_resources()


def test_infeasible_sweep_fails_fast_naming_what_a_trial_needs(ray_session, shards, tmp_path):
    from srtn.tune.sweep import tune_sweep

    config = sweep_yaml(tmp_path / "sweep.yaml", shards, tmp_path)
    cfg = load_config(TuneConfig, config, ["train.scaling.cpus_per_worker=4", "trial.driver_cpus=0.5"])
    t0 = time.perf_counter()
    with pytest.raises(ResourceError) as info:
        tune_sweep(cfg)
    assert time.perf_counter() - t0 < 60
    message = str(info.value)
    s = cfg.train.scaling  # one trial: its driver + its Train workers + its Ray Data tasks' CPU
    one_trial = cfg.trial.driver_cpus + s.num_workers * s.cpus_per_worker + s.data_cpus
    assert f"one trial needs {one_trial:g} CPU" in message
    assert f"driver {cfg.trial.driver_cpus:g} CPU" in message and f"{s.data_cpus:g} CPU for Ray Data" in message
    assert "the cluster has 2 CPU" in message
    assert not list((tmp_path / "sweeps").glob("*/experiment_state-*.json"))  # no Tune work started


# --------------------------------------------------------------------------- fail fast (no Ray)


@pytest.mark.parametrize(
    ("space", "key", "says"),
    [
        ({"optim.lrr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "optim.lrr", "unknown key"),
        ({"model.kwargs.n_featz": {"type": "choice", "values": [8, 16]}}, "model.kwargs.n_featz", "n_featz"),
        ({"model.kwargs.attention": {"type": "choice", "values": ["ema", "mha"]}}, "model.kwargs.attention", "mha"),
        ({"model.kwargs.n_feats": {"type": "choice", "values": [8, 7]}}, "model.kwargs.n_feats", "does not build"),
        ({"optim.batch_size": {"type": "uniform", "low": 4, "high": 16}}, "optim.batch_size", "integer"),
        ({"optim.loss": {"type": "grid", "values": ["mse", "ssim"]}}, "optim.loss", "ssim"),
        ({"run.name": {"type": "choice", "values": ["a", "b"]}}, "run.name", "the sweep sets run.name"),
    ],
)
def test_bad_search_space_key_fails_naming_it_before_ray(space, key, says, shards, tmp_path, monkeypatch):
    import srtn.runtime

    def forbidden(*args, **kwargs):
        raise AssertionError("Ray work started")

    monkeypatch.setattr(srtn.runtime, "init_ray", forbidden)
    config = sweep_yaml(tmp_path / "sweep.yaml", shards, tmp_path, search_space=space)
    with pytest.raises(ConfigError) as info:
        load_config(TuneConfig, config)
    assert info.value.key == f"search_space.{key}"
    assert f"search_space.{key}" in str(info.value) and says in str(info.value)
    from srtn.cli import main

    assert main(["tune", "--config", str(config)]) == 2  # the CLI reports it as a config error


def test_shipped_configs_load_and_take_the_cluster_overrides(tmp_path):
    """smoke.yaml as is; srtn_x4.yaml with exactly the overrides of infra/kuberay/rayjob-tune.yaml."""
    from srtn.tune.sweep import trial_requirements

    smoke = load_config(TuneConfig, CONFIGS / "smoke.yaml")
    assert smoke.train.data.shards == "runs/demo/shards" and smoke.max_t == smoke.train.optim.epochs
    s = smoke.train.scaling
    one_trial = smoke.trial.driver_cpus + s.num_workers * s.cpus_per_worker + s.data_cpus
    assert trial_requirements(smoke) == {"CPU": one_trial} and one_trial <= 2  # fits a 2-CPU machine
    x4 = load_config(
        TuneConfig,
        CONFIGS / "srtn_x4.yaml",
        [
            "train.data.shards=s3://srtn-data/tiles/tcga_kirc/",
            "train.scaling.use_gpu=true",
            "train.run.storage_path=s3://srtn-data/ray_results/",
        ],
    )
    assert x4.storage_path == "s3://srtn-data/ray_results/"  # the whole sweep moves with train.run.storage_path
    assert trial_requirements(x4)["GPU"] == 1
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"shards": "a"}, "optim": {"lr": 0.5, "epochs": 7}}))
    seeded = load_config(
        TuneConfig,
        data={
            "base": str(base),
            "train": {"optim": {"lr": 0.1}},
            "search_space": {"optim.lr": {"type": "choice", "values": [1, 2]}},
        },
    )
    assert (seeded.train.data.shards, seeded.train.optim.lr, seeded.train.optim.epochs) == ("a", 0.1, 7)
