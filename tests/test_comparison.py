"""`srtn evaluate` over several datasets: one comparison run holding the models x datasets matrix, not
applicable cells for a wrong scale, side-by-side pictures, and datasets as MLflow inputs (training too).

Real components throughout: synthetic shards with manifests (`write_synthetic_shards`), one real `fit` (a
tiny SRCNN x4, one Ray Train worker, one epoch), a registered x8 SRCNN, a sqlite MLflow store, the session's
local Ray. Three evaluations share the module: datasets [a4, b4, a8] in one run, then a4 alone and b4 alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import torch

from srtn import track
from srtn.config.base import load_config
from srtn.config.evaluate import EvaluateConfig
from srtn.config.train import TrainConfig
from srtn.data.manifest import manifest_hash
from srtn.data.reader import read_split_table
from srtn.errors import ConfigError
from srtn.evaluate import evaluate
from srtn.evaluate.compare_tiles import choose_tiles, picture_size
from srtn.models import build_model
from srtn.models.serialization import log_sr_model
from srtn.synth.shards import write_synthetic_shards
from srtn.train.fit import fit

ROOT = Path(__file__).resolve().parents[1]
CELL = 64
COUNT = 3  # fixed tiles per dataset in compare_tiles.png
COLUMNS = 5  # LR | bicubic | srcnn4 | srcnn8 | HR
CELL_KEYS = ("psnr", "ssim", "psnr_y", "ssim_y")


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_session):
    """Shards a (x4 and x8, 5 test tiles) and b (x4, 4 test tiles), a trained SRCNN x4 on a (registered
    `cmp-srcnn-x4`) and an x8 SRCNN logged in the same experiment (registered `cmp-srcnn-x8`)."""
    root = tmp_path_factory.mktemp("comparison")
    a = write_synthetic_shards(
        str(root / "a"), per_split={"train": 8, "val": 2, "test": 5}, hr_size=32, scales=(4, 8), groups=2, seed=1
    )
    b = write_synthetic_shards(
        str(root / "b"), per_split={"train": 2, "val": 1, "test": 4}, hr_size=32, scales=(4,), groups=1, seed=2
    )
    uri = track.resolve_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    cfg = load_config(
        TrainConfig,
        ROOT / "configs/train/tiny.yaml",
        [
            *(
                f"data.shards={a}",
                "data.dataset=cmp",
                f"tracking.uri={uri}",
                f"run.storage_path={root / 'ray_results'}",
            ),
            *("model.name=srcnn", "model.kwargs={n1: 8, n2: 4}", "optim.epochs=1", "scaling.num_workers=1"),
            *("scaling.cpus_per_worker=1", "run.registered_model_name=cmp-srcnn-x4", "run.log_images_every=0"),
        ],
    )
    outcome = fit(cfg, run_name="cmp-srcnn-x4")
    with track.fluent_tracking_uri(uri), mlflow.start_run(experiment_id=outcome.experiment_id, run_name="x8"):
        torch.manual_seed(0)
        log_sr_model(build_model("srcnn", 8, n1=8, n2=4), name="model", registered_model_name="cmp-srcnn-x8")
    return {"a": a, "b": b, "uri": uri, "train": outcome, "root": root}


def _config(world, *, datasets=None, data=None, to_source=True) -> EvaluateConfig:
    raw = {
        "models": [
            {"name": "srcnn4", "uri": "models:/cmp-srcnn-x4/latest"},
            {"name": "srcnn8", "uri": "models:/cmp-srcnn-x8/1"},
        ],
        "batch_size": 2,
        "compare_tiles": {"count": COUNT, "cell_size": CELL},
        "tracking": {"uri": world["uri"], "log_to_source_runs": to_source},
    }
    raw |= {"datasets": datasets} if datasets else {"data": data}
    return load_config(EvaluateConfig, data=raw)


def _sets(world) -> dict[str, dict]:
    return {
        "a4": {"name": "a4", "shards": world["a"], "scale": 4},
        "b4": {"name": "b4", "shards": world["b"], "scale": 4},
        "a8": {"name": "a8", "shards": world["a"], "scale": 8},
    }


@pytest.fixture(scope="module")
def multi(world):
    return evaluate(_config(world, datasets=list(_sets(world).values())))


@pytest.fixture(scope="module")
def singles(world, multi):
    """a4 and b4 alone, after the multi run (they leave the training run's test metrics as the multi run set)."""
    sets = _sets(world)
    return {n: evaluate(_config(world, data=sets[n], to_source=False)) for n in ("a4", "b4")}


def _artifact(uri: str, run_id: str, path: str, dst: Path) -> Path:
    return Path(track.client(uri).download_artifacts(run_id, path, str(dst)))


def _png_shape(path: Path) -> tuple[int, ...]:
    return cv2.imread(str(path), cv2.IMREAD_COLOR).shape


def test_one_run_holds_every_cell_equal_to_single_dataset_runs(world, multi, singles, tmp_path):
    client = track.client(world["uri"])
    run = client.get_run(multi.run_id)
    assert run.info.run_name == "compare-a4-x4+b4-x4+a8-x8"
    assert run.info.status == "FINISHED"
    matrix = multi.matrix
    assert len(matrix) == 9  # 3 models (srcnn4, srcnn8, bicubic) x 3 datasets
    scored = matrix[matrix["applicable"]]
    assert sorted(zip(scored["model"], scored["dataset"])) == sorted(
        [("srcnn4", "a4"), ("srcnn4", "b4"), ("srcnn8", "a8"), ("bicubic", "a4"), ("bicubic", "b4"), ("bicubic", "a8")]
    )
    for r in scored.itertuples():
        for key in CELL_KEYS:
            assert run.data.metrics[f"test_{key}.{r.dataset}.{r.model}"] == pytest.approx(getattr(r, key), abs=1e-12)
    for name, single in singles.items():
        one = single.table.set_index("model")
        for model in ("srcnn4", "bicubic"):
            cell = scored[(scored["model"] == model) & (scored["dataset"] == name)].iloc[0]
            for key in CELL_KEYS:
                assert cell[key] == pytest.approx(one.at[model, key], abs=1e-9), (name, model, key)
            assert cell["n_images"] == one.at[model, "n_images"] == {"a4": 5, "b4": 4}[name]
    logged = json.loads(_artifact(world["uri"], multi.run_id, "comparison_matrix.json", tmp_path).read_text())
    rows = [dict(zip(logged["columns"], r)) for r in logged["data"]]
    assert len(rows) == 9 and {r["dataset"] for r in rows} == {"a4", "b4", "a8"}
    artifacts = {a.path for a in client.list_artifacts(multi.run_id)}
    assert {"comparison_matrix.md", "comparison_matrix.png", "comparison.json", "per_image.json"} <= artifacts


def test_a_model_of_another_scale_is_not_applicable(world, multi, tmp_path):
    cells = multi.matrix.set_index(["model", "dataset"])
    for model, dataset in [("srcnn8", "a4"), ("srcnn8", "b4"), ("srcnn4", "a8")]:
        assert not cells.at[(model, dataset), "applicable"]
        assert np.isnan(cells.at[(model, dataset), "psnr"])
    metrics = track.client(world["uri"]).get_run(multi.run_id).data.metrics
    assert "test_psnr.a4.srcnn8" not in metrics and "test_psnr.a8.srcnn4" not in metrics
    text = _artifact(world["uri"], multi.run_id, "comparison_matrix.md", tmp_path).read_text()
    assert "n/a (x8 model)" in text and "n/a (x4 model)" in text
    logged = json.loads(_artifact(world["uri"], multi.run_id, "comparison_matrix.json", tmp_path).read_text())
    rows = {(r[0], r[1]): dict(zip(logged["columns"], r)) for r in logged["data"]}
    assert rows[("srcnn8", "a4")]["psnr"] is None and rows[("srcnn8", "a4")]["applicable"] is False


def test_compare_tiles_rows_columns_size_and_the_same_tiles_on_reruns(world, multi, singles, tmp_path):
    uri = world["uri"]
    single = singles["a4"].run_id
    assert _png_shape(_artifact(uri, single, "compare_tiles.png", tmp_path / "s")) == (
        *picture_size(COUNT, COLUMNS, CELL),
        3,
    )
    # two rows (best, worst gain over bicubic) per trained model applicable to a4: srcnn4 only
    assert _png_shape(_artifact(uri, single, "gain_tiles.png", tmp_path / "s")) == (*picture_size(2, COLUMNS, CELL), 3)
    # the multi run: every dataset's tiles in compare_tiles.png, and one picture per dataset
    assert _png_shape(_artifact(uri, multi.run_id, "compare_tiles.png", tmp_path / "m")) == (
        *picture_size(3 * COUNT, COLUMNS, CELL),
        3,
    )
    artifacts = {a.path for a in track.client(uri).list_artifacts(multi.run_id, "compare_tiles")}
    assert artifacts == {"compare_tiles/a4.png", "compare_tiles/b4.png", "compare_tiles/a8.png"}
    # the same tiles on a rerun (and in another run with other datasets), chosen from the test tile ids alone
    chosen_multi = json.loads(_artifact(uri, multi.run_id, "compare_tiles.json", tmp_path / "m").read_text())
    chosen_single = json.loads(_artifact(uri, single, "compare_tiles.json", tmp_path / "s").read_text())
    test_ids = read_split_table(world["a"], "test", columns=["tile_id"])["tile_id"].to_pylist()
    expected = choose_tiles(test_ids, count=COUNT, seed=0)
    assert chosen_single["datasets"]["a4"]["tiles"] == chosen_multi["datasets"]["a4"]["tiles"] == expected
    assert chosen_multi["columns"] == ["LR (nearest)", "bicubic", "srcnn4", "srcnn8", "HR"]
    # the per-tile PSNR on the picture is the evaluation's own per-image PSNR
    per_image = singles["a4"].per_image.set_index(["model", "tile_id"])["psnr"]
    for tile in expected:
        psnr = chosen_single["datasets"]["a4"]["psnr"][tile]
        assert psnr["srcnn8"] is None  # not applicable: an n/a cell
        assert psnr["bicubic"] == pytest.approx(per_image[("bicubic", tile)], abs=1e-9)


def test_choose_tiles_depends_on_seed_and_ids_only():
    ids = [f"t{i:02d}" for i in range(20)]
    chosen = choose_tiles(ids, count=4, seed=0)
    assert chosen == choose_tiles(list(reversed(ids)) + ids[:3], count=4, seed=0)  # order and repeats do not matter
    assert chosen[:2] == choose_tiles(ids, count=2, seed=0)
    assert chosen != choose_tiles(ids, count=4, seed=1) and len(set(chosen)) == 4


def test_training_and_evaluation_runs_log_their_shards_as_dataset_inputs(world, multi):
    client = track.client(world["uri"])
    train_run = client.get_run(world["train"].mlflow_run_id)
    (train_input,) = train_run.inputs.dataset_inputs
    assert train_input.dataset.name == "cmp"
    assert train_input.dataset.digest == manifest_hash(world["a"])
    assert json.loads(train_input.dataset.source)["uri"] == world["a"]
    assert {t.key: t.value for t in train_input.tags}["mlflow.data.context"] == "train"
    inputs = {i.dataset.name: i for i in client.get_run(multi.run_id).inputs.dataset_inputs}
    assert {n: i.dataset.digest for n, i in inputs.items()} == {
        "a4": manifest_hash(world["a"]),
        "b4": manifest_hash(world["b"]),
        "a8": manifest_hash(world["a"]),
    }
    assert {i.tags[0].value for i in inputs.values()} == {"test"}
    assert manifest_hash(world["a"]) != manifest_hash(world["b"])


def test_the_training_run_gets_test_metrics_of_its_own_dataset_and_per_dataset(world, multi):
    metrics = track.client(world["uri"]).get_run(world["train"].mlflow_run_id).data.metrics
    cells = multi.matrix.set_index(["model", "dataset"])
    # trained on a (same manifest hash as a4): test_psnr is a4's, not b4's; both are there per dataset
    assert metrics["test_psnr"] == pytest.approx(cells.at[("srcnn4", "a4"), "psnr"], abs=1e-12)
    assert metrics["test_psnr.b4"] == pytest.approx(cells.at[("srcnn4", "b4"), "psnr"], abs=1e-12)
    assert metrics["test_ssim_y.a4"] == pytest.approx(cells.at[("srcnn4", "a4"), "ssim_y"], abs=1e-12)


def test_shards_without_a_manifest_get_no_input_and_a_warning(world, tmp_path, caplog):
    uri = world["uri"]
    client = track.client(uri)
    run_id = track.create_run(uri, world["train"].experiment_id, run_name="no-manifest")
    assert (
        track.log_shards_input(uri, run_id, shards=str(tmp_path), name="x", context="test", digest=manifest_hash)
        is None
    )
    assert "no readable manifest" in caplog.text
    assert client.get_run(run_id).inputs.dataset_inputs == []
    client.set_terminated(run_id)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"datasets": [{"shards": "x"}], "data": {"shards": "y"}}, "either data"),
        ({}, "either data"),
        ({"datasets": [{"name": "a", "shards": "x"}, {"name": "a", "shards": "y"}]}, "unique"),
        ({"datasets": [{"shards": "x/same"}, {"shards": "y/same"}]}, "unique"),  # names from folders collide
        ({"datasets": [{"name": "a b", "shards": "x"}]}, "letters, digits"),
        ({"datasets": [{"name": "a", "shards": "x", "split": "train"}]}, "datasets.0.split"),
    ],
)
def test_dataset_list_rules(raw, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EvaluateConfig, data=raw)


def test_dataset_entries_take_name_or_dataset_and_name_the_run():
    cfg = load_config(
        EvaluateConfig,
        data={"datasets": [{"name": "a", "shards": "x"}, {"dataset": "b", "shards": "y", "split": "val"}]},
    )
    assert [d.name for d in cfg.dataset_configs()] == ["a", "b"]
    assert cfg.run_name == "compare-a+b-val-x4" and cfg.experiment_name == "srtn-a"
