"""`srtn evaluate`: test split only, a comparison run in MLflow, bicubic checked against a direct computation.

One module-scoped evaluation on tiny synthetic shards (32x32 HR, x4) and a throw-away sqlite store with
two registered models (a tiny SRTN and SRCNN, trained a few steps in-process, no Ray Train), shared by
the tests that read its outputs.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import torch.nn.functional as F

from srtn.cli import main
from srtn.config.base import load_config
from srtn.config.evaluate import EvaluateConfig, ModelEntry
from srtn.data.reader import read_split_table
from srtn.data.schema import decode_png, lr_column
from srtn.errors import ConfigError
from srtn.evaluate import comparison_experiment, evaluate, resolve_models
from srtn.evaluate.score import HrReference
from srtn.metrics import psnr, ssim
from srtn.models import build_model
from srtn.models.serialization import log_sr_model
from srtn.synth.shards import write_synthetic_shards
from srtn.track import client as mlflow_client
from srtn.track import fluent_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
SCALE = 4
EXPERIMENT = "srtn-evaltest"
TEST_SOURCES = {"synth-test-00", "synth-test-01"}


@contextlib.contextmanager
def _one_thread():
    """Torch on one thread: 20x faster than two on a busy 2-CPU machine (OpenMP threads contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train_and_register(model: torch.nn.Module, name: str, shards: str, experiment_id: str) -> str:
    """A few Adam steps on the train split, `train_loss`/`val_loss` per 'epoch', then a registered version."""
    table = read_split_table(shards, "train", columns=["hr", lr_column(SCALE)])
    hr = torch.stack([torch.from_numpy(decode_png(b)).permute(2, 0, 1) for b in table["hr"].to_pylist()]) / 255.0
    lr = torch.stack([torch.from_numpy(decode_png(b)).permute(2, 0, 1) for b in table[lr_column(SCALE)].to_pylist()])
    lr = lr / 255.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-x{SCALE}-evaltest") as run:
        with _one_thread():
            for epoch in range(5):
                for _ in range(4):
                    opt.zero_grad()
                    loss = F.mse_loss(model(lr), hr)
                    loss.backward()
                    opt.step()
                mlflow.log_metrics({"train_loss": loss.item(), "val_loss": 1.1 * loss.item()}, step=epoch)
        log_sr_model(model, name="model", registered_model_name=f"evaltest-{name}")
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Shards with distinct sources per split and a sqlite MLflow store holding evaltest-srtn (alias
    `champion`) and evaltest-srcnn. (A stray file in split=test/ is refused by the manifest check before any
    work: tests/test_data_contract.py.)"""
    root = tmp_path_factory.mktemp("evaluation")
    shards = str(root / "shards")
    write_synthetic_shards(
        shards, per_split={"train": 6, "val": 2, "test": 5}, hr_size=32, scales=(SCALE,), groups=2, seed=3
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with fluent_tracking_uri(uri):  # the fluent API (start_run, log_model) needs the global URI; reset after
        client = mlflow_client(uri)
        exp = client.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri())
        torch.manual_seed(0)
        runs = {
            "srtn": _train_and_register(
                build_model("srtn", SCALE, n_feats=8, n_blocks=1, heads=2), "srtn", shards, exp
            ),
            "srcnn": _train_and_register(build_model("srcnn", SCALE, n1=8, n2=4), "srcnn", shards, exp),
        }
        client.set_registered_model_alias("evaltest-srtn", "champion", "1")
    return {"shards": shards, "uri": uri, "runs": runs, "experiment_id": exp, "root": root}


def _config(store, **extra) -> EvaluateConfig:
    data = {
        "data": {"shards": store["shards"], "dataset": "evaltest", "scale": SCALE},
        "models": [
            {"name": "srtn", "uri": "models:/evaltest-srtn@champion"},
            {"name": "srcnn", "uri": "models:/evaltest-srcnn/latest"},
        ],
        "batch_size": 2,
        "tracking": {"uri": store["uri"], "experiment": EXPERIMENT},
    }
    return load_config(EvaluateConfig, data=data | extra)


@pytest.fixture(scope="module")
def report(store, ray_session):
    return evaluate(_config(store))


def _artifact_json(uri: str, run_id: str, path: str, dst: Path) -> dict:
    local = mlflow_client(uri).download_artifacts(run_id, path, str(dst))
    return json.loads(Path(local).read_text())


def test_comparison_run_holds_tables_figures_metrics_and_links(report, store, tmp_path):
    client = mlflow_client(store["uri"])
    run = client.get_run(report.run_id)
    assert run.info.run_name == "compare-evaltest-x4"
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == store["experiment_id"]
    artifacts = {a.path for a in client.list_artifacts(report.run_id)}
    assert {"comparison.json", "per_slide.json", "per_image.json", "comparison.png", "loss_curves.png"} <= artifacts
    assert {"comparison_matrix.json", "comparison_matrix.md", "compare_tiles.png", "gain_tiles.png"} <= artifacts
    logged = _artifact_json(store["uri"], report.run_id, "comparison.json", tmp_path)
    rows = {r[logged["columns"].index("model")]: dict(zip(logged["columns"], r)) for r in logged["data"]}
    assert list(rows) == ["srtn", "srcnn", "bicubic"]
    assert rows["srcnn"]["uri"] == "models:/evaltest-srcnn/1"  # `latest` pinned to a version
    assert rows["bicubic"]["params"] == 0 and rows["srcnn"]["params"] > 0
    for name in rows:
        for key in ("psnr", "ssim", "psnr_y", "ssim_y"):
            assert run.data.metrics[f"test_{key}.{name}"] == pytest.approx(rows[name][key], abs=1e-9)
            assert run.data.metrics[f"test_{key}.evaltest.{name}"] == run.data.metrics[f"test_{key}.{name}"]
    assert set(run.data.tags["srtn.evaluated_runs"].split(",")) == set(store["runs"].values())
    assert run.data.tags["srtn.model.srtn.run_id"] == store["runs"]["srtn"]
    # The training runs get their test metrics and a link back (the MLflow contract).
    source = client.get_run(store["runs"]["srcnn"])
    assert source.data.metrics["test_psnr"] == pytest.approx(rows["srcnn"]["psnr"], abs=1e-9)
    assert source.data.tags["srtn.test_comparison_run"] == report.run_id


def test_reads_only_the_test_split(report, store):
    test_rows = [r for r in read_split_table(store["shards"], "test").to_pylist() if r["split"] == "test"]
    assert len(test_rows) == 5
    assert set(report.per_slide["source_id"]) == TEST_SOURCES  # no train/val source
    assert set(report.per_image["split"]) == {"test"}
    assert report.table["n_images"].tolist() == [5, 5, 5]
    counts = report.per_slide.groupby("source_id")["n_images"].first().to_dict()
    assert counts == {"synth-test-00": 3, "synth-test-01": 2}


def test_bicubic_matches_a_direct_computation(report, store):
    rows = [r for r in read_split_table(store["shards"], "test").to_pylist() if r["split"] == "test"]
    hr = torch.stack([torch.from_numpy(decode_png(r["hr"])).permute(2, 0, 1) for r in rows]).double() / 255.0
    lr = torch.stack([torch.from_numpy(decode_png(r[lr_column(SCALE)])).permute(2, 0, 1) for r in rows]).float()
    sr = F.interpolate(lr / 255.0, scale_factor=SCALE, mode="bicubic", align_corners=False).clamp(0, 1)
    sr = (sr * 255.0).round().double() / 255.0  # uint8 quantization, as the evaluation documents
    expected = {
        "psnr": psnr(sr, hr, crop_border=SCALE).mean().item(),
        "ssim": ssim(sr, hr, crop_border=SCALE).mean().item(),
        "psnr_y": psnr(sr, hr, crop_border=SCALE, y_channel=True).mean().item(),
        "mse_uint8": ((sr - hr)[..., SCALE:-SCALE, SCALE:-SCALE] * 255.0).pow(2).mean().item(),
    }
    got = report.table.set_index("model").loc["bicubic"]
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    logged = mlflow_client(store["uri"]).get_run(report.run_id).data.metrics["test_psnr.bicubic"]
    assert logged == pytest.approx(expected["psnr"], abs=1e-6)


def test_bad_model_uri_fails_naming_it_before_ray_work(store, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray work started before the model URIs were resolved")

    monkeypatch.setattr("srtn.runtime.init_ray", no_ray)
    monkeypatch.setattr("srtn.data.reader.read_split", no_ray)
    cfg = _config(
        store,
        models=[
            {"name": "srcnn", "uri": "models:/evaltest-srcnn/1"},
            {"name": "ghost", "uri": "models:/no-such-model/3"},
            {"name": "norun", "uri": "0123456789abcdef0123456789abcdef"},
        ],
    )
    before = len(mlflow_client(store["uri"]).search_runs([store["experiment_id"]]))
    with pytest.raises(ConfigError) as err:
        evaluate(cfg)
    message = str(err.value)
    assert "ghost" in message and "models:/no-such-model/3" in message
    assert "norun" in message and "models.0.uri" not in message
    assert err.value.key == "models.1.uri"
    assert len(mlflow_client(store["uri"]).search_runs([store["experiment_id"]])) == before


def test_uri_forms_resolve_to_pinned_models(store):
    run_id = store["runs"]["srcnn"]
    entries = [
        ModelEntry(name="by-run-id", uri=run_id),
        ModelEntry(name="by-runs-uri", uri=f"runs:/{run_id}/model"),
        ModelEntry(name="by-alias", uri="models:/evaltest-srtn/champion"),
        ModelEntry(name="bicubic", uri="bicubic"),
    ]
    resolved = resolve_models(entries, tracking_uri=store["uri"])
    assert [m.run_id for m in resolved] == [run_id, run_id, store["runs"]["srtn"], None]
    assert resolved[0].resolved_uri.startswith("models:/m-")  # the logged model of that run
    assert resolved[1].resolved_uri == f"runs:/{run_id}/model"
    assert resolved[2].resolved_uri == "models:/evaltest-srtn/1"
    assert resolved[0].n_params == resolved[1].n_params > 0 and resolved[3].n_params == 0
    # No tracking.experiment: the training runs' experiment when shared, else srtn-<dataset>.
    cfg = _config(store, tracking={"uri": store["uri"]})
    assert comparison_experiment(cfg, store["uri"], resolved) == (store["experiment_id"], EXPERIMENT)
    assert comparison_experiment(cfg, store["uri"], resolved[3:])[1] == "srtn-evaltest"
    # each model's scale is read from it; one of another scale is reported n/a, not refused
    assert [m.scale for m in resolved] == [SCALE, SCALE, SCALE, None]
    assert resolved[0].applies_to(SCALE) and not resolved[0].applies_to(8) and resolved[3].applies_to(8)


@pytest.mark.parametrize("uri", ["s3://bucket/model.pt", "runs:/abc", "models:/", "srtn"])
def test_malformed_uri_is_a_config_error(uri):
    with pytest.raises(ConfigError) as err:
        load_config(EvaluateConfig, data={"data": {"shards": "x"}, "models": [{"name": "m", "uri": uri}]})
    assert err.value.key == "models.0.uri"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"data": {"shards": "x", "split": "train"}}, "data.split"),
        ({"data": {"shards": "x"}, "models": [{"name": "a", "uri": "bicubic"}] * 2}, "unique"),
        ({"data": {"shards": "x"}, "models": [{"name": "bicubic", "uri": "runs:/a/model"}]}, "include_bicubic"),
        ({"data": {"shards": "x"}, "include_bicubic": False}, "nothing to evaluate"),
    ],
)
def test_config_rules(extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EvaluateConfig, data=extra)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "evaluate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(EvaluateConfig, path)
    for d in cfg.dataset_configs():
        assert d.split == "test"
        assert cfg.crop_border_for(d.scale) == d.scale
    assert cfg.entries()[-1].uri == "bicubic"


def test_cli_prints_table_and_runs_url(report, store, monkeypatch, capsys):
    """`srtn evaluate` wiring and output; the evaluation itself is the module's (no second Ray pass)."""
    seen = []

    def fake_evaluate(cfg):
        seen.append(cfg)
        return report

    monkeypatch.setattr("srtn.evaluate.job.evaluate", fake_evaluate)
    overrides = [f"data.shards={store['shards']}", f"tracking.uri={store['uri']}", "data.limit=3"]
    overrides.append("models=[{name: tiny-srcnn, uri: 'models:/evaltest-srcnn/1'}]")
    argv = ["evaluate", "--config", str(ROOT / "configs" / "evaluate" / "tcga_kirc_mini_x4.yaml")]
    assert main([*argv, *(arg for o in overrides for arg in ("--set", o))]) == 0
    cfg = seen[0]
    assert [e.name for e in cfg.entries()] == ["tiny-srcnn", "bicubic"] and cfg.data.limit == 3
    out = capsys.readouterr().out
    assert report.markdown in out and "| bicubic |" in out and "interpolation baseline" in out
    assert f"mlflow ui --backend-store-uri {report.tracking_uri}" in out  # track.ui_hint, a local store
    assert f"/#/experiments/{report.experiment_id}/runs" in out


@pytest.mark.parametrize("crop", [0, 4, 8])
def test_the_scorer_equals_srtn_metrics(crop):
    """`HrReference` (HR half once per batch, per-plane shifted-add Gaussian) against `srtn.metrics`, which the
    skimage tests pin; identical images give inf PSNR and SSIM 1 as there."""
    torch.manual_seed(crop)
    hr = torch.round(torch.rand(3, 3, 40, 36) * 255) / 255
    sr = torch.round(torch.rand(3, 3, 40, 36) * 255) / 255
    sr[0] = hr[0]
    got = HrReference(hr, crop_border=crop).score(sr)
    expected = {
        "psnr": psnr(sr, hr, crop_border=crop),
        "ssim": ssim(sr, hr, crop_border=crop),
        "psnr_y": psnr(sr, hr, crop_border=crop, y_channel=True),
        "ssim_y": ssim(sr, hr, crop_border=crop, y_channel=True),
    }
    for key, value in expected.items():
        assert torch.allclose(got[key][1:], value[1:].to(got[key].dtype), rtol=0, atol=1e-12), key
    assert got["psnr"][0] == got["psnr_y"][0] == float("inf") and got["ssim"][0] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="does not match HR"):
        HrReference(hr, crop_border=crop).score(sr[:, :, :32])


def test_scoring_maths_imports_no_ray():
    """`srtn.evaluate.score`, `.report`, `.matrix` and `.compare_tiles` run where Ray is absent (a notebook, a
    peer's venv)."""
    code = (
        "import sys, srtn.evaluate.score, srtn.evaluate.report, srtn.evaluate.matrix, srtn.evaluate.compare_tiles; "
        "print('ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
