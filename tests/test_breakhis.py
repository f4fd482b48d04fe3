"""BreakHis pair builder: index, template matching, aligned crops, copy-paste, resume, bad files.

One generated tree (6 patients, seed 1: train, val and test all present at ratios 2:1:1) is built
through the real Ray pipeline once per module; pure functions are tested without Ray.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from srtn.config.base import load_config
from srtn.config.breakhis import BreakHisConfig
from srtn.data.breakhis.index import index_files, index_tree, parse_name
from srtn.data.breakhis.job import run_breakhis
from srtn.data.breakhis.pairs import best_match, copy_paste, crop_origin, crop_pair
from srtn.data.breakhis.patient import process_patient
from srtn.data.manifest import read_manifest, read_status
from srtn.data.reader import read_split_table
from srtn.data.schema import decode_png
from srtn.errors import ConfigError
from srtn.synth.breakhis import enlarge, he_texture, write_breakhis_tree
from srtn.vocab import SPLITS

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "configs" / "data" / "breakhis.yaml"
RATIOS = "split.ratios=[0.5,0.25,0.25]"


def _config(root: Path, out: Path, *overrides: str) -> BreakHisConfig:
    return load_config(BreakHisConfig, YAML, [f"input={root}", f"output={out}", RATIOS, *overrides])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _rows(out: Path) -> dict[str, list[dict]]:
    return {s: read_split_table(str(out), s).to_pylist() for s in SPLITS}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_breakhis_tree(tmp_path_factory.mktemp("bh"), patients=6, seed=1, other_images_per_magnification=0)


@pytest.fixture(scope="module")
def built(tree: Path, tmp_path_factory: pytest.TempPathFactory, ray_session) -> tuple[BreakHisConfig, int]:
    config = _config(tree, tmp_path_factory.mktemp("out") / "shards")
    return config, run_breakhis(config)


# ---- pure functions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SOB_B_A-14-22549AB-400-013.png", ("benign", "adenosis", "14-22549AB", 400, 13)),
        ("SOB_M_DC-14-2523-100-001.png", ("malignant", "ductal_carcinoma", "14-2523", 100, 1)),
        ("SOB_B_PT-14-22704-40-007.png", ("benign", "phyllodes_tumor", "14-22704", 40, 7)),
        ("SOB_M_DC-14-2523-300-001.png", None),  # no 300X
        ("SOB_B_DC-14-2523-100-001.png", None),  # ductal carcinoma is not benign
        ("SOB_B_A-14-22549AB-400-13.png", None),  # sequence has three digits
        ("notes.png", None),
    ],
)
def test_parse_name(name: str, expected: tuple | None) -> None:
    fields = parse_name(name)
    keys = ("tumour_class", "subtype", "patient_id", "magnification", "seq")
    assert (None if fields is None else tuple(fields[k] for k in keys)) == expected


def test_index_files_groups_by_patient_and_reports_bad_names() -> None:
    base = "/d/breast/malignant/SOB/ductal_carcinoma/SOB_M_DC_14-2523"
    index = index_files(
        [
            f"{base}/400X/SOB_M_DC-14-2523-400-002.png",
            f"{base}/400X/SOB_M_DC-14-2523-400-001.png",
            f"{base}/100X/SOB_M_DC-14-2523-100-001.png",
            f"{base}/40X/SOB_M_DC-14-2523-40-001.png",
            f"{base}/100X/SOB_M_DC-14-2523-400-003.png",  # 400X name in a 100X folder
            f"{base}/100X/scan copy.png",
        ]
    )
    [unit] = index.patients
    assert (unit.patient_id, unit.tumour_class, unit.other) == ("14-2523", "malignant", 1)
    assert [Path(u).name for u in unit.hr] == ["SOB_M_DC-14-2523-400-001.png", "SOB_M_DC-14-2523-400-002.png"]
    assert sorted(p["kind"] for p in index.problems) == ["folder_mismatch", "malformed_name"]


@pytest.mark.parametrize(
    ("position", "expected"), [("top_left", (0, 0)), ("center", (220, 100)), ("bottom_right", (440, 200))]
)
def test_crop_origin_is_a_multiple_of_the_scale(position: str, expected: tuple[int, int]) -> None:
    assert crop_origin(position, 700, 460, 260, 4) == expected
    x, y = crop_origin(position, 703, 462, 250, 4)
    assert x % 4 == 0 and y % 4 == 0 and x + 250 <= 703 and y + 250 <= 462


def test_best_match_finds_the_region_and_fresh_texture_scores_low() -> None:
    rng = np.random.default_rng(7)
    lrs = [(f"lr{i}", he_texture(rng)) for i in range(3)]
    hr = enlarge(lrs[2][1][201 : 201 + 115, 333 : 333 + 175], 4, rng)
    match = best_match(hr, lrs, lr_size=(175, 115))
    assert match is not None and (match.lr_id, match.x, match.y) == ("lr2", 333, 201) and match.score >= 0.95
    fresh = best_match(enlarge(he_texture(rng)[:115, :175], 4, rng), lrs, lr_size=(175, 115))
    assert fresh is not None and fresh.score < 0.95  # found somewhere, but under the default threshold
    assert best_match(hr, [], lr_size=(175, 115)) is None
    assert best_match(np.full((460, 700, 3), 128, np.uint8), lrs) is None  # flat: the score is undefined


def test_copy_paste_keeps_hr_and_lr_aligned() -> None:
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (260, 260, 3), dtype=np.uint8)
    lr = cv2.resize(hr, (65, 65), interpolation=cv2.INTER_AREA)
    a_hr, a_lr = copy_paste(hr, lr, regions=3, size=64, scale=4, rng=np.random.default_rng(1))
    assert not np.array_equal(a_hr, hr) and not np.array_equal(a_lr, lr)
    # INTER_AREA of an integer factor is a block mean: the augmented LR is exactly the augmented HR's
    assert np.array_equal(cv2.resize(a_hr, (65, 65), interpolation=cv2.INTER_AREA), a_lr)
    with pytest.raises(ValueError, match="multiple of 4"):
        copy_paste(hr, lr, regions=1, size=62, scale=4, rng=rng)
    with pytest.raises(ValueError, match="not aligned"):
        crop_pair(np.zeros((460, 700, 3), np.uint8), np.zeros((115, 175, 3), np.uint8), 2, 0, 260, 4)


# ---- the Ray pipeline on a generated tree ---------------------------------------------------------


def test_matches_agree_with_the_truth(built: tuple[BreakHisConfig, int], tree: Path) -> None:
    config, code = built
    assert code == 0
    truth = {Path(k).stem: v for k, v in json.loads((tree.parent / "truth.json").read_text()).items()}
    manifest = read_manifest(config.output)
    found = {m["hr"]: m for rec in manifest["sources"] for m in rec["matches"]}
    partnered = {k: v for k, v in truth.items() if v is not None}
    good = [
        k
        for k, v in partnered.items()
        if k in found
        and found[k]["lr"] == Path(v["file"]).stem
        and abs(found[k]["x"] - v["x"]) <= 1
        and abs(found[k]["y"] - v["y"]) <= 1
    ]
    assert len(good) >= 0.98 * len(partnered)
    assert not {k for k, v in truth.items() if v is None} & found.keys()  # no partner, no match
    assert manifest["totals"]["stages"]["unmatched"] == len(truth) - len(partnered)
    assert manifest["totals"]["match_score"]["min"] >= config.matching.threshold


def test_pairs_are_aligned_and_splits_hold(built: tuple[BreakHisConfig, int]) -> None:
    config, _ = built
    rows = _rows(Path(config.output))
    assert all(rows[s] for s in SPLITS), "the fixture tree should fill every split"
    patients = {s: {r["group_id"] for r in rows[s]} for s in SPLITS}
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    assert any(r["augmented"] for r in rows["train"])
    assert not any(r["augmented"] for s in ("val", "test") for r in rows[s])
    for r in [r for s in SPLITS for r in rows[s]]:
        hr, lr = decode_png(r["hr"]), decode_png(r["lr_x4"])
        assert hr.shape == (260, 260, 3) and lr.shape == (65, 65, 3) and r["origin"] == "matched"
        assert r["x"] % 4 == 0 and r["y"] % 4 == 0 and r["match_score"] >= 0.95
        down = cv2.resize(hr, (65, 65), interpolation=cv2.INTER_AREA)
        # the synthetic differences (blur, noise, +-2% gain, +-3 offset, vignetting) leave >= 31 dB when aligned
        assert _psnr(down, lr) > 28.0, r["source_id"]
        # and no one-LR-pixel shift agrees better (compared on the 63x63 interior)
        shifted = {
            (dx, dy): _psnr(down[1:-1, 1:-1], lr[1 + dy : 64 + dy, 1 + dx : 64 + dx])
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
        }
        assert max(shifted, key=shifted.get) == (0, 0), (r["source_id"], r["augmented"])


def test_manifest_counts_match_the_shards(built: tuple[BreakHisConfig, int]) -> None:
    config, _ = built
    manifest = read_manifest(config.output)
    totals, stages = manifest["totals"], manifest["totals"]["stages"]
    rows = _rows(Path(config.output))
    assert totals["per_split"] == {s: len(rows[s]) for s in SPLITS}
    assert stages["after_selection"] == totals["kept"] == sum(len(v) for v in rows.values())
    assert stages["after_copy_paste"] - stages["after_selection"] == sum(totals["rejected"].values())
    assert stages["crops"] == 3 * stages["pairs"]
    train_crops = sum(rec["stages"]["crops"] for rec in manifest["sources"] if rec["split"] == "train")
    assert stages["after_copy_paste"] == stages["crops"] + train_crops  # one augmented row per train crop
    assert stages["hr_images"] == stages["pairs"] + stages["unmatched"] == 24
    assert len({r["tile_id"] for s in SPLITS for r in rows[s]}) == stages["after_selection"]


def test_rerun_skips_done_patients(built: tuple[BreakHisConfig, int], capsys: pytest.CaptureFixture) -> None:
    config, _ = built
    before = {rec["source_id"]: rec["seconds"] for rec in read_manifest(config.output)["sources"]}
    files = sorted(Path(config.output).glob("split=*/*.parquet"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert run_breakhis(config) == 0
    assert "6 patients, 6 already done, 0 to process" in capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert {pid: read_status(config.output, pid)["seconds"] for pid in before} == before


def test_search_scope_all_and_downsampled_mode(built: tuple[BreakHisConfig, int], tree: Path, tmp_path: Path) -> None:
    config, _ = built
    index = index_tree(str(tree))
    unit = index.patients[0]
    others = [u for p in index.patients[1:] for u in p.lr]
    wide = process_patient(unit, _config(tree, tmp_path / "all", "matching.search_scope=all"), extra_lr=others)
    assert wide["matches"] == read_status(config.output, unit.patient_id)["matches"]
    down = process_patient(unit, _config(tree, tmp_path / "down", "lr_mode=downsampled", "downsample_method=area"))
    assert down["status"] == "done" and down["stages"]["pairs"] == len(unit.hr)
    rows = [r for s in SPLITS for r in read_split_table(str(tmp_path / "down"), s).to_pylist()]
    assert rows and all(r["origin"] == "downsampled" and r["match_score"] is None for r in rows)
    for r in rows:  # area downsampling of the (augmented) HR is the LR, exactly
        down_lr = cv2.resize(decode_png(r["hr"]), (65, 65), interpolation=cv2.INTER_AREA)
        assert np.array_equal(down_lr, decode_png(r["lr_x4"]))


def _truth_key(root: Path, image: Path) -> str:
    return f"BreaKHis_v1/{image.relative_to(root).as_posix()}"


def test_bad_files_are_reported_not_fatal(tree: Path, tmp_path: Path, ray_session, caplog) -> None:
    root = tmp_path / "BreaKHis_v1"
    shutil.copytree(tree, root)
    patient_dirs = sorted(p for p in root.glob("histology_slides/breast/*/SOB/*/*") if p.is_dir())
    garbage_hr = next(iter(sorted((patient_dirs[0] / "400X").glob("*.png"))))
    garbage_hr.write_bytes(b"not a png at all")
    garbage_lr = next(iter(sorted((patient_dirs[1] / "100X").glob("*.png"))))
    garbage_lr.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    renamed = next(iter(sorted((patient_dirs[1] / "400X").glob("*.png"))))
    renamed.rename(renamed.with_name("IMG 0001.png"))
    shutil.rmtree(patient_dirs[2] / "100X")
    no_lr = patient_dirs[2].name.split("_", 3)[-1]
    truth = json.loads((tree.parent / "truth.json").read_text())
    short = next(p for p in sorted((patient_dirs[3] / "400X").glob("*.png")) if truth[_truth_key(root, p)])
    cv2.imwrite(str(short), cv2.imread(str(short))[:456])  # 700x456: matched at 175x114
    odd = sorted((patient_dirs[4] / "400X").glob("*.png"))[0]
    cv2.imwrite(str(odd), cv2.imread(str(odd))[:, :698])  # 698 wide: not a multiple of 4
    config = _config(root, tmp_path / "out")
    assert run_breakhis(config) == 0
    manifest = read_manifest(config.output)
    by_path = {p["path"]: p["kind"] for p in manifest["problems"]}
    assert by_path[str(garbage_hr)] == "unreadable" and by_path[str(garbage_lr)] == "unreadable"
    assert by_path[str(renamed.with_name("IMG 0001.png"))] == "malformed_name"
    assert by_path[no_lr] == "no_lr_images" and by_path[str(odd)] == "bad_size"
    [found] = [m for rec in manifest["sources"] for m in rec["matches"] if m["hr"] == short.stem]
    expected = truth[_truth_key(root, short)]
    assert (found["lr_size"], found["x"], found["y"]) == ([175, 114], expected["x"], expected["y"])
    status = {rec["source_id"]: rec["status"] for rec in manifest["sources"]}
    assert status.pop(no_lr) == "skipped" and set(status.values()) == {"done"}
    assert manifest["totals"]["problems"] == {"bad_size": 1, "malformed_name": 1, "no_lr_images": 1, "unreadable": 2}
    assert "5 problem(s)" in caplog.text
    assert run_breakhis(config.model_copy(update={"strict": True})) == 1


def test_bad_config_key_fails_before_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, tmp_path / "out", "matching.treshold=0.9")
    assert err.value.key == "matching.treshold" and "unknown key" in str(err.value)
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, tmp_path / "out", "crops.hr_size=258")
    assert err.value.key == "crops" and "multiple of matching.scale" in str(err.value)

    import srtn.runtime
    from srtn.cli import main

    def no_ray(**_: object) -> None:
        raise AssertionError("Ray must not start for a bad config")

    monkeypatch.setattr(srtn.runtime, "init_ray", no_ray)
    assert main(["breakhis", "--config", str(YAML), "--set", "augmentation.sizes=32"]) == 2
    assert main(["breakhis", "--config", str(YAML), "--set", f"input={tmp_path / 'missing'}"]) == 2


def test_a_failing_patient_is_recorded(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import srtn.data.breakhis.patient

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("matcher exploded")

    monkeypatch.setattr(srtn.data.breakhis.patient, "best_match", broken)
    unit = index_tree(str(tree)).patients[0]
    rec = process_patient(unit, _config(tree, tmp_path / "out"))
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: matcher exploded"
    assert rec["stages"]["pairs"] == rec["kept"] == 0 and rec["stages"]["hr_images"] == len(unit.hr)
    assert read_status(str(tmp_path / "out"), unit.patient_id)["status"] == "failed"


def test_no_patient_done_exits_1(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.png").write_bytes(b"hello")
    config = _config(tmp_path / "in", tmp_path / "out")
    assert run_breakhis(config) == 1  # nothing to do: Ray is not even started
    assert [p["kind"] for p in read_manifest(config.output)["problems"]] == ["malformed_name"]


def test_an_unreadable_image_is_a_problem_and_the_patient_continues(tree: Path, tmp_path: Path) -> None:
    """A zero-byte 400X PNG (OpenCV raises `cv2.error` on an empty buffer, which sank the whole patient) and a
    garbage 100X PNG are listed problems of their patient, each named with its reason; the patient's other
    images still make its rows."""
    root = tmp_path / "BreaKHis_v1"
    shutil.copytree(tree, root)
    unit = next(u for u in index_tree(str(root)).patients if len(u.hr) >= 3 and len(u.lr) >= 2)
    empty_hr, garbage_lr = Path(unit.hr[0]), Path(unit.lr[-1])
    empty_hr.write_bytes(b"")
    garbage_lr.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    rec = process_patient(unit, _config(root, tmp_path / "out"))

    assert rec["status"] == "done", rec.get("error")
    problems = {p["path"]: p for p in rec["problems"]}
    assert set(problems) == {str(empty_hr), str(garbage_lr)}
    assert problems[str(empty_hr)]["kind"] == "unreadable" and "0 bytes" in problems[str(empty_hr)]["error"]
    assert problems[str(garbage_lr)]["kind"] == "unreadable" and problems[str(garbage_lr)]["error"]
    rows = read_split_table(str(tmp_path / "out"), rec["split"]).to_pylist()
    assert rows and len(rows) == rec["kept"] == sum(rec["split_counts"].values())
    assert {r["source_id"] for r in rows} <= {Path(u).stem for u in unit.hr[1:]}
    assert rec["stages"]["pairs"] >= 1 and read_status(str(tmp_path / "out"), unit.patient_id)["status"] == "done"
