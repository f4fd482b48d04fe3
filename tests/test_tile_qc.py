"""`srtn tile` with issue 17's parts wired in: focus and ink filters on slides with known blurred and inked
regions, scanner-native LR from the slide's own levels, the split by tissue source site, the QC report."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
from test_qc import _Index

from srtn.config.base import load_config
from srtn.config.tile import TileConfig
from srtn.data.manifest import read_manifest
from srtn.data.reader import read_split_table
from srtn.data.schema import decode_png
from srtn.data.slides import read_rgb
from srtn.data.tile_job import run_tiling
from srtn.errors import ConfigError
from srtn.synth import region_shares, write_tcga_dataset
from srtn.synth.tcga import read_regions
from srtn.vocab import SPLITS

ROOT = Path(__file__).resolve().parents[1]
CAP = 400  # every passing tile: the share in a region is measured over all of them


@pytest.fixture(scope="module")
def qc_slides(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("qc_slides")
    return write_tcga_dataset(out, slides=3, seed=11, width=3072, height=3072, fmt="svs", qc_regions=True)


def _cfg(config: str, inp: Path, out: Path, *extra: str) -> TileConfig:
    overrides = [f"input={inp}", f"output={out}", f"max_tiles_per_slide={CAP}", *extra]
    return load_config(TileConfig, ROOT / "configs/data" / config, overrides)


def _rows(out: Path) -> list[dict]:
    return [
        r for s in SPLITS for r in read_split_table(str(out), s, columns=["tile_id", "source_id", "x", "y"]).to_pylist()
    ]


def _in_region(rows: list[dict], slides: list[Path], size: int = 256) -> int:
    """Kept tiles at least half inside a blurred box or under ink (the synthetic slides' sidecars)."""
    regions = {p.name.split(".")[0]: read_regions(p) for p in slides}
    bad = 0
    for r in rows:
        sidecar = next(v for k, v in regions.items() if r["source_id"].startswith(k))
        shares = region_shares(sidecar, r["x"], r["y"], size, size)
        bad += max(shares.values()) >= 0.5
    return bad


@pytest.fixture(scope="module")
def both_configs(qc_slides, tmp_path_factory, ray_session):
    inp = qc_slides[0].parent
    seed_out, default_out = tmp_path_factory.mktemp("seed"), tmp_path_factory.mktemp("default")
    assert run_tiling(_cfg("tcga_kirc_seed.yaml", inp, seed_out)) == 0
    assert run_tiling(_cfg("tcga_kirc.yaml", inp, default_out)) == 0
    return seed_out, default_out


def test_focus_and_ink_filters_drop_the_tiles_in_bad_regions(both_configs, qc_slides):
    seed_out, default_out = both_configs
    seed_rows, default_rows = _rows(seed_out), _rows(default_out)
    assert _in_region(seed_rows, qc_slides) > 0.05 * len(seed_rows)  # the seed's filters keep them
    assert _in_region(default_rows, qc_slides) <= 0.01 * len(default_rows)
    rejected = read_manifest(str(default_out))["totals"]["rejected"]
    assert rejected.get("out_of_focus", 0) > 0 and rejected.get("pen_ink", 0) > 0
    assert not {"out_of_focus", "pen_ink"} & set(read_manifest(str(seed_out))["totals"]["rejected"])


def test_the_seed_config_keeps_todays_tile_set(both_configs, qc_slides, tmp_path):
    """tcga_kirc.yaml with the new filters switched off is today's config; the seed config cuts the same tiles."""
    seed_out, _ = both_configs
    today = tmp_path / "today"
    cfg = _cfg("tcga_kirc.yaml", qc_slides[0].parent, today, "filters.max_ink_fraction=null", "filters.max_blur=null")
    assert run_tiling(cfg) == 0
    assert {r["tile_id"] for r in _rows(today)} == {r["tile_id"] for r in _rows(seed_out)}


def test_qc_report_lists_every_slide_and_its_pictures_decode(both_configs, qc_slides, tmp_path, openslide_fixtures):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(qc_slides[0], inp / qc_slides[0].name)
    shutil.copy(openslide_fixtures / "unopenable.tiff", inp / "TCGA-ZZ-0001-01Z-00-DX1.bad.tiff")
    out = tmp_path / "out"
    assert run_tiling(_cfg("tcga_kirc.yaml", inp, out)) == 0
    manifest = read_manifest(str(out))
    index = _Index()
    index.feed((out / "_qc" / "index.html").read_text())
    assert sorted(r["id"] for r in index.rows) == sorted(r["source_id"] for r in manifest["sources"])
    failed = [r for r in index.rows if "failed" in r["class"]]
    assert len(failed) == 1 and "TCGA-ZZ-0001" in failed[0]["id"]
    for row in index.rows:
        assert row["links"], row["id"]
        for link in row["links"]:
            data = (out / "_qc" / link).read_bytes()
            img = cv2.imdecode(np.frombuffer(data, np.uint8), 1)
            assert img is not None and img.size > 0, link


def test_pyramid_lr_is_the_slides_own_level(qc_slides, tmp_path, ray_session):
    out = tmp_path / "out"
    extra = ["lr.method=pyramid", "lr.scales=[2, 4]", "max_tiles_per_slide=6", "qc.enabled=false"]  # levels at 2, 4
    cfg = _cfg("tcga_kirc.yaml", qc_slides[0].parent, out, *extra)
    assert run_tiling(cfg) == 0
    rows = [r for s in SPLITS for r in read_split_table(str(out), s).to_pylist()]
    assert rows and {r["origin"] for r in rows} == {"pyramid"}
    by_name = {p.name.split(".")[0]: p for p in qc_slides}
    for r in rows:
        path = next(p for k, p in by_name.items() if r["source_id"].startswith(k))
        with openslide.OpenSlide(str(path)) as slide:
            for scale in (2, 4):
                level = next(i for i, ds in enumerate(slide.level_downsamples) if abs(ds - scale) < 0.02 * scale)
                expected = read_rgb(slide, r["x"], r["y"], level, 256 // scale, 256 // scale)
                got = decode_png(r[f"lr_x{scale}"])
                assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # lossless PNG: equal


def test_pyramid_without_a_level_at_the_scale_fails_or_falls_back(qc_slides, tmp_path, ray_session):
    inp = qc_slides[0].parent
    extra = ["lr.method=pyramid", "lr.scales=[3]", "tiles.size=252", "max_tiles_per_slide=2", "qc.enabled=false"]
    assert run_tiling(_cfg("tcga_kirc.yaml", inp, tmp_path / "a", *extra)) == 1
    errors = {r["error"] for r in read_manifest(str(tmp_path / "a"))["sources"]}
    assert all("no level at x[3]" in e and "downsamples 1, 2, 4" in e for e in errors), errors
    assert run_tiling(_cfg("tcga_kirc.yaml", inp, tmp_path / "b", *extra, "lr.pyramid_fallback=lanczos")) == 0
    rows = read_split_table(str(tmp_path / "b"), "train").to_pylist()
    assert rows and {r["origin"] for r in rows} == {"downsampled"}


def test_split_by_site_holds_each_site_in_one_split(tmp_path, ray_session):
    slides = write_tcga_dataset(tmp_path / "in", slides=10, seed=5, width=1024, height=1024, fmt="svs")
    out = tmp_path / "out"
    cfg = _cfg("tcga_kirc.yaml", slides[0].parent, out, "split.by=site", "max_tiles_per_slide=3", "qc.enabled=false")
    assert run_tiling(cfg) == 0
    splits_of_site: dict[str, set[str]] = {}
    for s in SPLITS:
        for r in read_split_table(str(out), s, columns=["group_id", "split"]).to_pylist():
            assert r["group_id"].startswith("TCGA-") and len(r["group_id"]) == len("TCGA-A3")
            splits_of_site.setdefault(r["group_id"], set()).add(r["split"])
    assert splits_of_site and all(len(v) == 1 for v in splits_of_site.values())
    (slides[0].parent / "not-a-barcode.svs").write_bytes(slides[0].read_bytes())
    with pytest.raises(ConfigError, match="not-a-barcode") as info:
        run_tiling(cfg)
    assert info.value.key == "split.by"
