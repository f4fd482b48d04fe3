"""The shard folder is exactly what its manifest says (issue 15, the writing side): names that cannot collide,
stable ids, resume keyed by the config, stale files removed, failures that publish nothing, bad outputs found
before Ray starts, odd inputs listed. Every test asserts on the files on disk against `_manifest.json`.

Slides are small synthetic SVS files (640 px, 128-px tiles, a few tiles each), tiled with `run_tiling` in this
process on the session's Ray instance; checks that need another process (a file-size limit, no root rights,
SIGINT) run one, without Ray where they can.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from shard_utils import assert_folder_is_manifest

from srtn.config.base import load_config
from srtn.config.breakhis import BreakHisConfig
from srtn.config.tile import TileConfig
from srtn.data.breakhis.job import run_breakhis
from srtn.data.inputs import list_inputs, slide_id
from srtn.data.manifest import MANIFEST_NAME, listed_files, read_manifest
from srtn.data.tile_job import run_tiling, tile_fingerprint
from srtn.errors import ConfigError
from srtn.synth import write_breakhis_tree, write_tcga_dataset

ROOT = Path(__file__).resolve().parents[1]
TILE_YAML = ROOT / "configs" / "data" / "tcga_kirc_seed.yaml"  # the contract, not the filters, is tested here
BREAKHIS_YAML = ROOT / "configs" / "data" / "breakhis.yaml"
SMALL = ("tiles.size=128", "lr.scales=[4]", "max_tiles_per_slide=4", "tissue.target_size=256")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six small SVS slides with TCGA names (three patients' worth of splits)."""
    out = tmp_path_factory.mktemp("pool")
    return write_tcga_dataset(out, slides=6, seed=3, width=640, height=640, tissue_fraction=0.5, fmt="svs")


def _cfg(inp: Path | str | list[str], out: Path | str, *extra: str) -> TileConfig:
    data = {"input": inp if isinstance(inp, list) else str(inp)}
    return load_config(TileConfig, TILE_YAML, [f"output={out}", *SMALL, *extra], data=data)


def _place(pool_slide: Path, inp: Path, name: str) -> Path:
    target = inp / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pool_slide, target)
    return target


def _rows(out: Path) -> dict[str, tuple]:
    """Every row of the folder by tile id: what it is (source, group, split, pixels, which LR columns)."""
    rows: dict[str, tuple] = {}
    for entry in read_manifest(str(out))["files"]:
        for r in pq.read_table(out / entry["path"]).to_pylist():
            lrs = tuple(k for k in ("lr_x2", "lr_x3", "lr_x4", "lr_x8") if r[k] is not None)
            key = (r["source_id"], r["group_id"], entry["split"], hashlib.sha1(r["hr"]).hexdigest(), lrs)
            assert r["tile_id"] not in rows, f"tile {r['tile_id']} twice"
            rows[r["tile_id"]] = key
    return rows


# ---- ids ----------------------------------------------------------------------------------------


def test_names_that_differ_only_in_odd_characters_stay_four_slides(pool, tmp_path, ray_session):
    inp = tmp_path / "in"
    names = ["tümor 1.svs", "tämor 1.svs", "a b.svs", "a_b.svs"]
    for slide, name in zip(pool, names):
        _place(slide, inp, name)
    out = tmp_path / "out"
    assert run_tiling(_cfg(inp, out, "split.by=slide")) == 0
    manifest = assert_folder_is_manifest(out)
    ids = {r["source_id"] for r in manifest["sources"]}
    assert len(ids) == 4 and "a_b" in ids  # a safe name keeps its stem as its id
    assert {r["status"] for r in manifest["sources"]} == {"done"}
    assert len(list(out.glob("split=*/*.parquet"))) == 4 and len(list((out / "_status").glob("*.json"))) == 4
    assert {Path(r["path"]).name for r in manifest["sources"]} == set(names)  # the original paths
    assert len(_rows(out)) == manifest["totals"]["kept"] == 16


