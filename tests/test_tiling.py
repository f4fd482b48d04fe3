"""`srtn tile` end to end on real files: generated SVS/TIFF slides and the shared OpenSlide fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from srtn.config.base import load_config
from srtn.config.tile import TileConfig
from srtn.data.manifest import read_manifest
from srtn.data.quality import downsample, rejection_reason
from srtn.data.reader import read_split_table
from srtn.data.schema import decode_png
from srtn.data.tile_job import run_tiling
from srtn.synth import write_tcga_dataset

ROOT = Path(__file__).resolve().parents[1]
CAP = 6
BAD = {"unreadable.svs", "unopenable.tiff"}


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("slides")
    return sorted(write_tcga_dataset(out, slides=6, seed=7, width=1536, height=1536, tissue_fraction=0.45))


def _config(inputs: list[str], output: Path, *extra: str) -> TileConfig:
    return load_config(
        TileConfig,
        ROOT / "configs/data/tcga_kirc_seed.yaml",
        [f"output={output}", f"max_tiles_per_slide={CAP}", *extra],
        data={"input": inputs},
    )


@pytest.fixture(scope="module")
def tiled(slides, tmp_path_factory, openslide_fixtures, ray_session):
    """One run over good slides, every shared fixture file and a truncated slide."""
    work = tmp_path_factory.mktemp("tiled")
    truncated = work / "TCGA-TR-0001-01Z-00-DX1.truncated.svs"
    data = slides[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    # boxes.png would share the id `boxes` with boxes.tiff (a ConfigError): it is tiled on its own below
    fixtures = sorted(str(p) for p in openslide_fixtures.iterdir() if p.suffix != ".md" and p.name != "boxes.png")
    inputs = [str(s) for s in slides] + fixtures + [str(truncated)]
    cfg = _config(inputs, work / "out")
    code = run_tiling(cfg)
    return cfg, code, read_manifest(str(cfg.output))


def _records(manifest):
    return {Path(r["uri"]).name: r for r in manifest["sources"]}


def _all_rows(output):
    import pyarrow as pa

    return pa.concat_tables([read_split_table(str(output), s) for s in ("train", "val", "test")]).to_pylist()


def test_bad_files_are_recorded_and_good_slides_complete(tiled, slides):
    _, code, manifest = tiled
    assert code == 0  # some failed, not all, not strict
    rec = _records(manifest)
    for name in [*BAD, "TCGA-TR-0001-01Z-00-DX1.truncated.svs"]:
        assert rec[name]["status"] == "failed", name
        assert rec[name]["error"], name
    assert "Bogus marker length" in rec["unreadable.svs"]["error"] or "tissue mask" in rec["unreadable.svs"]["error"]
    assert rec["small.svs"]["status"] == "done" and rec["small.svs"]["kept"] == 0
    assert rec["boxes.tiff"]["status"] == "done"
    for s in slides:
        assert rec[s.name]["status"] == "done"
        assert rec[s.name]["kept"] == CAP  # 1536^2 slides with ~45% tissue have far more than 6 good tiles


def test_every_kept_tile_passes_filters_and_lr_matches(tiled):
    cfg, _, _ = tiled
    rows = _all_rows(cfg.output)
    assert rows
    thresholds = cfg.filters.thresholds()
    for row in rows:
        hr = decode_png(row["hr"])
        assert hr.shape == (256, 256, 3) and row["hr_height"] == row["hr_width"] == 256
        assert rejection_reason(hr, thresholds) is None
        for scale in (4, 8):
            lr = decode_png(row[f"lr_x{scale}"])
            assert np.array_equal(lr, downsample(hr, scale, cfg.lr.method))
        assert row["origin"] == "downsampled" and row["augmented"] is False
        assert row["mpp"] == pytest.approx(0.25)


def test_counts_match_manifest_and_groups_do_not_leak(tiled):
    cfg, _, manifest = tiled
    rows = _all_rows(cfg.output)
    totals = manifest["totals"]
    assert len(rows) == totals["kept"] == sum(totals["per_split"].values())
    for split in ("train", "val", "test"):
        assert totals["per_split"][split] == sum(r["split"] == split for r in rows)
    per_source = {}
    for r in rows:
        per_source[r["source_id"]] = per_source.get(r["source_id"], 0) + 1
    for rec in manifest["sources"]:
        assert per_source.get(rec["source_id"], 0) == rec["kept"]
    splits_of_group: dict[str, set[str]] = {}
    for r in rows:
        splits_of_group.setdefault(r["group_id"], set()).add(r["split"])
        assert r["group_id"].startswith("TCGA-") and r["group_id"].count("-") == 2  # patient barcode
    assert all(len(s) == 1 for s in splits_of_group.values())
    assert len({r["tile_id"] for r in rows}) == len(rows)


def test_rejections_are_counted_and_decodes_stay_close_to_kept(tiled, slides):
    _, _, manifest = tiled
    rec = _records(manifest)
    for s in slides:
        r = rec[s.name]
        assert r["decoded"] == r["kept"] + sum(v for k, v in r["rejected"].items())
        assert r["tissue_candidates"] < r["grid_tiles"]  # background never decoded
    rejected = manifest["totals"]["rejected"]
    assert sum(rejected.values()) > 0


def test_strict_fails_when_any_slide_fails(tiled, tmp_path, openslide_fixtures):
    inputs = [str(openslide_fixtures / "small.svs"), str(openslide_fixtures / "boxes.png")]
    cfg = _config(inputs, tmp_path, "strict=true")
    assert run_tiling(cfg) == 1
    cfg = _config([str(openslide_fixtures / "boxes.png")], tmp_path / "b")
    assert run_tiling(cfg) == 1  # every slide failed
    [rec] = read_manifest(str(tmp_path / "b"))["sources"]
    assert rec["status"] == "failed" and "not a slide" in rec["error"] and rec["files"] == []


def test_single_slide_splits_by_spatial_blocks(slides, tmp_path, ray_session):
    cfg = load_config(
        TileConfig,
        ROOT / "configs/data/tcga_kirc_mini.yaml",
        [f"output={tmp_path}", "split.block_size=512", "max_tiles_per_slide=40"],
        data={"input": str(slides[1])},
    )
    assert run_tiling(cfg) == 0
    rows = _all_rows(tmp_path)
    groups: dict[str, set[str]] = {}
    for r in rows:
        groups.setdefault(r["group_id"], set()).add(r["split"])
        bx, by = r["group_id"].split("#b")[1].split("_")
        assert (int(bx), int(by)) == (r["x"] // 512, r["y"] // 512)
    assert all(len(v) == 1 for v in groups.values())
    assert len(groups) > 1


def test_rerun_skips_done_and_overwrite_rebuilds(tiled):
    cfg, _, _ = tiled
    before = {r["tile_id"] for r in _all_rows(cfg.output)}
    assert run_tiling(cfg) == 0
    again = read_manifest(str(cfg.output))
    done = [r for r in again["sources"] if r["status"] == "done"]
    assert done and all(r.get("resumed") for r in done)
    assert {r["tile_id"] for r in _all_rows(cfg.output)} == before
    cfg2 = cfg.model_copy(update={"overwrite": True})
    assert run_tiling(cfg2) == 0
    assert not any(r.get("resumed") for r in read_manifest(str(cfg.output))["sources"])
    assert {r["tile_id"] for r in _all_rows(cfg.output)} == before


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_tile_set(slides, tmp_path, ray_session):
    """Kill a real `srtn tile` process after its first slide, rerun, compare with an uninterrupted run."""
    inputs = [str(s) for s in slides]
    reference = _config(inputs, tmp_path / "reference")
    assert run_tiling(reference) == 0
    expected = {r["tile_id"] for r in _all_rows(reference.output)}

    out = tmp_path / "killed"
    listing = tmp_path / "slides.txt"
    listing.write_text("\n".join(inputs))
    cmd = [
        sys.executable, "-m", "srtn.cli", "tile", "--config", str(ROOT / "configs/data/tcga_kirc_seed.yaml"),
        "--set", f"input={listing}", "--set", f"output={out}", "--set", f"max_tiles_per_slide={CAP}",
        "--set", "execution.concurrency=1",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status_dir = out / "_status"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if status_dir.is_dir() and len(list(status_dir.glob("*.json"))) >= 1:
            break
        time.sleep(0.2)
    finished_alone = proc.poll() is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(status_dir.glob("*.json")))
    assert not finished_alone and 1 <= done_before < len(slides)
    assert not (out / "_manifest.json").exists()

    resumed = _config(inputs, out)
    assert run_tiling(resumed) == 0
    manifest = read_manifest(str(out))
    assert sum(bool(r.get("resumed")) for r in manifest["sources"]) >= done_before
    assert {r["tile_id"] for r in _all_rows(out)} == expected
    shutil.rmtree(out)


def test_console_of_srtn_tile_is_short_and_free_of_ray_internals(slides, tmp_path, ray_session, capfd):
    """The user's story only: the job's lines and a bar over slides; Ray Data's execution plans, progress
    dumps and INFO lines stay in Ray's log files (ray-data.log)."""
    from srtn.cli import main

    input_dir = tmp_path / "three"
    input_dir.mkdir()
    for s in slides[:3]:
        (input_dir / s.name).symlink_to(s)
    args = ["--config", str(ROOT / "configs/data/tcga_kirc_seed.yaml"), "--set", f"input={input_dir}"]
    args += ["--set", f"output={tmp_path / 'out'}", "--set", f"max_tiles_per_slide={CAP}"]
    code = main(["tile", *args])
    out, err = capfd.readouterr()
    lines = (out + err).replace("\r", "\n").splitlines()
    assert code == 0
    assert "srtn tile: 3 slides, 0 already done, 3 to tile" in out
    assert "tiling: 100%" in err  # the bar over slides reached its end
    assert not [line for line in lines if " INFO " in line or "logging_progress" in line or "Execution plan" in line]
    bar_updates = [line for line in lines if line.startswith("tiling:")]
    assert len(lines) - len(bar_updates) + 1 <= 25  # a bar redrawn in place is one line on a terminal
