"""The streaming pyramid writer, read back by the real OpenSlide library and by tifffile."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile

from srtn.pyramid import APERIO_PREFIX, level_dimensions, write_pyramid


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus mild noise: realistic for JPEG, exact for lossless."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([120 + 100 * np.sin(xx / 97), 120 + 100 * np.cos(yy / 61), 128 + 0.05 * (xx - yy)], axis=-1)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def _read(slide: openslide.OpenSlide, level: int) -> np.ndarray:
    return np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB"))


@pytest.mark.parametrize(
    ("width", "height", "min_level_size", "expected"),
    [
        (8192, 8192, 512, [(8192, 8192), (4096, 4096), (2048, 2048), (1024, 1024), (512, 512)]),
        (1300, 1000, 512, [(1300, 1000), (650, 500)]),
        (1023, 1023, 512, [(1023, 1023)]),
        (2100, 1500, 256, [(2100, 1500), (1050, 750), (525, 375), (262, 187)]),
        (5, 3, 1, [(5, 3), (2, 1)]),
    ],
)
def test_level_dimensions_table(width, height, min_level_size, expected):
    assert level_dimensions(width, height, min_level_size=min_level_size) == expected


@pytest.mark.parametrize(
    ("width", "height", "min_level_size", "factor", "expected"),
    [
        (20000, 15000, 512, 4, [(20000, 15000), (5000, 3750), (1250, 937)]),  # 312 < 512 stops: 1, 4, 16
        (40000, 30000, 512, 4, [(40000, 30000), (10000, 7500), (2500, 1875), (625, 468)]),
        (2400, 1800, 512, 4, [(2400, 1800), (600, 450)]),
        (2400, 1800, 128, 4, [(2400, 1800), (600, 450), (150, 112)]),
        (2047, 2047, 512, 4, [(2047, 2047)]),
        (8192, 8192, 512, 2, [(8192, 8192), (4096, 4096), (2048, 2048), (1024, 1024), (512, 512)]),
        (9, 27, 1, 3, [(9, 27), (3, 9), (1, 3)]),
    ],
)
def test_level_dimensions_with_factor_table(width, height, min_level_size, factor, expected):
    assert level_dimensions(width, height, min_level_size=min_level_size, factor=factor) == expected


@pytest.mark.parametrize("factor", [1, 0, -4, 2.0, True])
def test_level_dimensions_rejects_bad_factor(factor):
    with pytest.raises(ValueError, match="integer >= 2"):
        level_dimensions(1000, 1000, factor=factor)


def test_generic_jpeg_opens_as_generic_tiff_with_mpp(tmp_path: Path):
    img = _image(1000, 1300)
    path = tmp_path / "g.tiff"
    assert write_pyramid(path, img, width=1300, height=1000, mpp=0.5) == 2
    with openslide.OpenSlide(path) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_dimensions == ((1300, 1000), (650, 500))
        assert slide.level_downsamples == (1.0, 2.0)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
        assert slide.properties["openslide.level[0].tile-width"] == "256"
        assert np.abs(_read(slide, 0).astype(int) - img).mean() < 5.0  # JPEG q90, 4:2:0, noisy input
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.tiff"]  # no temporary file left


def test_aperio_layout_properties_and_thumbnail(tmp_path: Path):
    img = _image(1500, 2100, seed=1)
    path = tmp_path / "a.svs"
    levels = write_pyramid(
        path,
        img,
        width=2100,
        height=1500,
        mpp=0.25,
        app_mag=40,
        flavor="aperio",
        min_level_size=256,
        description_extra={"Filename": "a"},
    )
    assert levels == 4
    with openslide.OpenSlide(path) as slide:
        props = slide.properties
        assert props[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert props[openslide.PROPERTY_NAME_COMMENT].startswith(APERIO_PREFIX)
        assert slide.level_count == 4
        assert slide.level_dimensions == ((2100, 1500), (1050, 750), (525, 375), (262, 187))
        assert slide.level_downsamples[:3] == (1.0, 2.0, 4.0)
        assert props["aperio.AppMag"] == "40"
        assert props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
        assert props["aperio.MPP"] == "0.25"
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert props["aperio.Filename"] == "a"
        assert set(slide.associated_images) == {"thumbnail"}
        assert max(slide.associated_images["thumbnail"].size) <= 1024
    with tifffile.TiffFile(path) as tif:  # level 0, stripped thumbnail, then reduced levels
        assert [p.is_tiled for p in tif.pages] == [True, False, True, True, True]
        assert [p.subfiletype for p in tif.pages] == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("flavor", ["generic", "aperio"])
def test_lossless_round_trips_exactly(tmp_path: Path, flavor):
    img = _image(777, 1111, seed=2)  # odd sizes: clipped edge tiles, odd halving
    path = tmp_path / f"l.{flavor}.tiff"
    write_pyramid(
        path,
        img,
        width=1111,
        height=777,
        mpp=None,
        flavor=flavor,
        compression="lossless",
        tile_size=128,
        min_level_size=200,
    )
    half = cv2.resize(img[:776, :1110], (555, 388), interpolation=cv2.INTER_AREA)
    with openslide.OpenSlide(path) as slide:
        assert slide.level_dimensions[:2] == ((1111, 777), (555, 388))
        assert openslide.PROPERTY_NAME_MPP_X not in slide.properties
        np.testing.assert_array_equal(_read(slide, 0), img)
        np.testing.assert_array_equal(_read(slide, 1), half)
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.pages[0].asarray(), img)


def test_callable_source_row_major_in_bounds_and_deterministic(tmp_path: Path):
    img = _image(600, 700, seed=3)
    calls: list[tuple[int, int, int, int]] = []

    def source(x: int, y: int, w: int, h: int) -> np.ndarray:
        calls.append((x, y, w, h))
        return img[y : y + h, x : x + w].copy()

    write_pyramid(tmp_path / "c.tiff", source, width=700, height=600, mpp=0.5, min_level_size=300)
    assert calls == [(x, y, min(256, 700 - x), min(256, 600 - y)) for y in (0, 256, 512) for x in (0, 256, 512)]
    write_pyramid(tmp_path / "a.tiff", img, width=700, height=600, mpp=0.5, min_level_size=300)
    write_pyramid(tmp_path / "b.tiff", img, width=700, height=600, mpp=0.5, min_level_size=300)
    data = (tmp_path / "a.tiff").read_bytes()
    assert data == (tmp_path / "b.tiff").read_bytes() == (tmp_path / "c.tiff").read_bytes()
    assert b"DateTime" not in data and b"tifffile" not in data


def test_memory_does_not_scale_with_the_image(tmp_path: Path):
    """4096x4096 (48 MiB raw level 0, 12 MiB level 1) is written holding a few tile rows at most."""
    tile = _image(256, 256, seed=4)
    tracemalloc.start()
    try:
        write_pyramid(tmp_path / "big.tiff", lambda x, y, w, h: tile[:h, :w], width=4096, height=4096, mpp=0.25)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    with openslide.OpenSlide(tmp_path / "big.tiff") as slide:
        assert slide.level_count == 4


def test_bad_tile_from_source_raises_and_leaves_no_file(tmp_path: Path):
    path = tmp_path / "bad.tiff"
    with pytest.raises(ValueError, match="tile source gave"):
        write_pyramid(path, lambda x, y, w, h: np.zeros((h, w), np.uint8), width=300, height=300, mpp=None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flavor": "ndpi"}, "flavor"),
        ({"compression": "lzw"}, "compression"),
        ({"tile_size": 100}, "multiple of 16"),
        ({"level_factor": 1}, "integer >= 2"),
        ({"tile_size": 48, "level_factor": 32}, "multiple of level_factor 32"),
        ({"quality": 0}, "quality"),
        ({"mpp": -1.0}, "mpp"),
        ({"width": 64}, r"array must be \(64, 64, 3\)"),
        ({"flavor": "aperio", "description_extra": {"Bad": "a|b"}}, "may not contain"),
    ],
)
def test_argument_errors(tmp_path: Path, kwargs, match):
    args = {"width": 32, "height": 64, "mpp": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        write_pyramid(tmp_path / "x.tiff", np.zeros((64, 32, 3), np.uint8), **args)
