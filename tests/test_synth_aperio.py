"""Slides laid out as a real Aperio scanner writes them (240-px JPEG tiles, levels at downsamples 1, 4, 16),
read back by the real OpenSlide library: `write_pyramid(level_factor=4)`, `APERIO_LAYOUT`, `srtn synth tcga
--layout aperio`."""

from __future__ import annotations

from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile

from srtn.cli import main
from srtn.pyramid import write_pyramid
from srtn.synth import (
    APERIO_LAYOUT,
    LAYOUTS,
    SRTN_LAYOUT,
    SlideSpec,
    SyntheticSlide,
    render_slide,
    tcga_slide_specs,
    write_tcga_slide,
)

W, H = 2400, 1920  # divisible by 16: OpenSlide's downsamples are exact at every level


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _read(slide: openslide.OpenSlide, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
    """A region at level-0 (x0, y0), `w` x `h` pixels of `level`, as RGB."""
    return np.asarray(slide.read_region((x0, y0), level, (w, h)).convert("RGB"))


@pytest.fixture(scope="module")
def aperio(tmp_path_factory) -> tuple[Path, SyntheticSlide]:
    """A rendered 40x slide in the Aperio layout with three levels (min_level_size lowered to reach 1/16)."""
    spec = tcga_slide_specs(1, seed=7, fmt="svs")[0]
    source = render_slide(width=W, height=H, seed=spec.seed, tissue_fraction=0.4)
    assert isinstance(source, SyntheticSlide)
    path = tmp_path_factory.mktemp("aperio") / "a.svs"
    levels = write_pyramid(
        path,
        source,
        width=W,
        height=H,
        mpp=0.25,
        app_mag=40,
        flavor="aperio",
        min_level_size=128,
        description_extra={"Filename": "a"},
        **APERIO_LAYOUT,
    )
    assert levels == 3
    return path, source


def test_layout_constants():
    assert APERIO_LAYOUT == {"tile_size": 240, "level_factor": 4}
    assert SRTN_LAYOUT == {"tile_size": 256, "level_factor": 2}
    assert LAYOUTS == {"srtn": SRTN_LAYOUT, "aperio": APERIO_LAYOUT}


def test_opens_as_aperio_with_real_layout(aperio):
    path, _ = aperio
    with openslide.OpenSlide(path) as slide:
        props = slide.properties
        assert props[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert slide.level_dimensions == ((2400, 1920), (600, 480), (150, 120))
        assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0), rel=1e-3)
        for level in range(3):
            assert props[f"openslide.level[{level}].tile-width"] == "240"
            assert props[f"openslide.level[{level}].tile-height"] == "240"
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert props["aperio.MPP"] == "0.25"
        assert props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
        assert slide.get_best_level_for_downsample(16) == 2
        assert slide.associated_images["thumbnail"].size == (600, 480)
    with tifffile.TiffFile(path) as tif:  # level 0, stripped thumbnail, then the reduced levels
        assert [p.is_tiled for p in tif.pages] == [True, False, True, True]
        assert [p.subfiletype for p in tif.pages] == [0, 0, 1, 1]
        assert [p.shape[:2] for p in tif.pages] == [(1920, 2400), (480, 600), (480, 600), (120, 150)]
        assert tif.pages[1].description.startswith("Aperio Image Library (srtn)\r\n2400x1920 -> 600x480 -")


