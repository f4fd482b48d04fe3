"""Shards are read as their manifest lists them: standard Parquet readers open a real `srtn tile` output with
nothing but its path, and training and evaluation check every listed file before any Ray work (missing,
extra, truncated, changed, no manifest, no LR at the scale), failing with one error that names every bad
file instead of a raw ArrowInvalid inside Ray Train after three attempts."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from shard_utils import list_in_manifest

from srtn.config.base import load_config
from srtn.config.evaluate import EvaluateConfig
from srtn.config.tile import TileConfig
from srtn.config.train import TrainConfig
from srtn.data.manifest import MANIFEST_NAME, listed_files, read_manifest
from srtn.data.reader import check_shards
from srtn.errors import ConfigError, ShardError
from srtn.synth.shards import write_synthetic_shards
from srtn.vocab import SPLITS

ROOT = Path(__file__).resolve().parents[1]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _forbid_ray_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting Ray, building a trainer or a Ray Dataset fails the test (as in tests/test_training.py)."""
    import srtn.data.reader
    import srtn.runtime
    import srtn.train.fit

    def forbidden(*args, **kwargs):
        raise AssertionError("Ray work started")

    monkeypatch.setattr(srtn.runtime, "init_ray", forbidden)
    monkeypatch.setattr(srtn.train.fit, "build_trainer", forbidden)
    monkeypatch.setattr(srtn.data.reader, "read_split", forbidden)


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    """3 train, 2 val and 2 test files of 2 tiles each (x2 and x4)."""
    out = tmp_path / "shards"
    per_split = {"train": 6, "val": 4, "test": 4}
    write_synthetic_shards(
        str(out), per_split=per_split, hr_size=16, scales=(2, 4), groups={"train": 3, "val": 2, "test": 2}
    )
    return out


# --------------------------------------------------------------------------- a real srtn tile output


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory, ray_session) -> Path:
    """`srtn tile` (run_tiling) over three tiny synthetic slides: a few 128-px tiles in each split."""
    from srtn.data.tile_job import run_tiling
    from srtn.synth import write_tcga_dataset

    work = tmp_path_factory.mktemp("tile-reading")
    slides = write_tcga_dataset(work / "slides", slides=3, seed=7, width=768, height=768, tissue_fraction=0.45)
    cfg = load_config(
        TileConfig,
        ROOT / "configs/data/tcga_kirc_seed.yaml",
        [f"output={work / 'out'}", "max_tiles_per_slide=3", "tiles.size=128", "tissue.target_size=256"],
        data={"input": [str(s) for s in slides]},
    )
    assert run_tiling(cfg) == 0
    return work / "out"


def _listed_rows(out: Path) -> tuple[int, Counter]:
    files = listed_files(read_manifest(str(out)))
    return sum(f["rows"] for f in files), Counter({f["split"]: f["rows"] for f in files})


def test_pandas_pyarrow_and_ray_read_the_tile_output_by_its_path(tiled: Path) -> None:
    import pandas as pd
    import pyarrow.dataset as ds
    import ray.data

    total, per_split = _listed_rows(tiled)
    assert total == read_manifest(str(tiled))["totals"]["kept"] > 0
    assert {s for s in per_split if per_split[s]} == set(SPLITS)

    frame = pd.read_parquet(tiled)
    table = ds.dataset(tiled, partitioning="hive").to_table()
    rows = ray.data.read_parquet(str(tiled)).to_pandas()
    for name, splits, ids in (
        ("pandas", list(frame["split"].astype(str)), set(frame["tile_id"])),
        ("pyarrow.dataset", table.column("split").to_pylist(), set(table.column("tile_id").to_pylist())),
        ("ray.data", list(rows["split"].astype(str)), set(rows["tile_id"])),
    ):
        assert len(splits) == total, name
        assert Counter(splits) == per_split, name  # the split a reader reports is the listed one
        assert len(ids) == total, name


@pytest.mark.parametrize("module", ["polars", "duckdb"])
def test_polars_and_duckdb_read_the_tile_output_where_installed(tiled: Path, module: str) -> None:
    lib = pytest.importorskip(module)
    total, per_split = _listed_rows(tiled)
    # both take a glob: polars does not skip `_manifest.json` / `_status/` in a folder (no hidden-file rule
    # by default: it refuses a folder of mixed extensions), duckdb reads files, not folders
    if module == "polars":
        frame = lib.scan_parquet(f"{tiled}/**/*.parquet", hive_partitioning=True).collect()
    else:
        frame = lib.read_parquet(f"{tiled}/**/*.parquet", hive_partitioning=True).df()
    assert len(frame) == total
    assert Counter(str(s) for s in frame["split"]) == per_split


