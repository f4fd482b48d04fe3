"""The training input pipeline: aligned crops, paired augmentation, decoding, and split isolation
(validation reads val rows only, never test: the original scripts validated on the test set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_utils import list_in_manifest

from srtn.config.base import load_config
from srtn.config.train import TrainConfig
from srtn.data.quality import downsample
from srtn.data.reader import centre_crop, decode_eval_batch, read_split_table
from srtn.data.schema import encode_png
from srtn.errors import ConfigError
from srtn.synth.shards import synthetic_tile, write_synthetic_shards
from srtn.train.augment import aligned_crop, augment_pair, decode_train_batch

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


def pair(scale: int = 4, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    hr = synthetic_tile(np.random.default_rng(seed), size)
    return hr, downsample(hr, scale, "area")  # box means: an HR block maps to exactly one LR pixel


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_aligned_crop_keeps_hr_and_lr_in_register(scale):
    hr, lr = pair(scale)
    rng = np.random.default_rng(1)
    for _ in range(20):
        hr_p, lr_p = aligned_crop(hr, lr, scale, 4, rng)
        assert lr_p.shape == (4, 4, 3)
        assert hr_p.shape == (4 * scale, 4 * scale, 3)
        assert np.array_equal(downsample(np.ascontiguousarray(hr_p), scale, "area"), lr_p)


def test_crop_larger_than_tile_uses_the_whole_tile():
    hr, lr = pair(4, 32)
    hr_p, lr_p = aligned_crop(hr, lr, 4, 48, np.random.default_rng(0))
    assert hr_p.shape == hr.shape and lr_p.shape == lr.shape
    hr_c, lr_c = centre_crop(hr, lr, 4, 4)
    assert np.array_equal(lr_c, lr[2:6, 2:6])
    assert np.array_equal(hr_c, hr[8:24, 8:24])


def test_augmentation_applies_the_same_transform_to_both():
    hr, lr = pair(4, 32)
    seen = set()
    for seed in range(40):
        hr_a, lr_a = augment_pair(hr, lr, np.random.default_rng(seed))
        assert np.array_equal(downsample(np.ascontiguousarray(hr_a), 4, "area"), lr_a)
        seen.add(lr_a.tobytes())
    assert len(seen) == 8  # flips x transpose: the 8 symmetries of a square


def test_decode_batches_give_float_nchw_in_unit_range():
    hr, lr = pair(4, 32)
    batch = {"hr": np.array([encode_png(hr)] * 3, dtype=object), "lr_x4": np.array([encode_png(lr)] * 3, dtype=object)}
    out = decode_train_batch(batch, scale=4, patch_size=4, flips=True, rot90=True, seed=0)
    assert out["lr"].shape == (3, 3, 4, 4) and out["hr"].shape == (3, 3, 16, 16)
    assert out["lr"].dtype == np.float32 and out["hr"].min() >= 0.0 and out["hr"].max() <= 1.0
    full = decode_eval_batch(batch, scale=4)
    assert full["lr"].shape == (3, 3, 8, 8) and full["hr"].shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(full["hr"][0], hr.transpose(2, 0, 1).astype(np.float32) / 255)
    with pytest.raises(ValueError, match="x8"):
        decode_eval_batch({"hr": batch["hr"], "lr_x8": np.array([None] * 3, dtype=object)}, scale=8)


@pytest.mark.slow
def test_train_reads_only_train_rows_and_val_only_val_rows(ray_session, tmp_path):
    from srtn.train.datasets import build_datasets

    shards = write_synthetic_shards(str(tmp_path / "s"), per_split={"train": 6, "val": 3, "test": 3}, groups=3)
    # a stray test row inside a listed file of the val folder must not reach validation either
    stray = read_split_table(shards, "test").slice(0, 1)
    pq.write_table(stray, str(tmp_path / "s" / "split=val" / "stray.parquet"))
    list_in_manifest(shards, "split=val/stray.parquet", source_id="stray")
    cfg = load_config(TrainConfig, CONFIGS / "tiny.yaml", [f"data.shards={shards}", "data.patch_size=4"])

    datasets = build_datasets(cfg, keep_meta=True)
    val = datasets["val"].take_all()
    train = datasets["train"].take_all()
    assert sorted(r["split"] for r in val) == ["val"] * 3
    assert {r["source_id"] for r in val} == {"synth-val-00", "synth-val-01", "synth-val-02"}
    assert sorted(r["split"] for r in train) == ["train"] * 6
    assert {r["source_id"] for r in train} == {"synth-train-00", "synth-train-01", "synth-train-02"}
    in_val_folder = read_split_table(shards, "val", columns=["tile_id", "split"]).to_pylist()
    assert {r["tile_id"] for r in val} == {r["tile_id"] for r in in_val_folder if r["split"] == "val"}
    assert stray.column("tile_id")[0].as_py() not in {r["tile_id"] for r in val}
    assert val[0]["lr"].shape == (3, 8, 8) and val[0]["hr"].shape == (3, 32, 32)  # whole val tiles
    assert train[0]["lr"].shape == (3, 4, 4) and train[0]["hr"].shape == (3, 16, 16)  # train patches


def test_missing_scale_or_split_is_a_config_error(tmp_path):
    from srtn.data.reader import read_split

    shards = write_synthetic_shards(str(tmp_path / "s"), per_split={"train": 2}, scales=(2,))
    with pytest.raises(ConfigError, match="lr_x4") as info:
        read_split(shards, "train", scale=4)
    assert info.value.key == "data.scale"
    with pytest.raises(ConfigError, match="split=val") as info:
        read_split(shards, "val", scale=2)
    assert info.value.key == "data.shards"


def test_synthetic_shards_layout_and_manifest(tmp_path):
    from srtn.data.manifest import manifest_hash, read_manifest

    out = write_synthetic_shards(str(tmp_path / "s"), per_split={"train": 4, "val": 2}, hr_size=16, scales=(2, 4))
    assert sorted(p.name for p in (tmp_path / "s" / "split=train").iterdir()) == [
        "synth-train-00.parquet",
        "synth-train-01.parquet",
    ]
    table = read_split_table(out, "val")
    assert table.num_rows == 2 and set(table.column("split").to_pylist()) == {"val"}
    assert table.column("lr_x8").null_count == 2 and table.column("lr_x4").null_count == 0
    assert read_manifest(out)["totals"]["per_split"] == {"train": 4, "val": 2, "test": 0}
    again = write_synthetic_shards(str(tmp_path / "t"), per_split={"train": 4, "val": 2}, hr_size=16, scales=(2, 4))
    assert manifest_hash(again) == manifest_hash(out)
    assert isinstance(table.schema, pa.Schema)


def test_shards_store_png_columns_uncompressed_and_keep_null_counts(tmp_path):
    """PNG bytes are not recompressed (zstd on the small columns only), and the null counts that
    `check_shards` reads are written; shards written by other tools without statistics still pass."""
    from srtn.data.reader import check_shards

    out = write_synthetic_shards(str(tmp_path / "s"), per_split={"train": 2, "val": 1}, hr_size=16, scales=(4,))
    files = sorted((tmp_path / "s" / "split=train").glob("*.parquet"))
    meta = pq.ParquetFile(files[0]).metadata.row_group(0)
    by_name = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert by_name["hr"].compression == "UNCOMPRESSED" and by_name["lr_x4"].compression == "UNCOMPRESSED"
    assert by_name["tile_id"].compression == "ZSTD"
    assert by_name["lr_x8"].statistics.null_count == meta.num_rows
    check_shards(out, 4)

    bare = tmp_path / "bare"
    for split in ("train", "val"):
        (bare / f"split={split}").mkdir(parents=True)
        table = read_split_table(out, split)
        pq.write_table(table, bare / f"split={split}" / "x.parquet", write_statistics=False)
        list_in_manifest(bare, f"split={split}/x.parquet", source_id="x")  # hand-made, listed as srtn tile would
    check_shards(str(bare), 4)
    with pytest.raises(ConfigError, match="no lr_x8 images"):
        check_shards(str(bare), 8)
