"""Synthetic TCGA-like slides, opened by the real OpenSlide library, their known out-of-focus and ink regions
(`qc_regions`), and TCGA barcode parsing."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest

from srtn.data.barcodes import patient_from_name
from srtn.data.splits import assign_split
from srtn.synth import (
    ArtefactSlide,
    InkStroke,
    SyntheticSlide,
    read_regions,
    region_shares,
    regions_path,
    render_slide,
    tcga_slide_specs,
    write_tcga_dataset,
    write_tcga_slide,
)
from srtn.synth.artefacts import INK_TRANSMITTANCE

UUID = r"[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}"
NAME_RE = re.compile(rf"^TCGA-[A-Z0-9]{{2}}-[A-Z0-9]{{4}}-01Z-00-DX[12]\.{UUID}\.(svs|tiff)$")


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _ink(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Green and blue marker pixels: colours H&E stains never produce."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (g > r + 40) & (g > b + 20), (b > r + 100) & (b > g + 60)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("tcga")
    return write_tcga_dataset(out, slides=5, seed=11, width=1024, height=1536)


def test_dataset_opens_in_openslide_with_exact_geometry(dataset):
    assert [p.suffix for p in dataset] == [".svs", ".svs", ".svs", ".tiff", ".svs"]
    for path in dataset:
        with openslide.OpenSlide(path) as slide:
            props = slide.properties
            vendor = "aperio" if path.suffix == ".svs" else "generic-tiff"
            assert props[openslide.PROPERTY_NAME_VENDOR] == vendor
            assert slide.level_dimensions == ((1024, 1536), (512, 768))
            assert slide.level_downsamples == (1.0, 2.0)
            assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
            assert float(props[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.25)
            if vendor == "aperio":
                assert props["aperio.AppMag"] == "40"
                assert props[openslide.PROPERTY_NAME_OBJECTIVE_POWER] == "40"
                assert "thumbnail" in slide.associated_images
            region = np.asarray(slide.read_region((0, 0), 0, (1024, 1536)).convert("RGB"))
            assert region.std() > 10  # real content, not an empty canvas


def test_names_patients_and_three_splits(dataset):
    names = [p.name for p in dataset]
    assert all(NAME_RE.match(n) for n in names), names
    patients = [patient_from_name(n) for n in names]
    assert [assign_split(p) for p in patients[:3]] == ["train", "val", "test"]
    assert patients[4] == patients[3] and names[4].split(".")[0].endswith("DX2")  # a patient with two slides
    assert len(set(patients)) == 4


def test_specs_table_invariants():
    specs = tcga_slide_specs(20, seed=5)
    assert [s.flavor for s in specs[:8]] == ["aperio"] * 3 + ["generic"] + ["aperio"] * 3 + ["generic"]
    assert all(patient_from_name(s.name) == s.patient_id for s in specs)
    assert [i for i, s in enumerate(specs) if "-DX2." in s.name] == [4, 9, 14, 19]
    assert len({s.name for s in specs}) == len({s.seed for s in specs}) == 20
    assert {s.flavor for s in tcga_slide_specs(6, seed=5, fmt="svs")} == {"aperio"}
    assert {s.flavor for s in tcga_slide_specs(6, seed=5, fmt="tiff")} == {"generic"}
    assert tcga_slide_specs(20, seed=5) == specs
    assert tcga_slide_specs(20, seed=6)[0].name != specs[0].name
    for seed in range(10):  # the first three patients always cover the three splits
        assert [assign_split(s.patient_id) for s in tcga_slide_specs(3, seed=seed)] == ["train", "val", "test"]


def test_same_seed_same_bytes_different_seed_different_bytes(tmp_path: Path):
    spec = tcga_slide_specs(1, seed=3)[0]
    a = write_tcga_slide(tmp_path / "a" / spec.name, spec, width=768, height=768)
    b = write_tcga_slide(tmp_path / "b" / spec.name, spec, width=768, height=768)
    other = tcga_slide_specs(1, seed=4)[0]
    c = write_tcga_slide(tmp_path / "c.svs", other, width=768, height=768)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_tiles_join_without_seams_whatever_the_request():
    slide = render_slide(width=1024, height=768, seed=2)
    whole = slide(0, 0, 1024, 768)
    assert whole.shape == (768, 1024, 3) and whole.dtype == np.uint8
    np.testing.assert_array_equal(slide(300, 200, 256, 256), whole[200:456, 300:556])
    np.testing.assert_array_equal(slide(1000, 700, 24, 68), whole[700:768, 1000:1024])


@pytest.mark.parametrize("fraction", [0.25, 0.6])
def test_tissue_fraction_roughly_as_asked(tmp_path: Path, fraction):
    [path] = write_tcga_dataset(tmp_path, slides=1, seed=8, width=1536, height=1536, tissue_fraction=fraction)
    with openslide.OpenSlide(path) as slide:
        thumb = np.asarray(slide.get_thumbnail((256, 256)).convert("RGB"))
    green, blue = _ink(thumb)
    tissue = (_gray(thumb) < 220) & ~green & ~blue
    assert abs(tissue.mean() - fraction) <= 0.1


def test_tissue_texture_background_and_artefacts():
    slide = render_slide(width=2048, height=2048, seed=1, tissue_fraction=0.5)
    rgb = slide(0, 0, 2048, 2048)
    gray = _gray(rgb)
    tiles = [(gray[y : y + 256, x : x + 256], x, y) for y in range(0, 2048, 256) for x in range(0, 2048, 256)]

    def blurred(x: int, y: int) -> bool:
        return any(
            bx < x + 256 and x < bx + bw and by < y + 256 and y < by + bh
            for bx, by, bw, bh in slide.artefact_boxes["blur"]
        )

    sharp_tissue = [t for t, x, y in tiles if (t < 220).mean() > 0.9 and not blurred(x, y)]
    assert sharp_tissue and all(t.std() > 30 for t in sharp_tissue)  # the original's selection keeps them
    glass = max(tiles, key=lambda t: t[0].mean())[0]
    assert 232 <= glass.mean() <= 248 and 0.5 < glass.std() < 8  # white glass with slight noise
    assert (gray < 55).sum() > 1000  # dark folds
    green, blue = _ink(rgb)
    assert green.sum() > 1000 and blue.sum() > 1000  # pen marks in both inks
    assert any((t[0] > 200).mean() > 0.4 and (t[0] < 200).mean() > 0.05 for t in tiles)  # pale tissue edges
    assert {"blur", "green_ink", "blue_ink", "fold"} == set(slide.artefact_boxes)
    assert all(slide.artefact_boxes[k] for k in slide.artefact_boxes)


def test_blurred_patches_are_flat_tissue():
    slide = render_slide(width=2048, height=2048, seed=3)
    windows = []
    for x, y, w, h in slide.artefact_boxes["blur"]:
        region = _gray(slide(x, y, w, h))
        windows += [region[j : j + 128, i : i + 128] for j in range(0, h - 127, 32) for i in range(0, w - 127, 32)]
    tissue = [win for win in windows if win.mean() < 215]
    assert tissue and min(win.std() for win in tissue) < 20


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("TCGA-B0-4710-01Z-00-DX1.7B2F6D6A-8C1E-4C4B-9F1E-2B1A5F0E1234.svs", "TCGA-B0-4710"),
        ("TCGA-AK-3456-01Z-00-DX2.ABC.tiff", "TCGA-AK-3456"),
        ("/data/slides/TCGA-CZ-5984-01Z-00-DX1.svs", "TCGA-CZ-5984"),
        ("s3://bucket/kirc/tcga-cz-5984-01z-00-dx1.svs", "TCGA-CZ-5984"),
        ("TCGA-B0-4710", "TCGA-B0-4710"),
        (Path("TCGA-B8-A54F_scan.svs"), "TCGA-B8-A54F"),
        ("TCGA-B0-47100-01Z.svs", None),
        ("TCGA-B0-471.svs", None),
        ("XTCGA-B0-4710-01Z.svs", None),
        ("/TCGA-B0-4710/slide.svs", None),
        ("CMU-1.svs", None),
        ("", None),
    ],
)
def test_patient_from_name_table(name, patient):
    assert patient_from_name(name) == patient


def test_render_slide_argument_errors():
    with pytest.raises(ValueError, match="tissue_fraction"):
        render_slide(width=512, height=512, seed=0, tissue_fraction=1.0)
    with pytest.raises(ValueError, match="positive"):
        render_slide(width=0, height=512, seed=0)
    with pytest.raises(ValueError, match="slides"):
        tcga_slide_specs(-1, seed=0)


# -- known out-of-focus and ink regions (qc_regions) ----------------------------------------------------------


@pytest.fixture(scope="module")
def qc_source():
    return render_slide(width=2048, height=2048, seed=5, qc_regions=True)


def test_qc_slide_and_sidecar(tmp_path: Path):
    [plain] = write_tcga_dataset(tmp_path / "plain", slides=1, seed=4, width=1024, height=1024, fmt="svs")
    [path] = write_tcga_dataset(tmp_path / "qc", slides=1, seed=4, width=1024, height=1024, fmt="svs", qc_regions=True)
    assert path.name == plain.name and not regions_path(plain).exists()
    assert regions_path(path) == path.with_name(path.name + ".regions.json")
    regions = read_regions(path)
    assert regions["slide"] == path.name and regions["coordinates"] == "level-0 pixels"
    assert (regions["width"], regions["height"], regions["mpp"]) == (1024, 1024, 0.25)
    assert len(regions["blur"]) == 2 and sorted(s["color"] for s in regions["ink"]) == ["black", "blue", "green"]
    for r in regions["blur"]:
        assert r["x"] >= 0 and r["x"] + r["w"] <= 1024 and r["y"] >= 0 and r["y"] + r["h"] <= 1024
        assert 1.5 <= r["sigma"] <= 4.0
    with openslide.OpenSlide(path) as slide:
        assert slide.level_dimensions == ((1024, 1024), (512, 512))
    source = render_slide(width=1024, height=1024, seed=tcga_slide_specs(1, seed=4)[0].seed, qc_regions=True)
    assert {k: v for k, v in source.regions_json().items()} == {k: v for k, v in regions.items() if k != "slide"}
    for x, y in [(0, 0), (256, 512), (700, 300)]:
        assert region_shares(regions, x, y, 256, 256) == source.shares(x, y, 256, 256)


def test_qc_regions_are_where_the_sidecar_says(qc_source):
    base = qc_source.base
    for r in qc_source.blur:  # inside a box: blurred; the base render is the same place in focus
        cx, cy = r.x + r.w // 2 - 64, r.y + r.h // 2 - 64
        sharp, soft = _gray(base(cx, cy, 128, 128)), _gray(qc_source(cx, cy, 128, 128))
        lap = [float(cv2.Laplacian(t, cv2.CV_32F).var()) for t in (sharp, soft)]
        if sharp.mean() < 215:  # tissue there (a box is placed on tissue, its middle almost always is)
            assert lap[1] < 0.2 * lap[0]
    for stroke in qc_source.ink:  # under a stroke's core: the base's light times the ink's transmittance
        x, y = stroke.points[0]
        x0, y0 = max(0, x - 8), max(0, y - 8)
        cover = stroke.coverage(x0, y0, 16, 16)
        assert (cover == 1.0).all()
        expected = base(x0, y0, 16, 16) * INK_TRANSMITTANCE[stroke.color] ** stroke.strength
        if not any(b.touches(x0, y0, 16, 16, pad=b.margin) for b in qc_source.blur):
            assert np.abs(qc_source(x0, y0, 16, 16).astype(float) - expected).max() <= 1.0
    far = [
        (x, y)
        for y in range(0, 2048 - 256, 256)
        for x in range(0, 2048 - 256, 256)
        if not any(b.touches(x, y, 256, 256, pad=b.margin) for b in qc_source.blur)
        and not any(s.coverage(x, y, 256, 256).any() for s in qc_source.ink)
    ]
    assert far
    for x, y in far[:4]:  # away from every region the slide is the base slide, pixel for pixel
        np.testing.assert_array_equal(qc_source(x, y, 256, 256), base(x, y, 256, 256))


def test_qc_regions_join_without_seams(qc_source):
    whole = qc_source(0, 0, 2048, 2048)
    for r in qc_source.blur:
        np.testing.assert_array_equal(
            qc_source(r.x - 7, r.y + 5, 200, 130), whole[r.y + 5 : r.y + 135, r.x - 7 : r.x + 193]
        )
    for s in qc_source.ink:
        x, y = (max(0, v) for v in s.bbox[:2])
        np.testing.assert_array_equal(qc_source(x + 3, y + 9, 256, 256), whole[y + 9 : y + 265, x + 3 : x + 259])


def test_base_without_artefacts_is_the_same_slide():
    full = render_slide(width=1024, height=1024, seed=9)
    folds_only = SyntheticSlide(width=1024, height=1024, seed=9, artefacts=("fold",))
    assert folds_only.artefact_boxes["fold"] == full.artefact_boxes["fold"]
    assert not folds_only.artefact_boxes["blur"] and not folds_only.artefact_boxes["green_ink"]
    a, b = full(0, 0, 1024, 1024), folds_only(0, 0, 1024, 1024)
    differs = np.zeros((1024, 1024), bool)
    for kind in ("blur", "green_ink", "blue_ink"):
        for x, y, w, h in full.artefact_boxes[kind]:
            differs[max(0, y - 64) : y + h + 64, max(0, x - 64) : x + w + 64] = True
    np.testing.assert_array_equal(a[~differs], b[~differs])
    with pytest.raises(ValueError, match="unknown artefacts"):
        SyntheticSlide(width=256, height=256, seed=0, artefacts=("smudge",))
    with pytest.raises(ValueError, match="unknown ink colour"):
        ArtefactSlide(folds_only, [], [InkStroke("red", ((0, 0), (10, 10)), 4, 1.0)])