def test_read_split_reads_exactly_the_listed_files(tiled: Path, tmp_path: Path) -> None:
    from srtn.data.reader import read_split

    _, per_split = _listed_rows(tiled)
    for split in SPLITS:
        rows = read_split(str(tiled), split, scale=4).take_all()
        assert len(rows) == per_split[split] and {r["split"] for r in rows} == {split}
    copy = tmp_path / "out"
    shutil.copytree(tiled, copy)
    stale = copy / "split=train" / "TCGA-ZZ-0000-01Z-00-DX1.parquet"
    shutil.copy(next((copy / "split=val").glob("*.parquet")), stale)  # a file the manifest does not list
    with pytest.raises(ShardError, match="not listed") as err:
        read_split(str(copy), "val", scale=4)
    assert list(err.value.problems) == [str(stale)]


# --------------------------------------------------------------------------- checks, no Ray


def test_rows_of_a_file_without_a_split_column_take_the_split_of_their_folder(synthetic: Path) -> None:
    """The writer keeps the split in the folder name only (`split=val/`, Hive-style); rows read from such a
    file carry the split of the listed file, and a hand-made file that has the column is filtered on it."""
    import pyarrow as pa

    from srtn.data.reader import read_shard_rows

    path = sorted((synthetic / "split=val").glob("*.parquet"))[0]
    assert "split" not in pq.read_schema(path).names
    columns = ["tile_id", "split"]
    rows = [r for t in read_shard_rows({"path": [str(path)]}, split="val", columns=columns) for r in t.to_pylist()]
    assert [r["split"] for r in rows] == ["val", "val"] and len({r["tile_id"] for r in rows}) == 2
    other = sorted((synthetic / "split=test").glob("*.parquet"))[0]
    table = pq.read_table(other)
    pq.write_table(table.append_column("split", pa.array(["test"] * table.num_rows)), other)
    assert list(read_shard_rows({"path": [str(other)]}, split="val", columns=columns)) == []


def test_a_clean_folder_passes_and_gives_the_listed_files(synthetic: Path) -> None:
    files = check_shards(str(synthetic), 4, splits=SPLITS)
    listed = listed_files(read_manifest(str(synthetic)))
    assert files == {s: [str(synthetic / f["path"]) for f in listed if f["split"] == s] for s in SPLITS}
    assert [len(files[s]) for s in SPLITS] == [3, 2, 2]


def test_every_bad_file_is_named_in_one_error(synthetic: Path) -> None:
    train = sorted((synthetic / "split=train").glob("*.parquet"))
    val = sorted((synthetic / "split=val").glob("*.parquet"))
    _truncate(train[1])  # not the first file: the old check read the first file only
    train[2].unlink()
    table = pq.read_table(val[0])
    pq.write_table(table.slice(0, 1), val[1])  # rewritten with another row count
    extra = synthetic / "split=test" / "stray.parquet"
    pq.write_table(table, extra)
    (synthetic / "split=test" / "_notes.parquet").write_bytes(b"ignored: readers skip _ and . names")

    with pytest.raises(ShardError) as err:
        check_shards(str(synthetic), 4)
    problems = err.value.problems
    assert sorted(problems) == sorted(str(p) for p in (train[1], train[2], val[1], extra))
    assert "truncated" in " ".join(problems[str(train[1])])
    assert problems[str(train[2])] == ["missing (listed with 2 rows)"]
    assert "truncated or rewritten" in " ".join(problems[str(val[1])])
    assert problems[str(extra)] == ["not listed in the manifest (a stale or foreign file)"]
    message = str(err.value)
    for path in (train[1], train[2], val[1], extra):
        assert f"split={path.parent.name.split('=')[1]}/{path.name}" in message
    assert "re-run `srtn tile`" in message and err.value.key == "data.shards" and err.value.path == str(synthetic)


def test_a_truncated_file_of_the_listed_size_fails_on_its_footer(synthetic: Path) -> None:
    """A file cut and padded back to its listed size passes the listing; its footer does not."""
    path = sorted((synthetic / "split=val").glob("*.parquet"))[0]
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2] + b"\0" * (size - size // 2))
    with pytest.raises(ShardError, match="unreadable Parquet footer") as err:
        check_shards(str(synthetic), 4)
    assert list(err.value.problems) == [str(path)]


def test_rows_or_columns_that_differ_from_the_manifest_are_named(synthetic: Path) -> None:
    path = sorted((synthetic / "split=train").glob("*.parquet"))[0]
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 1).drop_columns(["tile_id"]), path)
    list_in_manifest(synthetic, "split=train/" + path.name, source_id="x")
    manifest = read_manifest(str(synthetic))
    entry = next(f for f in manifest["files"] if f["path"] == "split=train/" + path.name)
    entry["rows"] = 2  # as it was listed before the rewrite
    (synthetic / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ShardError) as err:
        check_shards(str(synthetic), 4)
    assert err.value.problems == {str(path): ["1 rows, the manifest says 2", "no column tile_id"]}


