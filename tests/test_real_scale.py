"""Real slides at real scale: physical tile size (`tiles.mpp`, `slide_mpp`), whole-slide extraction streamed
in row groups, and region tasks over one slide giving the same tiles as one task."""

from __future__ import annotations

import functools
import itertools
import json
import os
from pathlib import Path

import cv2
import numpy as np
import openslide
import pyarrow.parquet as pq
import pytest
from PIL import Image
from shard_utils import assert_folder_is_manifest

from srtn.config.base import load_config
from srtn.config.tile import TileConfig
from srtn.data.manifest import read_manifest
from srtn.data.mpp import load_slide_mpp, lookup_mpp, tile_geometry
from srtn.data.quality import rejection_reason
from srtn.data.reader import read_split_table
from srtn.data.region_progress import ProgressRef, RegionProgress, read_progress, region_progress, teller
from srtn.data.region_tasks import run_region_tasks
from srtn.data.regions import RegionMerger, next_regions, process_region, region_bounds, region_items
from srtn.data.schema import decode_png
from srtn.data.slides import mask_fraction, read_rgb, tile_grid, tissue_mask
from srtn.data.tile_job import run_tiling
from srtn.data.tile_slide import opened, plan_slide, tile_slide
from srtn.errors import ConfigError
from srtn.pyramid import write_pyramid
from srtn.synth import tcga_slide_specs
from srtn.synth.tcga import render_slide

ROOT = Path(__file__).resolve().parents[1]
SIZE = 128


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _cfg(output: Path, *extra: str, inputs: list[str] | None = None) -> TileConfig:
    return load_config(
        TileConfig,
        ROOT / "configs/data/tcga_kirc_seed.yaml",
        [f"output={output}", f"tiles.size={SIZE}", "qc.enabled=false", *extra],
        data={"input": inputs or ["unused"]},
    )


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    """One tissue, scanned at 40x (0.25 um/px, 2048 px, lossless so its levels are exact box means of level 0)
    and at 20x (0.5 um/px, JPEG: the same field in 1024 px, an anti-aliased x2 of the 40x pixels), plus a slide
    whose file carries no MPP."""
    out = tmp_path_factory.mktemp("scans")
    spec = tcga_slide_specs(2, seed=3, fmt="svs")
    source = render_slide(width=2048, height=2048, seed=spec[0].seed, tissue_fraction=0.5)
    full = source(0, 0, 2048, 2048)
    x40 = out / spec[0].name
    write_pyramid(x40, full, width=2048, height=2048, mpp=0.25, app_mag=40, flavor="aperio", compression="lossless")
    half = cv2.resize(full, (1024, 1024), interpolation=cv2.INTER_AREA)
    x20 = out / spec[1].name
    write_pyramid(x20, half, width=1024, height=1024, mpp=0.5, app_mag=20, flavor="aperio", quality=95)
    nompp = out / "no-mpp-slide.tiff"
    write_pyramid(nompp, full[:1024, :1024].copy(), width=1024, height=1024, mpp=None, flavor="generic")
    return {"x40": x40, "x20": x20, "nompp": nompp}


def test_geometry_picks_the_coarsest_level_at_or_below_the_target():
    ds = (1.0, 4.0002, 16.001)  # an Aperio 40x layout
    assert tile_geometry(size=256, step=256, level=0, target_mpp=0.5, slide_mpp=0.25, downsamples=ds).level == 0
    g = tile_geometry(size=256, step=256, level=0, target_mpp=1.0, slide_mpp=0.25, downsamples=ds)
    assert (g.level, g.read_size, g.size0) == (1, 256, 1024)
    g = tile_geometry(size=256, step=256, level=0, target_mpp=2.0, slide_mpp=0.25, downsamples=ds)
    assert (g.level, g.read_size, g.mpp) == (1, 512, 2.0)
    with pytest.raises(ValueError, match="upsampled"):
        tile_geometry(size=256, step=256, level=0, target_mpp=0.25, slide_mpp=0.5, downsamples=ds)
    with pytest.raises(ValueError, match="no MPP"):
        tile_geometry(size=256, step=256, level=0, target_mpp=0.5, slide_mpp=None, downsamples=ds)


