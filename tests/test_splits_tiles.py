"""Pure functions: splits, quality filters, downsampling, schema helpers, tile grid."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from srtn.data.quality import downsample, rejection_reason
from srtn.data.schema import decode_png, encode_png, lr_column, tile_id
from srtn.data.slides import mask_fraction, tile_grid
from srtn.data.splits import assign_split, spatial_block_id
from srtn.vocab import QualityThresholds


def test_split_is_a_function_of_the_group_alone():
    groups = [f"TCGA-AA-{i:04d}" for i in range(2000)]
    first = {g: assign_split(g) for g in groups}
    again = {g: assign_split(g) for g in reversed([*groups, "TCGA-ZZ-9999"])}
    assert all(first[g] == again[g] for g in groups)
    share = Counter(first.values())
    assert 0.76 < share["train"] / 2000 < 0.84
    assert 0.08 < share["val"] / 2000 < 0.12
    assert 0.08 < share["test"] / 2000 < 0.12


@pytest.mark.parametrize("ratios", [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
def test_degenerate_ratios(ratios):
    expected = ["train", "val", "test"][list(ratios).index(1)]
    assert {assign_split(f"g{i}", ratios) for i in range(50)} == {expected}


def test_bad_ratios():
    with pytest.raises(ValueError, match="three non-negative numbers"):
        assign_split("g", (0.5, 0.5))
    with pytest.raises(ValueError, match="three non-negative numbers"):
        assign_split("g", (0.9, 0.2, -0.1))


@pytest.mark.parametrize(
    ("x", "y", "block", "expected"),
    [(0, 0, 1024, "s#b0_0"), (1023, 1023, 1024, "s#b0_0"), (1024, 0, 1024, "s#b1_0"), (5000, 2048, 1024, "s#b4_2")],
)
def test_spatial_block_id(x, y, block, expected):
    assert spatial_block_id("s", x, y, block) == expected


@pytest.mark.parametrize(
    ("w", "h", "size", "stride", "expected"),
    [
        (512, 256, 256, 256, [(0, 0), (256, 0)]),
        (511, 256, 256, 256, [(0, 0)]),
        (255, 255, 256, 256, []),
        (384, 256, 256, 128, [(0, 0), (128, 0)]),
    ],
)
def test_tile_grid(w, h, size, stride, expected):
    assert tile_grid(w, h, size=size, stride=stride) == expected


def test_mask_fraction():
    mask = np.zeros((10, 10), bool)
    mask[:5, :5] = True
    assert mask_fraction(mask, 10.0, 0, 0, 50) == 1.0
    assert mask_fraction(mask, 10.0, 0, 0, 100) == 0.25
    assert mask_fraction(mask, 10.0, 60, 60, 40) == 0.0


def _tile(value: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = np.full((64, 64, 3), value, np.float64) + rng.normal(0, noise, (64, 64, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def test_rejection_reasons():
    assert rejection_reason(_tile(240)) == "too_white"
    assert rejection_reason(_tile(20)) == "too_black"
    assert rejection_reason(_tile(128, noise=5)) == "low_std"
    assert rejection_reason(_tile(128, noise=60)) is None
    half = _tile(128, noise=60)
    half[:, :40] = 250  # 62% white
    assert rejection_reason(half) == "too_white"
    assert rejection_reason(half, QualityThresholds(max_white_fraction=0.7)) is None


@pytest.mark.parametrize("method", ["lanczos", "bicubic", "area"])
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_downsample_shapes(method, scale):
    hr = _tile(128, noise=40)
    assert downsample(hr, scale, method).shape == (64 // scale, 64 // scale, 3)


def test_downsample_area_is_block_mean():
    hr = _tile(128, noise=40)
    lr = downsample(hr, 4, "area")
    expect = hr.reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    assert np.abs(lr.astype(float) - expect).max() <= 1.0


def test_downsample_lanczos_is_pillow_antialiased():
    hr = _tile(128, noise=40)
    ref = np.asarray(Image.fromarray(hr).resize((16, 16), Image.Resampling.LANCZOS))
    assert np.array_equal(downsample(hr, 4, "lanczos"), ref)


def test_downsample_rejects_indivisible():
    with pytest.raises(ValueError, match="not divisible"):
        downsample(np.zeros((30, 30, 3), np.uint8), 4)


def test_png_roundtrip_is_lossless():
    tile = _tile(100, noise=50, seed=3)
    assert np.array_equal(decode_png(encode_png(tile)), tile)


def test_tile_id_is_deterministic_and_distinct():
    assert tile_id("s", 0, 256, 0) == tile_id("s", 0, 256, 0)
    ids = {tile_id("s", 0, 256, 0), tile_id("s", 0, 0, 256), tile_id("t", 0, 256, 0), tile_id("s", 1, 256, 0)}
    assert len(ids) == 4


def test_lr_column():
    assert lr_column(4) == "lr_x4"
    with pytest.raises(ValueError, match="scale 5 not supported"):
        lr_column(5)