def test_an_id_does_not_depend_on_other_files(pool, tmp_path, ray_session):
    inp, out = tmp_path / "in", tmp_path / "out"
    _place(pool[0], inp, "a/slide.svs")
    assert run_tiling(_cfg(inp, out, "split.by=slide")) == 0
    before = _rows(out)
    [first] = read_manifest(str(out))["sources"]
    assert first["source_id"] == "a__slide"
    _place(pool[1], inp, "b/slide.svs")
    assert run_tiling(_cfg(inp, out, "split.by=slide")) == 0
    manifest = assert_folder_is_manifest(out)
    by_id = {r["source_id"]: r for r in manifest["sources"]}
    assert set(by_id) == {"a__slide", "b__slide"} and by_id["a__slide"].get("resumed")
    after = _rows(out)
    assert {k: v for k, v in after.items() if v[0] == "a__slide"} == before  # same tiles, same split
    assert len(after) == manifest["totals"]["kept"] == 8


def test_ids_are_stable_and_two_files_with_one_id_fail_before_ray(tmp_path, monkeypatch):
    assert slide_id("TCGA-B0-4710-01Z-00-DX1.9F1B.svs") == "TCGA-B0-4710-01Z-00-DX1.9F1B"
    assert slide_id("a/b/slide.svs") == "a__b__slide"
    assert slide_id("tümor 1.svs") != slide_id("tämor 1.svs")
    assert slide_id("a b.svs").startswith("a_b-") and slide_id("_x.svs").startswith("x-")  # never hidden
    for name in ("x.svs", "x.tiff"):
        (tmp_path / name).write_bytes(b"not read")
    with pytest.raises(ConfigError) as err:
        list_inputs(str(tmp_path), extensions=[".svs", ".tiff"])
    assert err.value.key == "input" and "x.svs" in str(err.value) and "x.tiff" in str(err.value)

    import srtn.runtime
    from srtn.cli import main

    monkeypatch.setattr(srtn.runtime, "init_ray", _no_ray)
    args = ["tile", "--config", str(TILE_YAML), "--set", f"input={tmp_path}", "--set", f"output={tmp_path / 'o'}"]
    assert main(args) == 2


# ---- resume, overwrite, stale files ------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True], ids=["rerun", "overwrite"])
def test_a_removed_slide_loses_its_shard(pool, tmp_path, ray_session, overwrite):
    inp, out = tmp_path / "in", tmp_path / "out"
    slides = [_place(s, inp, s.name) for s in pool[:3]]
    assert run_tiling(_cfg(inp, out)) == 0
    slides[0].unlink()
    extra = ["overwrite=true"] if overwrite else []
    assert run_tiling(_cfg(inp, out, *extra)) == 0
    manifest = assert_folder_is_manifest(out)
    gone = slide_id(slides[0].name)
    assert gone not in {r["source_id"] for r in manifest["sources"]}
    assert not list(out.glob(f"split=*/{gone}.parquet")) and not (out / "_status" / f"{gone}.json").exists()
    assert {v[0] for v in _rows(out).values()} == {slide_id(s.name) for s in slides[1:]}


def test_a_config_change_retiles_with_the_new_config(pool, tmp_path, ray_session):
    inp, out = tmp_path / "in", tmp_path / "out"
    for s in pool[:3]:
        _place(s, inp, s.name)
    assert run_tiling(_cfg(inp, out)) == 0
    assert {v[4] for v in _rows(out).values()} == {("lr_x4",)}
    assert run_tiling(_cfg(inp, out, "lr.scales=[4,8]")) == 0
    manifest = assert_folder_is_manifest(out)
    assert not any(r.get("resumed") for r in manifest["sources"])
    assert {v[4] for v in _rows(out).values()} == {("lr_x4", "lr_x8")}  # every lr_x8 filled
    assert run_tiling(_cfg(inp, out, "lr.scales=[4,8]", "max_tiles_per_slide=2")) == 0
    manifest = assert_folder_is_manifest(out)
    assert all(r["kept"] <= 2 for r in manifest["sources"]) and len(_rows(out)) == manifest["totals"]["kept"]
    assert run_tiling(_cfg(inp, out, "lr.scales=[4,8]", "max_tiles_per_slide=2")) == 0  # same config: resumed
    assert all(r.get("resumed") for r in assert_folder_is_manifest(out)["sources"])


