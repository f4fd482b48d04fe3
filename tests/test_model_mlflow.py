"""MLflow round trip: log with :func:`log_sr_model`, load with :func:`load_sr_model`, same outputs at any size."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from srtn.models import build_model
from srtn.models.serialization import load_sr_model, log_sr_model

SMALL = {"srtn": {"n_feats": 16, "n_blocks": 2}, "edsr": {"n_feats": 16, "n_blocks": 2}, "srcnn": {}, "bicubic": {}}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A throw-away sqlite tracking store with artifacts in a temp dir (never ./mlflow.db); one per module,
    since creating the schema costs seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow.create_experiment("models", artifact_location=(root / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=experiment_id)
        yield root
        if mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("name", list(SMALL))
def test_round_trip_at_another_size(tracking, name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 2, **SMALL[name])
    with mlflow.start_run() as run:
        info = log_sr_model(model, name=name, example_size=(1, 3, 32, 32))
    assert info.run_id == run.info.run_id
    assert str(tracking / "artifacts") in mlflow.get_run(run.info.run_id).info.artifact_uri
    loaded = load_sr_model(info.model_uri)
    assert type(loaded) is type(model) and not loaded.training and loaded.scale == 2
    x = torch.rand(2, 3, 19, 27)  # not the logged example's 32x32
    with torch.no_grad():
        expected, got = model.eval()(x), loaded(x)
    assert got.shape == (2, 3, 38, 54)
    assert torch.equal(got, expected)
    assert loaded.state_dict().keys() == model.state_dict().keys()


def test_registered_model_and_pyfunc_accept_any_size(tracking) -> None:
    model = build_model("srtn", 4, n_feats=16, n_blocks=1, attention="emha")
    with mlflow.start_run():
        info = log_sr_model(model, name="model", registered_model_name="srtn-x4")
    assert info.registered_model_version == 1
    loaded = load_sr_model("models:/srtn-x4/1")
    x = torch.rand(1, 3, 13, 21)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    # the signature leaves H and W free, so the generic pyfunc interface runs at other sizes too
    out = mlflow.pyfunc.load_model(info.model_uri).predict(x.numpy())
    assert np.asarray(out).shape == (1, 3, 52, 84)


def test_logging_restores_mode_and_needs_no_run(tracking) -> None:
    model = build_model("srcnn", 3).train()
    info = log_sr_model(model, name="no-run", example_size=(2, 3, 8, 8))
    assert model.training  # logged in eval mode, then put back
    assert load_sr_model(info.model_uri)(torch.rand(1, 3, 5, 6)).shape == (1, 3, 15, 18)


def test_misuse(tracking) -> None:
    model = build_model("bicubic", 2)
    with pytest.raises(ValueError, match="example_size must be NCHW"):
        log_sr_model(model, name="m", example_size=(3, 32, 32))
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        log_sr_model(model, name="")
