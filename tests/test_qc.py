"""The visual QC report (`srtn.data.qc`, `srtn.data.qc_index`): real synthetic SVS slides read by OpenSlide, a real
unopenable file, the page parsed with html.parser and every picture it links decoded."""

from __future__ import annotations

import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from srtn.data.qc import QC_DIR, SPLIT_COLOURS, TileMarks, qc_files, write_slide_qc
from srtn.data.qc_index import INDEX_NAME, write_qc_index
from srtn.data.quality import CALIBRATED_THRESHOLDS, rejection_reason
from srtn.data.slides import mask_fraction, open_slide, read_rgb, tile_grid, tissue_mask
from srtn.data.splits import assign_split
from srtn.synth import write_tcga_dataset

TISSUE = {"target_size": 512, "min_saturation": 20, "max_gray": 225}
SIZE = 128


def _tile_like_the_job(path: Path) -> tuple[dict, TileMarks]:
    """What the tiling job records for one slide: its manifest record and the kept/rejected tiles."""
    source_id = path.name.split(".")[0]
    kept, rejected = [], []
    with open_slide(path) as slide:
        mask, ds = tissue_mask(slide, **TISSUE)
        for x, y in tile_grid(*slide.dimensions, size=SIZE, stride=SIZE):
            if mask_fraction(mask, ds, x, y, SIZE) < 0.5:
                continue
            reason = rejection_reason(read_rgb(slide, x, y, 0, SIZE, SIZE), CALIBRATED_THRESHOLDS)
            if reason:
                rejected.append((x, y, reason))
            else:
                kept.append((x, y, assign_split(source_id[:12], (0.4, 0.3, 0.3))))
    record = {
        "source_id": source_id,
        "status": "done",
        "seen": len(kept) + len(rejected),
        "kept": len(kept),
        "rejected": dict(Counter(r for *_, r in rejected)),
        "split_counts": dict(Counter(s for *_, s in kept)),
    }
    return record, TileMarks(size0=SIZE, kept=kept, rejected=rejected)


class _Index(HTMLParser):
    """Rows of the index (`tr` of class `slide`) with the links and images inside each."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self._row: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "slide" in (a.get("class") or "").split():
            self._row = {"id": a.get("id"), "class": a["class"].split(), "links": [], "text": ""}
            self.rows.append(self._row)
        elif self._row is not None and tag == "a":
            self._row["links"].append(a["href"])
        elif self._row is not None and tag == "img":
            self._row["links"].append(a["src"])

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row is not None:
            self._row["text"] += data + " "


@pytest.fixture(scope="module")
def report(tmp_path_factory, openslide_fixtures) -> tuple[Path, list[dict], list[TileMarks]]:
    root = tmp_path_factory.mktemp("qc")
    slides = write_tcga_dataset(root / "slides", slides=2, seed=21, width=1024, height=1024, fmt="svs", qc_regions=True)
    out = root / "shards"
    records, marks = [], []
    for path in slides:
        record, tiles = _tile_like_the_job(path)
        record["qc"] = write_slide_qc(str(out), str(path), record, tiles, tissue=TISSUE)
        records.append(record)
        marks.append(tiles)
    failed = {"source_id": "unopenable", "status": "failed", "error": "cannot open slide: Unsupported TIFF compression"}
    failed |= {"kept": 0, "seen": 0, "files": [], "split_counts": {}}
    failed["qc"] = write_slide_qc(str(out), str(openslide_fixtures / "unopenable.tiff"), failed, None, tissue=TISSUE)
    records.append(failed)
    write_qc_index(str(out), json.loads(json.dumps(records)))  # as read back from a manifest
    return out, records, marks


def test_index_has_one_entry_per_slide_and_every_linked_picture_decodes(report):
    out, records, _ = report
    page = _Index()
    page.feed((out / QC_DIR / INDEX_NAME).read_text())
    assert sorted(r["id"] for r in page.rows) == sorted(r["source_id"] for r in records)
    for row in page.rows:
        assert len(row["links"]) == 3  # name -> picture, thumbnail -> picture, thumbnail image
        for link in row["links"]:
            assert "://" not in link and not link.startswith("/")  # relative: opens from the file system
            with Image.open(out / QC_DIR / unquote(link)) as img:
                img.load()
                assert img.width > 100 and img.height > 100
    rows = {r["id"]: r for r in page.rows}
    assert "failed" in rows["unopenable"]["class"] and "Unsupported TIFF compression" in rows["unopenable"]["text"]
    for rec in records[:2]:
        text = rows[rec["source_id"]]["text"]
        assert "done" in text and f" {rec['kept']} " in f" {text} "
        assert all(f"{reason}: {n}" in text for reason, n in rec["rejected"].items())


def test_slide_picture_draws_kept_tiles_by_split_and_rejections(report):
    out, records, marks = report
    assert any(m.rejected for m in marks) and any(m.kept for m in marks)
    reasons = {r for m in marks for *_, r in m.rejected}
    assert {"pen_ink", "out_of_focus"} & reasons  # the planted artefacts were cut, and show
    for rec, tiles in zip(records[:2], marks):
        picture = np.asarray(Image.open(out / rec["qc"]["png"]).convert("RGB")).astype(int)
        assert picture.shape[1] > 1024  # the 1024-px thumbnail at scale 1, then the panel
        for x, y, split in tiles.kept:
            edge = picture[y + SIZE // 2, x]  # middle of the box's left edge
            assert np.abs(edge - SPLIT_COLOURS[split]).max() <= 24, (x, y, split, edge)
    assert rec["qc"] == qc_files(rec["source_id"])


def test_a_record_without_pictures_gets_a_card(tmp_path: Path):
    died = {"source_id": "TCGA-A3-3306-01Z", "status": "failed", "error": "worker died", "kept": 0, "seen": 0}
    write_qc_index(str(tmp_path), [died])
    page = _Index()
    page.feed((tmp_path / QC_DIR / INDEX_NAME).read_text())
    [row] = page.rows
    for link in row["links"]:
        with Image.open(tmp_path / QC_DIR / unquote(link)) as img:
            img.load()
    assert "worker died" in row["text"]


def test_tile_marks_round_trip_through_json():
    marks = TileMarks(size0=512, kept=[(0, 512, "train")], rejected=[(512, 0, "pen_ink")])
    assert TileMarks.from_json(json.loads(json.dumps(marks.to_json()))) == TileMarks(
        size0=512, kept=[(0, 512, "train")], rejected=[(512, 0, "pen_ink")]
    )