def test_the_fingerprint_covers_exactly_the_keys_that_change_rows(tmp_path):
    base = _cfg(tmp_path, tmp_path / "o")
    fp = tile_fingerprint(base, "patient")
    same = ["execution.concurrency=3", "overwrite=true", "strict=true", "extensions=[.svs]", "output=/x"]
    for override in same:
        assert tile_fingerprint(_cfg(tmp_path, tmp_path / "o", override), "patient") == fp, override
    changes = [
        "tiles.size=64", "tiles.level=1", "tiles.stride=64", "filters.min_std=10", "tissue.min_fraction=0.2",
        "lr.scales=[4,8]", "lr.method=area", "split.salt=x", "split.ratios=[1,1,1]", "max_tiles_per_slide=3",
        "seed=1",
    ]  # fmt: skip
    for override in changes:
        assert tile_fingerprint(_cfg(tmp_path, tmp_path / "o", override), "patient") != fp, override
    assert tile_fingerprint(base, "spatial") != fp  # split.by: auto resolves by the number of slides


# ---- failures publish nothing; bad outputs fail first ------------------------------------------------


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root bypasses them)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def _process_slide_in_subprocess(cfg: TileConfig, uri: str, *, fsize: int | None = None, as_user: bool = False) -> dict:
    """`process_slide` (no Ray) in a child process, optionally under a file-size limit (a full disk)."""
    code = (
        "import json, resource, sys\n"
        "from srtn.config.tile import TileConfig\n"
        "from srtn.data.tile_job import process_slide\n"
        "cfg = TileConfig.model_validate_json(sys.argv[1])\n"
        "if sys.argv[3]: resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]),) * 2)\n"
        "rec = process_slide({'uri': sys.argv[2], 'source_id': sys.argv[4]}, cfg=cfg, group='patient')\n"
        "print(json.dumps(rec))\n"
    )
    args = [cfg.model_dump_json(), uri, str(fsize or ""), slide_id(Path(uri).name)]
    prefix = _unprivileged() if as_user else []
    done = subprocess.run([*prefix, sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_slide_that_fails_to_write_publishes_nothing(pool, tmp_path, ray_session):
    inp, out = tmp_path / "in", tmp_path / "out"
    slides = [_place(s, inp, s.name) for s in pool[:2]]
    assert run_tiling(_cfg(inp, out)) == 0
    victim = slide_id(slides[0].name)
    assert list(out.glob(f"split=*/{victim}.parquet"))
    # a 20 kB file-size limit: the slide's ~130 kB shard cannot be written, as on a full disk
    rec = _process_slide_in_subprocess(_cfg(inp, out, "overwrite=true"), str(slides[0]), fsize=20_000)
    assert rec["status"] == "failed" and rec["output_error"] and "cannot write its shards" in rec["error"]
    assert not list(out.glob(f"split=*/{victim}.parquet"))  # neither the new file nor the old one
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert json.loads((out / "_status" / f"{victim}.json").read_text())["status"] == "failed"
    from srtn.data.tile_job import exit_code

    assert exit_code([rec, {"status": "done"}], strict=False) == 1  # not exit 0 although one slide is done
    assert run_tiling(_cfg(inp, out)) == 0  # the rerun redoes it
    assert victim in {r["source_id"] for r in assert_folder_is_manifest(out)["sources"] if r["status"] == "done"}


def test_permission_denied_says_so(pool, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    slide = _place(pool[0], inp, pool[0].name)
    out.mkdir()
    slide.chmod(0)
    rec = _process_slide_in_subprocess(_cfg(inp, out), str(slide), as_user=True)
    assert rec["status"] == "failed" and rec["error"] == "permission denied"
    assert not list(out.glob("split=*/*.parquet"))


def _no_ray(**_: object) -> None:
    raise AssertionError("Ray must not start for a bad input or output")


def test_unusable_outputs_fail_before_ray_with_exit_2(pool, tmp_path, monkeypatch, capsys):
    import srtn.runtime
    from srtn.cli import main

    monkeypatch.setattr(srtn.runtime, "init_ray", _no_ray)
    monkeypatch.chdir(tmp_path)
    inp = tmp_path / "in"
    _place(pool[0], inp, pool[0].name)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["tile", "--config", str(TILE_YAML), "--set", f"input={inp}"]
    for output in (str(a_file), "", "/proc/srtn-cannot-be-created"):
        assert main([*base, "--set", f"output={output}"]) == 2, output
        assert "output" in capsys.readouterr().err
    assert main(["tile", "--config", str(TILE_YAML), "--set", f"input={tmp_path / 'missing'}"]) == 2
    assert "input" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "in"]  # nothing written anywhere

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    cmd = [*_unprivileged(), sys.executable, "-m", "srtn.cli", *base, "--set", f"output={read_only}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2 and "not writable" in done.stderr and "Traceback" not in done.stderr
    assert list(read_only.iterdir()) == []


# ---- inputs that are not slides; slides without tiles -------------------------------------------------


def test_links_other_files_and_empty_slides_are_listed(pool, tmp_path, ray_session, openslide_fixtures, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    _place(pool[0], inp, pool[0].name)
    shutil.copyfile(openslide_fixtures / "small.svs", inp / "small.svs")  # smaller than one 128-px tile
    (inp / "notes.txt").write_text("not a slide")
    (inp / "gone.svs").symlink_to(tmp_path / "nowhere.svs")
    assert run_tiling(_cfg(inp, out)) == 0
    manifest = assert_folder_is_manifest(out)
    skipped = {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}
    assert skipped == {"notes.txt": "extension .txt not in extensions", "gone.svs": "dangling symlink"}
    small = next(r for r in manifest["sources"] if r["source_id"] == "small")
    assert small["status"] == "done" and small["kept"] == 0 and small["files"] == []
    assert "smaller than one 128x128 tile" in small["warning"]
    summary = capsys.readouterr().out
    assert "WARNING small: no tiles" in summary and "SKIPPED 2 input file(s)" in summary


def test_parquet_readers_open_the_folder_as_it_is(pool, tmp_path, ray_session):
    import pandas as pd
    import pyarrow.dataset as ds
    import ray.data

    inp, out = tmp_path / "in", tmp_path / "out"
    for s in pool[:3]:
        _place(s, inp, s.name)
    assert run_tiling(_cfg(inp, out)) == 0
    kept = assert_folder_is_manifest(out)["totals"]["kept"]
    assert (out / MANIFEST_NAME).is_file() and (out / "_status").is_dir()  # beside the partitions
    dataset = ds.dataset(out, format="parquet", partitioning="hive")
    assert dataset.count_rows() == kept and "split" in dataset.schema.names
    assert ray.data.read_parquet(str(out)).select_columns(["tile_id"]).count() == kept
    frame = pd.read_parquet(out)  # the split comes from the folder names (the files hold no `split` column)
    assert len(frame) == kept
    assert frame["split"].astype(str).value_counts().to_dict() == {
        s: n for s, n in read_manifest(str(out))["totals"]["per_split"].items() if n
    }


# ---- interrupted runs ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigint_ends_with_one_line_and_the_rerun_completes(pool, tmp_path, ray_session):
    """Ctrl-C on a real `srtn tile` (SIGINT to its process group, as a terminal sends it)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    for s in pool:
        _place(s, inp, s.name)
    reference = tmp_path / "reference"
    assert run_tiling(_cfg(inp, reference)) == 0
    sets = [f"--set={o}" for o in (f"input={inp}", f"output={out}", *SMALL, "execution.concurrency=1")]
    cmd = [sys.executable, "-m", "srtn.cli", "tile", "--config", str(TILE_YAML), *sets]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not list(out.glob("_status/*.json")):
        time.sleep(0.1)
    finished_alone = proc.poll() is not None
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert not finished_alone and proc.returncode == 130
    assert err.count("interrupted; run the same command again to resume") == 1 and "Traceback" not in err
    assert not (out / MANIFEST_NAME).exists()  # an unfinished folder has no manifest
    assert run_tiling(_cfg(inp, out)) == 0
    assert_folder_is_manifest(out)
    assert _rows(out) == _rows(reference)


# ---- random sequences of changes end where a fresh run ends ------------------------------------------

NAMES = ["tümor 1.svs", "a b.svs", "a_b.svs", "deep/x/slide.svs", "other/slide.svs", "TCGA-AA-0001-01Z.svs"]
CONFIGS = [(), ("lr.scales=[4,8]",), ("max_tiles_per_slide=2",), ("tiles.size=64", "lr.scales=[4,8]")]


def _crash(out: Path, rng: random.Random) -> None:
    """What a SIGKILL between a slide's shard and its status record leaves: no manifest, a shard without a
    record, a temporary file."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    records = sorted((out / "_status").glob("*.json"))
    if records:
        rng.choice(records).unlink()
    (out / "split=train").mkdir(parents=True, exist_ok=True)
    (out / "split=train" / ".half.parquet.tmp-0123abcd").write_bytes(b"PAR1")


def _step(op: str, rng: random.Random, inp: Path, pool: list[Path], state: dict) -> list[str]:
    """Apply one operation to the input or the config; the overrides of the run that follows."""
    present = sorted(p for p in inp.rglob("*.svs"))
    free = [n for n in NAMES if not (inp / n).exists()]
    if op == "add" and free:
        _place(rng.choice(pool), inp, rng.choice(free))
    elif op == "remove" and len(present) > 1:
        rng.choice(present).unlink()
    elif op == "rename" and free:
        target = inp / rng.choice(free)
        target.parent.mkdir(parents=True, exist_ok=True)
        rng.choice(present).rename(target)
    elif op == "config":
        state["config"] = rng.choice([c for c in CONFIGS if c != state["config"]])
    return [*state["config"], *(["overwrite=true"] if op == "overwrite" else [])]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_sequence_of_changes_ends_as_a_fresh_run(pool, tmp_path, ray_session, seed):
    rng = random.Random(seed)
    inp, out = tmp_path / "in", tmp_path / "out"
    for name in rng.sample(NAMES, 2):
        _place(rng.choice(pool), inp, name)
    state: dict = {"config": ()}
    assert run_tiling(_cfg(inp, out)) == 0
    ops = ["add", "remove", "rename", "config", "overwrite", "rerun", "crash"]
    for op in rng.sample(ops, len(ops)):  # every operation once per sequence, in a random order
        if op == "crash":
            _crash(out, rng)
            continue
        assert run_tiling(_cfg(inp, out, *_step(op, rng, inp, pool, state))) == 0, op
        assert_folder_is_manifest(out)
    assert run_tiling(_cfg(inp, out, *state["config"])) == 0
    assert_folder_is_manifest(out)
    fresh = tmp_path / "fresh"
    assert run_tiling(_cfg(inp, fresh, *state["config"])) == 0
    assert _rows(out) == _rows(fresh)
    files = {f["path"]: f["sha256"] for f in listed_files(read_manifest(str(out)))}
    assert files == {f["path"]: f["sha256"] for f in listed_files(read_manifest(str(fresh)))}


# ---- srtn breakhis: the same contract -------------------------------------------------------------------


def test_breakhis_keeps_the_same_contract(tmp_path, ray_session):
    tree = write_breakhis_tree(
        tmp_path / "bh", patients=3, seed=1, images_per_patient=2, lr_images_per_patient=2, unmatched_fraction=0
    )
    out = tmp_path / "out"

    def config(*extra: str) -> BreakHisConfig:
        return load_config(BreakHisConfig, BREAKHIS_YAML, [f"input={tree}", f"output={out}", *extra])

    assert run_breakhis(config()) == 0
    first = assert_folder_is_manifest(out, source_column="group_id")
    assert len(first["files"]) == 3 and all(r["path"].startswith(str(tree)) for r in first["sources"])
    assert run_breakhis(config("crops.positions=[center]")) == 0  # a new config: every patient redone
    manifest = assert_folder_is_manifest(out, source_column="group_id")
    assert not any(r.get("resumed") for r in manifest["sources"])
    assert manifest["totals"]["stages"]["crops"] == manifest["totals"]["stages"]["pairs"]
    victim = manifest["sources"][0]
    shutil.rmtree(victim["path"])  # the patient's folder (its 400X and 100X images) is gone
    assert run_breakhis(config("crops.positions=[center]")) == 0
    manifest = assert_folder_is_manifest(out, source_column="group_id")
    assert victim["source_id"] not in {r["source_id"] for r in manifest["sources"]}
    assert all(r.get("resumed") for r in manifest["sources"])
