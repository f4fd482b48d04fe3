"""Focus and pen-ink filters (`srtn.data.quality`) on tiles whose blur and ink are known: synthetic slides with
planted regions (read back through OpenSlide), a real IHC image (scikit-image's), and plain test patterns.

Calibration behind `CALIBRATED_THRESHOLDS` (max_blur 0.37, max_ink_fraction 0.02), measured on 24 + 12 synthetic
4096-px SVS slides (`write_tcga_dataset(qc_regions=True)`, 0.25 and 0.5 um/px), every tissue-candidate 256-px tile:
- blur effect of tiles at least half in an out-of-focus box (sigma 1.5-4 px at 0.25 um/px): min 0.498 at 0.25
  um/px, 0.370 at 0.5 um/px; of tiles touching no region: max 0.376 (one tile; 99th pct 0.310) and 0.255;
- ink share of tiles at least half under a stroke: min 0.149; of clean tiles: max 0.0043;
- so 100% of in-region tiles that the seed's filters keep are rejected (99.3% of blurred ones at 0.5 um/px), and
  0.1% of clean tissue (1 of 989 tiles); the IHC image (real tissue): sharp <= 0.34, blurred sigma 1 >= 0.43.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from srtn.config import load_config
from srtn.config.tile import TileConfig
from srtn.data.quality import CALIBRATED_THRESHOLDS, blur_effect, gray, ink_fraction, rejection_reason
from srtn.data.slides import mask_fraction, open_slide, read_rgb, tile_grid, tissue_mask
from srtn.synth import read_regions, write_tcga_dataset
from srtn.synth.artefacts import INK_TRANSMITTANCE, region_shares
from srtn.synth.render import OD_EOSIN, OD_HEMATOXYLIN
from srtn.vocab import QualityThresholds

ROOT = Path(__file__).resolve().parents[1]
SIZE = 256


def _seed_rejection_reason(rgb: np.ndarray) -> str | None:
    """The filter as it was before focus and ink existed (verbatim, default thresholds)."""
    g = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    n = g.size
    if np.count_nonzero(g > 200) / n > 0.4:
        return "too_white"
    if np.count_nonzero(g < 55) / n > 0.4:
        return "too_black"
    if float(g.std()) <= 30.0:
        return "low_std"
    return None


@pytest.fixture(scope="module")
def candidates(tmp_path_factory) -> list[tuple[np.ndarray, dict[str, float]]]:
    """Every tissue-candidate 256-px tile (mask as tcga_kirc.yaml) of two 4096-px SVS slides with planted
    out-of-focus boxes and green/blue/black strokes, with its share in each kind of region (from the sidecar)."""
    out = tmp_path_factory.mktemp("qc-slides")
    paths = write_tcga_dataset(out, slides=2, seed=17, width=4096, height=4096, fmt="svs", qc_regions=True)
    tiles = []
    for path in paths:
        regions = read_regions(path)
        with open_slide(path) as slide:
            mask, ds = tissue_mask(slide, target_size=1024, min_saturation=20, max_gray=225)
            for x, y in tile_grid(*slide.dimensions, size=SIZE, stride=SIZE):
                if mask_fraction(mask, ds, x, y, SIZE) >= 0.5:
                    tiles.append((read_rgb(slide, x, y, 0, SIZE, SIZE), region_shares(regions, x, y, SIZE, SIZE)))
    return tiles


def test_seed_thresholds_give_todays_filter_tile_for_tile(candidates):
    rng = np.random.default_rng(0)
    shapes = [(m, s) for m in (20, 128, 240) for s in (5, 60)]
    patterns = [np.clip(rng.normal(m, s, (64, 64, 3)), 0, 255).astype(np.uint8) for m, s in shapes]
    tiles = [t for t, _ in candidates] + patterns
    seed_cfg = load_config(TileConfig, ROOT / "configs" / "data" / "tcga_kirc_seed.yaml")
    assert seed_cfg.filters.thresholds() == QualityThresholds()
    assert QualityThresholds().max_blur is None and QualityThresholds().max_ink_fraction is None
    for rgb in tiles:
        expected = _seed_rejection_reason(rgb)
        assert rejection_reason(rgb) == expected
        assert rejection_reason(rgb, seed_cfg.filters.thresholds()) == expected


def test_calibrated_filters_reject_planted_regions_that_todays_filters_keep(candidates):
    blurred = [t for t, s in candidates if s["blur"] >= 0.5]
    inked = [t for t, s in candidates if s["ink"] >= 0.5]
    clean = [t for t, s in candidates if s["blur"] == 0 and s["ink"] == 0]
    assert len(blurred) >= 20 and len(inked) >= 10 and len(clean) >= 80
    kept_today = {k: [t for t in v if rejection_reason(t) is None] for k, v in [("blur", blurred), ("ink", inked)]}
    assert len(kept_today["blur"]) >= 0.6 * len(blurred)  # the seed's filters keep most out-of-focus tiles
    assert len(kept_today["ink"]) >= 0.3 * len(inked)  # and many inked ones
    reasons = {k: [rejection_reason(t, CALIBRATED_THRESHOLDS) for t in v] for k, v in kept_today.items()}
    assert reasons["blur"].count("out_of_focus") >= 0.99 * len(reasons["blur"])
    assert reasons["ink"].count("pen_ink") >= 0.99 * len(reasons["ink"])
    clean_kept = [t for t in clean if rejection_reason(t) is None]
    lost = sum(rejection_reason(t, CALIBRATED_THRESHOLDS) is not None for t in clean_kept)
    assert lost <= 0.01 * len(clean_kept)


def test_at_most_one_percent_of_kept_tiles_lie_in_planted_regions(candidates):
    kept = [s for t, s in candidates if rejection_reason(t, CALIBRATED_THRESHOLDS) is None]
    inside = [s for s in kept if s["blur"] >= 0.5 or s["ink"] >= 0.5]
    assert kept and len(inside) <= 0.01 * len(kept)
    kept_today = [s for t, s in candidates if rejection_reason(t) is None]
    assert sum(s["blur"] >= 0.5 or s["ink"] >= 0.5 for s in kept_today) >= 0.1 * len(kept_today)


def _blurred(rgb: np.ndarray, sigma: float) -> np.ndarray:
    out = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigma) if sigma else rgb.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return data.immunohistochemistry()  # 512x512 real stained tissue, shipped with scikit-image


@pytest.mark.parametrize("sigma", [0, 1.0, 2.0])
def test_real_tissue_passes_sharp_and_fails_blurred(ihc, sigma):
    image = _jpeg(_blurred(ihc, sigma))
    for y in range(0, 257, 128):
        for x in range(0, 257, 128):
            tile = np.ascontiguousarray(image[y : y + SIZE, x : x + SIZE])
            assert ink_fraction(tile) <= CALIBRATED_THRESHOLDS.max_ink_fraction  # hematoxylin is not blue ink
            assert (blur_effect(gray(tile)) > CALIBRATED_THRESHOLDS.max_blur) == (sigma > 0)


def test_blur_effect_known_values(ihc):
    sharp = gray(np.ascontiguousarray(ihc[:SIZE, :SIZE]))
    assert blur_effect(np.full((SIZE, SIZE), 128, np.uint8)) == 1.0  # no detail at all
    values = [blur_effect(gray(_blurred(ihc[:SIZE, :SIZE], s))) for s in (0, 0.7, 1.0, 1.5, 2.0, 3.0)]
    assert values == sorted(values) and values[0] < 0.35 and values[-1] > 0.65
    low_contrast = np.clip(128 + (sharp.astype(np.float32) - 128) * 0.5, 0, 255).astype(np.uint8)
    assert abs(blur_effect(low_contrast) - blur_effect(sharp)) < 0.03  # contrast-free, unlike the Laplacian
    half = sharp.copy()
    half[:, : SIZE // 2] = gray(_blurred(ihc[:SIZE, :SIZE], 3.0))[:, : SIZE // 2]
    assert blur_effect(half) > 0.6 > blur_effect(half, blocks=1)  # the worst quarter decides
    glass = sharp.copy()
    glass[: SIZE // 2, : SIZE // 2] = 235  # a flat glass quarter is not "blurred tissue"
    assert blur_effect(glass) == pytest.approx(blur_effect(sharp), abs=0.05)
    with pytest.raises(ValueError, match="too small"):
        blur_effect(np.zeros((3, 3), np.uint8))


def _stain(od: np.ndarray, amount: float) -> tuple[int, int, int]:
    rgb = np.clip(255 * np.exp(-od * amount) + 0.5, 0, 255)
    return tuple(int(c) for c in rgb)


def test_ink_fraction_known_values():
    inks = {name: tuple(int(c * 255 * 0.95) for c in t) for name, t in INK_TRANSMITTANCE.items()}
    for name, colour in inks.items():
        assert ink_fraction(np.full((32, 32, 3), colour, np.uint8)) == 1.0, name
    he = [_stain(OD_EOSIN, a) for a in (0.3, 1.0, 2.0)] + [_stain(OD_HEMATOXYLIN, a) for a in (0.3, 1.0, 1.6)]
    he += [_stain(OD_EOSIN + OD_HEMATOXYLIN, a) for a in (0.5, 1.0)] + [(241, 239, 243), (255, 255, 255)]
    for colour in he:
        assert ink_fraction(np.full((32, 32, 3), colour, np.uint8)) == 0.0, colour
    tile = np.full((64, 64, 3), _stain(OD_EOSIN, 1.0), np.uint8)
    tile[:32, :32] = inks["green"]
    assert ink_fraction(tile) == 0.25


def test_reason_order_and_switches():
    rng = np.random.default_rng(3)
    stripes = 60 * np.sign(np.sin(np.arange(64) * np.pi / 16))[None, :, None]  # coarse: survives a blur
    textured = np.clip(150 + stripes + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
    inked = textured.copy()
    inked[:, :32] = (inked[:, :32] * INK_TRANSMITTANCE["green"]).astype(np.uint8)  # translucent: texture shows
    flat_inked = _blurred(inked, 4.0)
    assert rejection_reason(flat_inked, CALIBRATED_THRESHOLDS) == "pen_ink"  # ink is named before focus
    assert rejection_reason(_blurred(textured, 4.0), QualityThresholds(max_blur=0.37)) == "out_of_focus"
    assert rejection_reason(inked, QualityThresholds(max_blur=0.37)) is None  # ink filter off
    assert rejection_reason(inked, QualityThresholds(max_ink_fraction=0.02)) == "pen_ink"
    assert rejection_reason(np.full((64, 64, 3), 245, np.uint8), CALIBRATED_THRESHOLDS) == "too_white"