@pytest.mark.parametrize(("level", "factor", "min_psnr"), [(1, 4, 30.0), (2, 16, 28.0)])
def test_reduced_levels_are_box_means_of_level_0(aperio, level, factor, min_psnr):
    """A level-1 (level-2) read equals INTER_AREA x4 (x16) of the level-0 region, within JPEG error.

    Measured: 33.4 / 30.7 dB against the rendered pixels; the same read one level pixel off gives 23 / 19 dB.
    Level 2 is a 16x box mean of noisy texture, JPEG-coded at 90 x 60 px: hence its lower bound.
    """
    path, source = aperio
    x0, y0, w, h = 480, 240, 1440, 960  # level-0 pixels: off the origin, across tile borders
    size = (w // factor, h // factor)
    truth = cv2.resize(source(x0, y0, w, h), size, interpolation=cv2.INTER_AREA)
    with openslide.OpenSlide(path) as slide:
        got = _read(slide, x0, y0, level, *size)
        level0 = _read(slide, x0, y0, 0, w, h)
        shifted = _read(slide, x0 + factor, y0, level, *size)
    assert _psnr(got, truth) >= min_psnr
    assert _psnr(got, cv2.resize(level0, size, interpolation=cv2.INTER_AREA)) >= min_psnr
    assert _psnr(shifted, truth) < min_psnr - 5  # the bound tells a misplaced level from a right one


def test_lossless_x4_levels_compose_exactly(tmp_path: Path):
    """Per-tile x4 box means equal the whole level resized (odd sizes: clipped edge tiles, floor division)."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (1001, 1333, 3), dtype=np.uint8)
    path = tmp_path / "l.svs"
    write_pyramid(
        path,
        img,
        width=1333,
        height=1001,
        mpp=None,
        flavor="aperio",
        compression="lossless",
        min_level_size=64,
        tile_size=240,
        level_factor=4,
    )
    one = cv2.resize(img[:1000, :1332], (333, 250), interpolation=cv2.INTER_AREA)
    two = cv2.resize(one[:248, :332], (83, 62), interpolation=cv2.INTER_AREA)
    with openslide.OpenSlide(path) as slide:
        assert slide.level_dimensions == ((1333, 1001), (333, 250), (83, 62))
        np.testing.assert_array_equal(_read(slide, 0, 0, 0, 1333, 1001), img)
        np.testing.assert_array_equal(_read(slide, 0, 0, 1, 333, 250), one)
        np.testing.assert_array_equal(_read(slide, 0, 0, 2, 83, 62), two)


def test_real_size_slide_has_levels_1_4_16(tmp_path: Path):
    """20000 x 15000 at the default min_level_size 512: 1/64 (312 px) is too small, so three levels."""
    tile = np.full((240, 240, 3), (230, 180, 210), np.uint8)
    path = tmp_path / "big.svs"
    levels = write_pyramid(
        path,
        lambda x, y, w, h: tile[:h, :w],
        width=20000,
        height=15000,
        mpp=0.25,
        app_mag=40,
        flavor="aperio",
        **APERIO_LAYOUT,
    )
    assert levels == 3
    with openslide.OpenSlide(path) as slide:
        assert slide.level_dimensions == ((20000, 15000), (5000, 3750), (1250, 937))
        assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0), rel=1e-3)
        assert slide.associated_images["thumbnail"].size == (625, 468)


def _write(args: tuple[Path, SlideSpec]) -> bytes:
    path, spec = args
    return write_tcga_slide(path, spec, width=720, height=480, **APERIO_LAYOUT).read_bytes()


def test_write_tcga_slide_in_a_process_pool_gives_the_serial_bytes(tmp_path: Path):
    """How benchmarks call it: one slide per `multiprocessing.Pool` task; same bytes as in-process."""
    specs = tcga_slide_specs(2, seed=9, fmt="mixed")
    with get_context("spawn").Pool(2) as pool:
        pooled = pool.map(_write, [(tmp_path / "pool" / s.name, s) for s in specs])
    assert pooled == [_write((tmp_path / "serial" / s.name, s)) for s in specs]
    assert len(set(pooled)) == 2


def test_cli_layout_mpp_and_app_mag(tmp_path: Path, capsys):
    out = tmp_path / "s"
    argv = ["synth", "tcga", str(out), "--slides", "1", "--width", "2400", "--height", "1800", "--format", "svs"]
    assert main([*argv, "--layout", "aperio", "--mpp", "0.5", "--app-mag", "20"]) == 0
    assert "wrote 1 slides" in capsys.readouterr().out
    [path] = sorted(out.iterdir())
    with openslide.OpenSlide(path) as slide:
        props = slide.properties
        assert props[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert slide.level_dimensions == ((2400, 1800), (600, 450))
        assert slide.level_downsamples == (1.0, 4.0)
        assert props["openslide.level[0].tile-width"] == "240"
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "20"
    assert main([*argv, "--seed", "1"]) == 0  # default layout: srtn, 40x
    [path] = sorted(p for p in out.iterdir() if p != path)
    with openslide.OpenSlide(path) as slide:
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.properties["openslide.level[0].tile-width"] == "256"
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"


def test_cli_rejects_an_unknown_layout(capsys):
    with pytest.raises(SystemExit) as err:
        main(["synth", "tcga", "x", "--layout", "ndpi"])
    assert err.value.code == 2
    assert "invalid choice: 'ndpi'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile_size": 240, "level_factor": 32}, "tile_size 240 must be a multiple of level_factor 32"),
        ({"level_factor": 1}, "integer >= 2"),
        ({"level_factor": 2.0}, "integer >= 2"),
        ({"level_factor": True}, "integer >= 2"),
    ],
)
def test_level_factor_errors(tmp_path: Path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_pyramid(tmp_path / "x.svs", np.zeros((64, 64, 3), np.uint8), width=64, height=64, mpp=0.25, **kwargs)
    assert list(tmp_path.iterdir()) == []
