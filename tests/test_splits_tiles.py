"""Pure functions: splits (by group and by TCGA site), quality filters, downsampling, schema helpers, tile grid."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from srtn.data.barcodes import site_from_name
from srtn.data.quality import downsample, rejection_reason
from srtn.data.schema import decode_png, encode_png, lr_column, tile_id
from srtn.data.slides import mask_fraction, tile_grid
from srtn.data.splits import assign_split, site_group, site_groups, spatial_block_id
from srtn.errors import ConfigError
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


# -- split by TCGA tissue source site ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "site", "group", "split"),
    [
        ("TCGA-A3-3306-01Z-00-DX1.svs", "A3", "TCGA-A3", "test"),
        ("TCGA-B0-4710-01Z-00-DX1.7B2F6D6A-8C1E-4C4B-9F1E-2B1A5F0E1234.svs", "B0", "TCGA-B0", "train"),
        ("s3://bucket/kirc/tcga-cz-5984-01z-00-dx1.svs", "CZ", "TCGA-CZ", "train"),
        ("TCGA-AK-3456-01Z-00-DX2.tiff", "AK", "TCGA-AK", "val"),
        ("/data/TCGA-G6-A8L7-01Z-00-DX1.svs", "G6", "TCGA-G6", "val"),
        ("TCGA-BP-4160", "BP", "TCGA-BP", "test"),
        ("TCGA-B0-47100-01Z.svs", None, None, None),
        ("/TCGA-A3-3306/slide.svs", None, None, None),
        ("CMU-1.svs", None, None, None),
    ],
)
def test_site_table(name, site, group, split):
    assert site_from_name(name) == site
    assert site_group(name) == group
    if group is not None:
        assert assign_split(group) == split


def _cohort(n: int, seed: int) -> list[str]:
    """`n` TCGA-style slide names over about 40 sites, several patients per site, some with two slides."""
    rng = np.random.default_rng(seed)
    alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    sites = sorted({"".join(rng.choice(list(alnum), 2)) for _ in range(40)})
    names = []
    for i in range(n):
        site = sites[int(rng.integers(len(sites)))]
        patient = "".join(rng.choice(list(alnum), 4))
        names.append(f"TCGA-{site}-{patient}-01Z-00-DX{1 + i % 2}.{i:04d}.svs")
    return names


def test_site_split_keeps_every_site_in_one_split_and_is_stable_as_slides_are_added():
    names = _cohort(400, seed=1)
    groups = site_groups(names)
    splits = {n: assign_split(g) for n, g in groups.items()}
    by_site: dict[str, set[str]] = {}
    for n, split in splits.items():
        by_site.setdefault(site_from_name(n), set()).add(split)
    assert all(len(s) == 1 for s in by_site.values())  # no site in two splits
    assert {next(iter(s)) for s in by_site.values()} == {"train", "val", "test"}
    more = names + _cohort(200, seed=2)
    again = {n: assign_split(g) for n, g in site_groups(list(reversed(more))).items()}
    assert all(again[n] == splits[n] for n in names)  # adding slides moves no slide
    salted = {n: assign_split(g, salt="other") for n, g in groups.items()}
    assert salted != splits  # the salt draws another, equally deterministic, assignment


def test_site_split_refuses_names_without_a_site():
    with pytest.raises(ConfigError, match=r"2 of 3 have none: CMU-1\.svs, slide_2\.tiff") as info:
        site_groups(["TCGA-A3-3306-01Z.svs", "CMU-1.svs", "slide_2.tiff"])
    assert info.value.key == "split.by"