def test_mixed_20x_and_40x_give_tiles_of_the_same_physical_content(scans, tmp_path):
    cfg = _cfg(tmp_path, "tiles.mpp=0.5", "max_tiles_per_slide=8")
    by_scan = {}
    for name, level in (("x40", 1), ("x20", 0)):  # 40x: its x2 level is at 0.5 um/px and is read
        result = tile_slide(str(scans[name]), source_id=name, cfg=cfg)
        assert result.rows and result.record["tile_mpp"] == 0.5
        with openslide.OpenSlide(str(scans[name])) as slide:
            factor = 0.5 / float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
            for row in result.rows:
                assert row["mpp"] == 0.5 and row["level"] == level and row["hr_width"] == SIZE
                footprint = round(SIZE * factor)
                region = read_rgb(slide, row["x"], row["y"], 0, footprint, footprint)
                # an independent anti-aliased resample: Pillow's box filter
                expected = np.asarray(Image.fromarray(region).resize((SIZE, SIZE), Image.Resampling.BOX))
                assert psnr(decode_png(row["hr"]), expected) >= 40
        by_scan[name] = result
    # The same physical tile (40x at level-0 (2x, 2y) is 20x at (x, y)) holds the same tissue in both scans.
    tiles20 = {(r["x"], r["y"]): decode_png(r["hr"]) for r in by_scan["x20"].rows}
    with openslide.OpenSlide(str(scans["x40"])) as slide40:
        for (x, y), hr20 in list(tiles20.items())[:4]:
            region = read_rgb(slide40, 2 * x, 2 * y, 0, 2 * SIZE, 2 * SIZE)
            hr40 = cv2.resize(region, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            assert psnr(hr40, hr20) >= 30  # two JPEG encodings of one field apart


def test_a_slide_without_mpp_fails_with_the_reason_and_succeeds_with_slide_mpp(scans, tmp_path, ray_session):
    inputs = [str(scans["nompp"])]
    cfg = _cfg(tmp_path / "a", "tiles.mpp=0.5", "max_tiles_per_slide=4", inputs=inputs)
    assert run_tiling(cfg) == 1  # every slide failed
    (record,) = read_manifest(str(cfg.output))["sources"]
    assert record["status"] == "failed" and "no MPP" in record["error"]

    table = tmp_path / "mpp.csv"
    table.write_text("slide,mpp\nno-mpp-*,0.25\n")
    cfg = _cfg(tmp_path / "b", "tiles.mpp=0.5", "max_tiles_per_slide=4", f"slide_mpp={table}", inputs=inputs)
    assert run_tiling(cfg) == 0
    (record,) = read_manifest(str(cfg.output))["sources"]
    assert record["status"] == "done" and record["mpp"] == 0.25 and record["mpp_source"] == "slide_mpp"
    rows = read_split_table(str(cfg.output), "train").to_pylist() + read_split_table(str(cfg.output), "val").to_pylist()
    rows += read_split_table(str(cfg.output), "test").to_pylist()
    assert len(rows) == record["kept"] > 0 and {r["mpp"] for r in rows} == {0.5}


def test_slide_mpp_tables_name_the_bad_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,mpp\na,0.25\nb,zero\n")
    with pytest.raises(ConfigError, match=r"bad\.csv line 3"):
        load_slide_mpp(str(bad))
    (tmp_path / "nohead.csv").write_text("a,0.25\n")
    with pytest.raises(ConfigError, match="columns slide,mpp"):
        load_slide_mpp(str(tmp_path / "nohead.csv"))
    table = {"TCGA-*": 0.5, "exact-id": 0.25}
    assert lookup_mpp(table, source_id="exact-id", name="x.svs") == 0.25
    assert lookup_mpp(table, source_id="TCGA-AB-1234", name="x.svs") == 0.5
    assert lookup_mpp(table, source_id="other", name="other.svs") is None
    with pytest.raises(ConfigError, match="slide_mpp values must be positive"):
        _cfg(tmp_path, "slide_mpp={a: -1}")


def _independent_passing(path: Path, cfg: TileConfig) -> set[tuple[int, int]]:
    """Recount over the candidate grid without srtn's tiling code: every tissue candidate, read and filtered."""
    passing = set()
    with openslide.OpenSlide(str(path)) as slide:
        t = cfg.tissue
        mask, ds = tissue_mask(slide, target_size=t.target_size, min_saturation=t.min_saturation, max_gray=t.max_gray)
        w, h = slide.dimensions
        for x, y in tile_grid(w, h, size=SIZE, stride=SIZE):
            if mask_fraction(mask, ds, x, y, SIZE) >= t.min_fraction:
                tile = read_rgb(slide, x, y, 0, SIZE, SIZE)
                if rejection_reason(tile, cfg.filters.thresholds()) is None:
                    passing.add((x, y))
    return passing


def _tiles(output: Path) -> dict[str, tuple[int, int]]:
    rows = []
    for split in ("train", "val", "test"):
        rows += read_split_table(str(output), split, columns=["tile_id", "x", "y"]).to_pylist()
    return {r["tile_id"]: (r["x"], r["y"]) for r in rows}


def test_whole_slide_extraction_keeps_every_passing_candidate_and_regions_change_nothing(
    scans, tmp_path, ray_session, capsys
):
    inputs = [str(scans["x40"])]
    one = _cfg(tmp_path / "one", "max_tiles_per_slide=null", "execution.row_group_rows=16", inputs=inputs)
    assert run_tiling(one) == 0
    assert "regions:" not in capsys.readouterr().err  # one task: no region bar
    (record,) = read_manifest(str(one.output))["sources"]
    passing = _independent_passing(scans["x40"], one)
    assert record["kept"] == len(passing) > 32 and "regions" not in record
    assert set(_tiles(one.output).values()) == passing
    files = [p for p in Path(one.output).rglob("*.parquet")]
    assert max(pq.ParquetFile(f).metadata.num_row_groups for f in files) > 1  # streamed, not held whole
    assert max(pq.ParquetFile(f).metadata.row_group(0).num_rows for f in files) <= 16

    many = _cfg(tmp_path / "many", "max_tiles_per_slide=null", "execution.region_tiles=40", inputs=inputs)
    assert run_tiling(many) == 0
    (split_record,) = read_manifest(str(many.output))["sources"]
    assert split_record["regions"] >= 3 and split_record["kept"] == record["kept"]
    err, n = capsys.readouterr().err, split_record["regions"]
    bar = err[err.rindex("regions:") :].splitlines()[0].split("\r")[0]  # the region bar's last state
    assert bar.startswith("regions: 100%") and f"{n}/{n}" in bar and f"{record['kept']} tiles kept" in bar
    assert _tiles(many.output) == _tiles(one.output)
    assert split_record["split_counts"] == record["split_counts"]
    assert_folder_is_manifest(Path(many.output))  # sizes and hashes, taken while merging, match the files
    leftovers = [p.name for p in Path(many.output).rglob("*") if p.is_file() and ".tmp-" in p.name]
    assert leftovers == []
    assert run_tiling(many) == 0  # resumed: nothing re-tiled
    (again,) = read_manifest(str(many.output))["sources"]
    assert again.get("resumed") and _tiles(many.output) == _tiles(one.output)


def test_a_slide_is_cut_in_one_task_where_one_region_task_at_a_time_could_run(scans, tmp_path, monkeypatch):
    """With one slot (no Ray here, or a 1-CPU cluster) regions would run one after another and only add the
    merge (parts written, read back, rewritten), so a slide larger than a region is cut in one task, whole."""
    from srtn.data import region_tasks
    from srtn.data.tile_job import process_slide

    monkeypatch.setattr(region_tasks, "connected_ray", lambda: None)  # one slot
    inputs = [str(scans["x40"])]
    cfg = _cfg(tmp_path / "out", "max_tiles_per_slide=null", "execution.region_tiles=20", inputs=inputs)
    record = process_slide({"uri": inputs[0], "source_id": "s"}, cfg=cfg, group="spatial")
    assert record["status"] == "done" and "regions" not in record
    assert record["kept"] == len(_independent_passing(scans["x40"], cfg)) > 20


@pytest.mark.parametrize("cap", [30, 70])  # the first wave suffices / a second wave is needed
def test_a_capped_slide_cut_by_region_waves_keeps_what_one_task_keeps(scans, tmp_path, ray_session, cap):
    """Under a cap the kept tiles are the first `cap` passing candidates of the seeded order: region waves over
    a prefix of that order, merged up to the cap, give the same tiles and the same counts as one task."""
    inputs = [str(scans["x40"])]
    one = _cfg(tmp_path / "one", f"max_tiles_per_slide={cap}", inputs=inputs)
    assert run_tiling(one) == 0
    waves = _cfg(tmp_path / "waves", f"max_tiles_per_slide={cap}", "execution.region_tiles=20", inputs=inputs)
    assert run_tiling(waves) == 0
    (a,) = read_manifest(str(one.output))["sources"]
    (b,) = read_manifest(str(waves.output))["sources"]
    assert "regions" not in a and b["regions"] >= 2 and a["kept"] == b["kept"] == cap
    assert {k: b[k] for k in ("seen", "decoded", "rejected", "split_counts")} == {
        k: a[k] for k in ("seen", "decoded", "rejected", "split_counts")
    }
    assert _tiles(waves.output) == _tiles(one.output)
    leftovers = [p.name for p in Path(waves.output).rglob("*") if p.is_file() and ".tmp-" in p.name]
    assert leftovers == []


def test_next_regions_runs_waves_until_the_cap():
    items = [{"region": i, "start": 10 * i, "stop": 10 * i + 10} for i in range(6)]

    def result(i: int, kept: int) -> dict:
        return {"region": i, "error": "", "counts": json.dumps({"kept": kept, "visited": 10})}

    assert next_regions(items, [], None) == items  # whole slide: every region at once
    assert next_regions(items, [result(0, 10)], None) == []
    assert [it["region"] for it in next_regions(items, [], 25)] == [0, 1, 2]  # as many candidates as the cap
    half = [result(0, 5), result(1, 5), result(2, 5)]  # 50% pass: 10 more tiles need ~22 candidates
    assert [it["region"] for it in next_regions(items, half, 25)] == [3, 4, 5]
    assert next_regions(items, [result(0, 10), result(1, 10), result(2, 10)], 25) == []
    assert next_regions(items, [{"region": 0, "error": "boom"}], 25) == []


@pytest.mark.parametrize(
    ("candidates", "slots", "count"),
    [(1576, 1, 4), (1576, 2, 4), (6534, 1, 13), (6534, 2, 14), (6534, 4, 16), (1576, 64, 4), (512, 2, 1)],
)
def test_region_bounds_cover_the_order_in_a_multiple_of_the_slots(candidates, slots, count):
    """Equal contiguous chunks of at most region_tiles; more chunks than slots come in a multiple of the slots,
    so the last round keeps every CPU busy (13 regions on 2 CPUs left one idle for a whole region)."""
    bounds = region_bounds(candidates, 512, slots=slots)
    assert len(bounds) == count
    assert bounds[0][0] == 0 and bounds[-1][1] == candidates
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) <= 512 and max(sizes) - min(sizes) <= 1


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (the cluster tests' helper) with a bucket, for this module."""
    from cluster_utils import s3_bucket

    with s3_bucket(tmp_path_factory.mktemp("s3"), "shards") as s3:
        yield s3


def test_region_parts_stream_to_s3_and_merge_into_one_file_per_split(s3_env, monkeypatch):
    """The remote path of the streaming writer: parts uploaded under hidden keys, merged in region order into the
    published objects, no temporary key left; a failed merge publishes nothing."""
    from srtn.data.schema import empty_row
    from srtn.data.shard_writer import SourceShardWriter, append_part
    from srtn.data.shards import rows_to_table

    for key, value in s3_env["env"].items():
        monkeypatch.setenv(key, value)
    out = "s3://shards/out"

    def row(i: int, split: str) -> dict:
        return empty_row() | {"tile_id": f"t{i:03d}", "source_id": "s", "group_id": "g", "split": split, "x": i,
                              "y": 0, "level": 0, "hr": b"png", "hr_height": 1, "hr_width": 1}  # fmt: skip

    parts = []
    for region in range(3):
        with SourceShardWriter(out, "s", row_group_rows=4, part=f"r{region:05d}") as w:
            for i in range(region * 10, region * 10 + 10):
                w.add(row(i, "train" if i % 3 else "val"))
            parts += w.finish_parts()
    with SourceShardWriter(out, "s", row_group_rows=4) as merged:  # as RegionMerger merges them
        for part in parts:
            append_part(merged, part)
        files = merged.publish()

    def objects() -> set[str]:  # pyarrow leaves empty "folder/" markers where it deleted the last object
        listing = s3_env["client"].list_objects_v2(Bucket="shards", Prefix="out/").get("Contents", [])
        return {o["Key"] for o in listing if not o["Key"].endswith("/")}

    assert objects() == {"out/split=train/s.parquet", "out/split=val/s.parquet"}
    assert {f["split"]: f["rows"] for f in files} == {"train": 20, "val": 10}
    from srtn.data.reader import read_split_table

    ids = read_split_table(out, "train", columns=["tile_id"]).column("tile_id").to_pylist()
    assert ids == [f"t{i:03d}" for i in range(30) if i % 3]  # region order, then row order
    assert rows_to_table([row(0, "train")]).num_rows == 1

    with pytest.raises(KeyError), SourceShardWriter(out, "s", row_group_rows=4) as w:
        w.add(row(99, "train"))
        raise KeyError("a failure half way")
    assert objects() == set()  # the source's earlier files are withdrawn too: a failed source publishes nothing


def _broken_copy(slide: Path, tmp_path: Path) -> Path:
    """`slide` with zeroes over part of its level-0 tile data (deflate streams), a third into the file."""
    broken = tmp_path / "in" / slide.name
    broken.parent.mkdir()
    data = bytearray(slide.read_bytes())
    start = len(data) // 3
    data[start : start + 200_000] = bytes(200_000)
    broken.write_bytes(bytes(data))
    return broken


def test_a_failed_region_fails_the_slide_and_publishes_nothing(scans, tmp_path, ray_session):
    """Garbage in part of level 0's tile data: the region that reads it gives up (max_read_errors 1), so the
    slide is failed with the region's reason and none of the other regions' parts is published or left."""
    broken = _broken_copy(scans["x40"], tmp_path)
    cfg = _cfg(tmp_path / "out", "max_tiles_per_slide=null", "execution.region_tiles=20",
               "execution.max_read_errors=1", inputs=[str(broken)])  # fmt: skip
    assert run_tiling(cfg) == 1
    (record,) = read_manifest(str(cfg.output))["sources"]
    assert record["status"] == "failed" and "regions failed" in record["error"] and record["files"] == []
    assert [p.name for p in Path(cfg.output).rglob("*.parquet*")] == []


def test_no_region_is_cut_after_a_failed_one(scans, tmp_path, monkeypatch):
    """The slide fails with its first failed region, so the regions after it are not cut (a corrupt gigapixel
    slide costs the regions up to the bad one, not all of them), and nothing is left behind."""
    from srtn.data import region_tasks
    from srtn.errors import SlideError

    monkeypatch.setattr(region_tasks, "connected_ray", lambda: None)  # in this process, in order
    broken = _broken_copy(scans["x40"], tmp_path)
    cfg = _cfg(tmp_path / "out", "max_tiles_per_slide=null", "execution.region_tiles=20",
               "execution.max_read_errors=1", inputs=[str(broken)])  # fmt: skip
    with opened(str(broken)) as reader:
        plan = plan_slide(reader, source_id="s", cfg=cfg)
    items = region_items({"uri": str(broken), "source_id": "s"}, plan, cfg)
    merger = RegionMerger(str(broken), "s", cfg=cfg, plan=plan)
    results = run_region_tasks(items, cfg=cfg, group="spatial", plan=plan, merger=merger)
    assert [bool(r["error"]) for r in results] == [False] * (len(results) - 1) + [True]
    assert len(results) < len(items)
    with pytest.raises(SlideError, match="regions failed"):
        merger.finish()
    assert [p.name for p in Path(cfg.output).rglob("*") if p.is_file()] == []


def _region_results(slide: Path, cfg: TileConfig) -> tuple[list[dict], object]:
    """Every region of `slide` cut in this process (Ray-free) into cfg.output's hidden parts, and its plan."""
    with opened(str(slide)) as reader:
        plan = plan_slide(reader, source_id="s", cfg=cfg)
    items = region_items({"uri": str(slide), "source_id": "s"}, plan, cfg)
    return [process_region(it, cfg=cfg, group="spatial", plan=plan) for it in items], plan


def _published(output: Path) -> dict[str, list]:
    return {
        split: read_split_table(str(output), split, columns=["tile_id"]).column("tile_id").to_pylist()
        for split in ("train", "val", "test")
        if list(Path(output).glob(f"split={split}/*.parquet"))
    }


def test_a_region_task_cuts_with_the_slide_tasks_plan_and_does_not_plan_again(scans, tmp_path, monkeypatch):
    """Planning (the tissue mask, the candidate grid) grows with the slide's area and so does the number of
    regions: a region task given the slide task's plan never makes it again (14 regions of a 40k slide re-planned
    it for 4 CPU-s), and cuts the same tiles."""
    from srtn.data import tile_slide as tile_slide_module

    cfg = _cfg(tmp_path / "out", "max_tiles_per_slide=null", "execution.region_tiles=20", inputs=[str(scans["x40"])])
    with opened(str(scans["x40"])) as reader:
        plan = plan_slide(reader, source_id="s", cfg=cfg)
    items = region_items({"uri": str(scans["x40"]), "source_id": "s"}, plan, cfg)

    def no_plan(*args, **kwargs):
        raise AssertionError("a region task planned the slide again")

    monkeypatch.setattr(tile_slide_module, "plan_slide", no_plan)
    results = [process_region(it, cfg=cfg, group="spatial", plan=plan) for it in items]
    assert [r["error"] for r in results] == [""] * len(items) and len(items) >= 3
    visited = [tuple(v[:2]) for r in results for v in json.loads(r["visits"])]
    assert visited == [tuple(c) for c in plan.candidates]  # every candidate once, in the slide's order


@pytest.mark.parametrize("cap", [None, 70])
def test_region_merger_merges_in_region_order_whatever_order_results_arrive(scans, tmp_path, cap):
    """Regions merged as they come in (the slide task merges the Ray tasks' results while it cuts its share):
    arrival out of order gives the same files, rows in the same order, and the same record as all at once."""
    extra = [f"max_tiles_per_slide={'null' if cap is None else cap}", "execution.region_tiles=20"]
    records, files = [], []
    for name, order in (("in_order", 1), ("reversed", -1)):
        cfg = _cfg(tmp_path / name, *extra, inputs=[str(scans["x40"])])
        results, plan = _region_results(scans["x40"], cfg)
        assert len(results) >= 3
        told = RegionProgress()
        tell = teller(told, "s")
        tell("started", len(results))
        merger = RegionMerger(str(scans["x40"]), "s", cfg=cfg, plan=plan, on_merge=functools.partial(tell, "merged"))
        seen = []
        for r in results[::order]:
            merger.add(r)
            seen.append(told.snapshot()["merged"])
        record, _ = merger.finish()
        # the driver's region bar: nothing merged until region 0 is in; at the end every region, the slide's tiles
        assert seen == (list(range(1, len(results) + 1)) if order == 1 else [0] * (len(results) - 1) + [len(results)])
        assert told.snapshot() == {"slides": 1, "merged": len(results), "regions": len(results), "kept": record["kept"]}
        records.append({k: record[k] for k in ("kept", "seen", "decoded", "rejected", "split_counts", "regions")})
        files.append(_published(cfg.output))
        assert [p.name for p in Path(cfg.output).rglob("*") if ".tmp-" in p.name] == []
    assert records[0] == records[1] and files[0] == files[1]
    assert sum(len(v) for v in files[0].values()) == records[0]["kept"] == (cap or records[0]["kept"])


def test_slide_tasks_report_region_progress_through_rays_kv_store_without_a_process(tmp_path, ray_session):
    """The region bar's state travels through Ray's internal KV store (an actor was a worker process: 1.2 CPU-s
    of a 2-CPU whole-slide run): each call sends the slide's whole state, `finished` settles its region count,
    slides of other runs are not mixed in, and the run's keys are gone when it ends."""
    cfg = _cfg(tmp_path / "out", "max_tiles_per_slide=null")
    with region_progress(cfg) as ref, region_progress(cfg) as other:
        assert isinstance(ref, ProgressRef) and ref != other
        tell = teller(ref, "a")
        tell("started", 5)
        tell("merged", 2, 25)
        teller(ref, "b")("started", 4)
        teller(other, "c")("started", 9)
        assert read_progress(ref, RegionProgress(), set()).snapshot() == {
            "slides": 2,
            "merged": 2,
            "regions": 9,
            "kept": 25,
        }
        tell("finished")  # a capped slide's later wave not needed: its regions are those merged
        final: set[str] = set()
        assert read_progress(ref, RegionProgress(), final).snapshot()["regions"] == 2 + 4 and final == {"a"}
    assert read_progress(ref, RegionProgress(), set()).snapshot()["slides"] == 0
    assert read_progress(other, RegionProgress(), set()).snapshot()["slides"] == 0
    assert teller(None, "s")("started", 3) is None  # no progress: a no-op


def test_a_part_that_cannot_be_merged_fails_the_write_and_leaves_nothing(scans, tmp_path, monkeypatch):
    """The store refuses while a region is merged: finish() raises that error (a write failure, not a bad
    slide), nothing is published and no part or temporary file stays behind."""
    from srtn.data.shard_writer import SourceShardWriter

    cfg = _cfg(tmp_path / "out", "max_tiles_per_slide=null", "execution.region_tiles=20",
               inputs=[str(scans["x40"])])  # fmt: skip
    results, plan = _region_results(scans["x40"], cfg)
    real, calls = SourceShardWriter.add_table, []

    def refusing(self, split, table):
        calls.append(split)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(self, split, table)

    monkeypatch.setattr(SourceShardWriter, "add_table", refusing)
    merger = RegionMerger(str(scans["x40"]), "s", cfg=cfg, plan=plan)
    for r in results:
        merger.add(r)
    with pytest.raises(OSError, match="No space left"):
        merger.finish()
    assert [p.name for p in Path(cfg.output).rglob("*") if p.is_file()] == []


def test_region_tasks_on_ray_merge_the_same_slide_as_one_process(scans, tmp_path, ray_session):
    """Regions handed out to Ray tasks and the slide task, whichever is free, and merged as they come in:
    the same results (in region order), record and rows as every region cut and merged in this process."""
    extra = ["max_tiles_per_slide=null", "execution.region_tiles=20"]
    outcomes = []
    for name in ("local", "ray"):
        cfg = _cfg(tmp_path / name, *extra, inputs=[str(scans["x40"])])
        with opened(str(scans["x40"])) as reader:
            plan = plan_slide(reader, source_id="s", cfg=cfg)
        merger = RegionMerger(str(scans["x40"]), "s", cfg=cfg, plan=plan)
        if name == "local":
            results, _ = _region_results(scans["x40"], cfg)
            for r in results:
                merger.add(r)
        else:  # two Ray tasks beside this one
            items = region_items({"uri": str(scans["x40"]), "source_id": "s"}, plan, cfg)
            results = run_region_tasks(items, cfg=cfg, group="spatial", plan=plan, merger=merger, slots=3)
        record, _ = merger.finish()
        keys = ("kept", "seen", "decoded", "rejected", "split_counts", "regions")
        outcomes.append(([(r["region"], r["counts"]) for r in results], {k: record[k] for k in keys}))
        outcomes[-1] += (_published(cfg.output),)
        assert [p.name for p in Path(cfg.output).rglob("*") if ".tmp-" in p.name] == []
    assert outcomes[0] == outcomes[1]
    regions, record, _ = outcomes[1]
    assert [r for r, _ in regions] == list(range(len(regions))) and len(regions) >= 3 and record["kept"] > 32


def test_an_interrupted_wave_ends_its_threads_and_the_merger_leaves_nothing(scans, tmp_path, ray_session, monkeypatch):
    """Ctrl-C while the slide task cuts one of its regions: no new region starts, the Ray tasks running finish,
    the threads end (no hang) and the interrupt propagates; discarding the merger leaves no file behind."""
    import threading

    from srtn.data import region_tasks

    driver, real = os.getpid(), region_tasks.process_region

    def interrupted(item, **kwargs):  # the Ray tasks (other processes) cut as usual
        if os.getpid() == driver:
            raise KeyboardInterrupt
        return real(item, **kwargs)

    monkeypatch.setattr(region_tasks, "process_region", interrupted)
    monkeypatch.setattr(region_tasks, "_REMOTE_REGION", {})
    cfg = _cfg(tmp_path / "out", "max_tiles_per_slide=null", "execution.region_tiles=20",
               inputs=[str(scans["x40"])])  # fmt: skip
    with opened(str(scans["x40"])) as reader:
        plan = plan_slide(reader, source_id="s", cfg=cfg)
    items = region_items({"uri": str(scans["x40"]), "source_id": "s"}, plan, cfg)
    merger = RegionMerger(str(scans["x40"]), "s", cfg=cfg, plan=plan)
    with pytest.raises(KeyboardInterrupt):
        run_region_tasks(items, cfg=cfg, group="spatial", plan=plan, merger=merger, slots=2)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("srtn-region")]
    merger.discard()
    assert [p.name for p in Path(cfg.output).rglob("*") if p.is_file()] == []