def test_no_lr_at_the_scale_is_a_scale_error(tmp_path: Path) -> None:
    out = write_synthetic_shards(str(tmp_path / "s"), per_split={"train": 2, "val": 2}, hr_size=16, scales=(2,))
    with pytest.raises(ShardError, match="holds no lr_x4 images") as err:
        check_shards(out, 4)
    assert err.value.key == "data.scale" and len(err.value.problems) == 4  # 2 train + 2 val files
    assert "lr.scales" in str(err.value)
    with pytest.raises(ShardError, match="no test files listed") as err:
        check_shards(out, 2, splits=("test",))
    assert err.value.key == "data.shards"


def test_a_folder_without_manifest_is_refused_by_name(synthetic: Path, tmp_path: Path) -> None:
    manifest = synthetic / MANIFEST_NAME
    manifest.rename(synthetic / "manifest.json")  # what srtn wrote before the manifest listed its files
    with pytest.raises(ShardError) as err:
        check_shards(str(synthetic), 4)
    assert f"{synthetic} has no {MANIFEST_NAME}" in str(err.value) and "older srtn" in str(err.value)
    assert list(err.value.problems) == [str(manifest)]
    (synthetic / "manifest.json").unlink()
    with pytest.raises(ShardError, match="unfinished or hand-made"):
        check_shards(str(synthetic), 4)
    with pytest.raises(ShardError, match="does not exist"):
        check_shards(str(tmp_path / "nowhere"), 4)


# --------------------------------------------------------------------------- train and evaluate fail before Ray


def _train_config(shards: Path, tmp: Path) -> TrainConfig:
    return load_config(
        TrainConfig,
        ROOT / "configs/train/tiny.yaml",
        [f"data.shards={shards}", f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"run.storage_path={tmp}/ray_results"],
    )


def test_fit_fails_on_a_truncated_shard_before_ray_train(synthetic: Path, tmp_path: Path, monkeypatch) -> None:
    import srtn.train.fit

    _forbid_ray_work(monkeypatch)
    bad = sorted((synthetic / "split=train").glob("*.parquet"))[-1]
    _truncate(bad)
    cfg = _train_config(synthetic, tmp_path)
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": "never"})})
    with pytest.raises(ShardError) as err:
        srtn.train.fit.fit(cfg)
    assert list(err.value.problems) == [str(bad)] and f"split=train/{bad.name}" in str(err.value)
    assert not (tmp_path / "ray_results" / "never").exists()


def test_srtn_train_exits_2_naming_the_bad_shard(synthetic: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from srtn.cli import main

    _forbid_ray_work(monkeypatch)
    bad = sorted((synthetic / "split=val").glob("*.parquet"))[0]
    _truncate(bad)
    overrides = [f"data.shards={synthetic}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    overrides.append(f"run.storage_path={tmp_path}/ray_results")
    args = ["train", "--config", str(ROOT / "configs/train/tiny.yaml")]
    assert main([*args, *(x for o in overrides for x in ("--set", o))]) == 2
    err = capsys.readouterr().err
    assert f"split=val/{bad.name}" in err and "Traceback" not in err and "resume" not in err


def test_evaluate_fails_on_a_truncated_shard_before_any_ray_work(synthetic: Path, tmp_path: Path, monkeypatch) -> None:
    import srtn.evaluate.job
    from srtn.evaluate import evaluate

    _forbid_ray_work(monkeypatch)

    def unresolved(*args, **kwargs):
        raise AssertionError("models were resolved before the shards were checked")

    monkeypatch.setattr(srtn.evaluate.job, "resolve_models", unresolved)
    bad = sorted((synthetic / "split=test").glob("*.parquet"))[1]
    _truncate(bad)
    data = {"data": {"shards": str(synthetic), "scale": 4}, "models": [{"name": "bicubic", "uri": "bicubic"}]}
    cfg = load_config(EvaluateConfig, data=data | {"tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    with pytest.raises(ShardError) as err:
        evaluate(cfg)
    assert list(err.value.problems) == [str(bad)] and isinstance(err.value, ConfigError)