def test_an_s3_slide_cut_by_regions_is_downloaded_once_on_its_node(scans, tmp_path, s3_env, ray_session, monkeypatch):
    """Region tasks on the slide task's node read the copy it staged: one download of an `s3://` slide, not
    one per region (a 3 GB slide in 14 regions was 42 GB of downloads); the tiles are the local file's, also
    when the regions run as Ray tasks (counted Ray-free, where every region runs in this process)."""
    from srtn import storage
    from srtn.data import region_tasks, tile_job
    from srtn.data.tile_job import process_slide

    for key, value in s3_env["env"].items():
        monkeypatch.setenv(key, value)
    s3_env["client"].upload_file(str(scans["x40"]), "shards", f"in/{scans['x40'].name}")
    uri = f"s3://shards/in/{scans['x40'].name}"
    real, downloads = storage.stage_local, []

    def counted(u, **kwargs):
        downloads.extend([u] if storage.is_remote(u) else [])
        return real(u, **kwargs)

    monkeypatch.setattr(storage, "stage_local", counted)
    records, outputs = [], []
    for name, src in (("local", str(scans["x40"])), ("ray", uri), ("here", uri)):
        if name == "here":  # regions as on 2 CPUs, but every one in this process, in order
            monkeypatch.setattr(region_tasks, "connected_ray", lambda: None)
            monkeypatch.setattr(tile_job, "region_slots", lambda cfg: 2)
            downloads.clear()
        cfg = _cfg(tmp_path / name, "max_tiles_per_slide=null", "execution.region_tiles=20", inputs=[src])
        records.append(process_slide({"uri": src, "source_id": "s"}, cfg=cfg, group="spatial"))
        outputs.append(_tiles(cfg.output))
    assert [r["status"] for r in records] == ["done"] * 3 and min(r["regions"] for r in records) >= 3
    assert downloads == [uri]
    assert outputs[0] == outputs[1] == outputs[2] and records[0]["kept"] == records[2]["kept"] > 32
