"""`srtn predict` on a cohort: one shared pool of model actors, status records, `_manifest.json`, resume, exit
codes, provenance in the TIFF, `s3://` in and out, MLflow.

A folder of 3 small synthetic slides (2 Aperio SVS, 1 generic TIFF, 0.25 um/px) plus a corrupt one
(`unreadable.svs`: it opens, then its pixels fail to decode). Ray runs use the session fixture; the S3 test
starts its own moto server on 127.0.0.1 (the cluster tests' helper) and stops it after.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import openslide
import pytest
import tifffile
import torch

from srtn import storage
from srtn.cli import main
from srtn.config.base import load_config
from srtn.config.predict import PredictConfig
from srtn.errors import ConfigError
from srtn.infer.cohort import predict_cohort
from srtn.infer.cohort_io import list_cohort
from srtn.infer.predict import predict_slide
from srtn.infer.provenance import read_provenance
from srtn.infer.records import read_manifest
from srtn.models import build_model
from srtn.models.serialization import log_sr_model
from srtn.synth import tcga_slide_specs, write_tcga_slide
from srtn.track import fluent_tracking_uri

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "openslide"
SCALE, MPP, W, H = 4, 0.25, 384, 256
CORRUPT = "zz-corrupt"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    for spec in tcga_slide_specs(4, seed=3, fmt="mixed")[1:]:  # 2 SVS + 1 generic TIFF
        write_tcga_slide(folder / spec.name, spec, width=W, height=H, mpp=MPP)
    shutil.copy(FIXTURES / "unreadable.svs", folder / f"{CORRUPT}.svs")
    return folder


def _cfg(**kw) -> PredictConfig:
    base = {"model": "bicubic", "scale": SCALE, "progress": False}
    return load_config(PredictConfig, data=base | kw)


def _outputs(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(("_", ".")))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _bicubic(path: str) -> np.ndarray:
    from srtn.data.slides import open_slide, read_rgb

    with open_slide(path) as s:
        lr = read_rgb(s, 0, 0, 0, *s.dimensions)
    with torch.inference_mode():
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
        y = build_model("bicubic", SCALE)(x).clamp(0, 1).mul(255).round().to(torch.uint8)
    return y[0].permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- inputs (no Ray)


def test_ids_are_stable_unique_names_and_bad_inputs_fail_before_work(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for rel in ("a/slide.svs", "b/slide.svs", "tümor 1.svs", "tämor 1.svs", "x.txt"):
        (tmp_path / rel).write_bytes(b"")
    ids = {Path(uri).relative_to(tmp_path).as_posix(): sid for uri, sid in list_cohort(str(tmp_path))}
    assert ids["a/slide.svs"] == "a__slide" and ids["b/slide.svs"] == "b__slide"
    assert len({ids["tümor 1.svs"], ids["tämor 1.svs"]}) == 2 and "x.txt" not in ids
    assert all(sid.isascii() and " " not in sid for sid in ids.values())
    listing = tmp_path / "list.txt"
    listing.write_text("# two of them\na/slide.svs\n\nb/slide.svs\n")
    with pytest.raises(ConfigError, match="both be written as 'slide'") as err:
        list_cohort(str(listing))
    assert err.value.key == "slides"
    with pytest.raises(ConfigError, match="does not exist"):
        list_cohort(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="names no slides"):
        list_cohort(str(tmp_path / "a"), extensions=[".ndpi"])


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["slides={missing}", "out_dir={out}"], "slides"),
        (["slides={cohort}", "out_dir={file}"], "out_dir"),
        (["slides={cohort}", "out_dir={out}", "out=x.tiff"], "out_dir"),
        (["slides={cohort}", "out_dir={out}", "model=runs:/0123456789abcdef/nothing", "scale=null",
          "tracking.uri=sqlite:///{tmp}/m.db"], "model"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_before_any_work(cohort, tmp_path, capsys, sets, key):
    (tmp_path / "file").write_text("")
    values = {"missing": tmp_path / "missing", "out": tmp_path / "out", "cohort": cohort, "file": tmp_path / "file"}
    values["tmp"] = tmp_path
    args = ["predict", "--set", "model=bicubic", "--set", "scale=4"]
    for s in sets:
        args += ["--set", s.format(**values)]
    assert main(args) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "out" / "_manifest.json").exists()


# --------------------------------------------------------------------------- the cohort through Ray


@pytest.fixture(scope="module")
def bicubic_cohort(ray_session, cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    report = predict_cohort(_cfg(slides=str(cohort), out_dir=str(out), actors=1, slides_in_flight=2))
    return {"out": out, "report": report}


def test_cohort_outputs_open_with_4x_size_mpp_and_provenance(bicubic_cohort, cohort):
    out, report = bicubic_cohort["out"], bicubic_cohort["report"]
    assert report.exit_code == 0  # one failure among four is a warning, not a failed run
    manifest = read_manifest(str(out))
    by_slide = {r["slide"]: r for r in manifest["slides"]}
    assert len(by_slide) == 4 and by_slide[CORRUPT]["status"] == "failed"
    assert "tissue mask" in by_slide[CORRUPT]["error"]
    assert manifest["totals"]["status"] == {"done": 3, "failed": 1}
    # The folder holds exactly the outputs the manifest lists, plus its own `_` names.
    assert _outputs(out) == sorted(Path(f["file"]).name for f in manifest["files"])
    assert sorted(p.name for p in (out / "_status").iterdir()) == sorted(f"{s}.json" for s in by_slide)
    assert f"{CORRUPT}_x4.tiff" not in _outputs(out)
    for f in manifest["files"]:
        rec = by_slide[f["slide"]]
        with openslide.OpenSlide(f["file"]) as o:
            assert o.dimensions == (SCALE * W, SCALE * H)
            assert float(o.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP / SCALE, rel=1e-6)
            props = dict(o.properties)
        assert props["aperio.srtn.model_uri"] == "bicubic" and props["aperio.srtn.scale"] == "4"
        assert props["aperio.srtn.source"] == rec["uri"] and props["aperio.srtn.region"] == f"0,0,{W},{H}"
        assert props["aperio.srtn.level"] == "0" and props["aperio.srtn.srtn_version"]
        assert props["aperio.srtn.settings"] == manifest["fingerprint"] == rec["fingerprint"]
        prov = read_provenance(f["file"])
        assert prov["source"] == rec["uri"] and prov["git_commit"]


def test_bicubic_cohort_output_equals_a_bicubic_upscale_of_each_slide(bicubic_cohort):
    for f in read_manifest(str(bicubic_cohort["out"]))["files"]:
        rec = next(r for r in read_manifest(str(bicubic_cohort["out"]))["slides"] if r["slide"] == f["slide"])
        psnr = _psnr(tifffile.imread(f["file"], key=0), _bicubic(rec["uri"]))
        print(f"{f['slide']}: {psnr:.1f} dB")
        assert psnr >= 40


def test_rerun_skips_done_slides_and_redoes_them_for_new_settings_or_overwrite(bicubic_cohort, cohort):
    out = bicubic_cohort["out"]
    before = {name: (out / name).stat().st_mtime_ns for name in _outputs(out)}
    cfg = _cfg(slides=str(cohort), out_dir=str(out), actors=1)
    again = predict_cohort(cfg).manifest
    assert again["totals"]["resumed"] == 3 and again["totals"]["tiles"] == 0  # only the corrupt one was tried
    assert {name: (out / name).stat().st_mtime_ns for name in _outputs(out)} == before
    changed = predict_cohort(_cfg(slides=str(cohort), out_dir=str(out), actors=1, quality=80)).manifest
    assert changed["totals"]["resumed"] == 0 and changed["totals"]["status"]["done"] == 3
    redone = predict_cohort(_cfg(slides=str(cohort), out_dir=str(out), actors=1, quality=80, overwrite=True))
    assert redone.manifest["totals"]["resumed"] == 0 and _outputs(out) == sorted(before)


def test_exit_1_when_every_slide_failed_or_any_with_strict(cohort, tmp_path):
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    shutil.copy(FIXTURES / "unreadable.svs", only_bad / "x.svs")
    common = ["predict", "--set", "model=bicubic", "--set", "scale=4", "--set", "executor=local"]
    common += ["--set", "progress=false", "--set", "region=0,0,128,128"]
    assert main([*common, "--set", f"slides={only_bad}", "--set", f"out_dir={tmp_path / 'o1'}"]) == 1
    strict = ["--set", f"slides={cohort}", "--set", f"out_dir={tmp_path / 'o2'}", "--set", "strict=true"]
    assert main([*common, *strict]) == 1
    assert len(_outputs(tmp_path / "o2")) == 3  # strict still runs every slide


# --------------------------------------------------------------------------- EDSR: cohort == single slide, MLflow


@pytest.fixture(scope="module")
def edsr_store(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with fluent_tracking_uri(uri):
        exp = mlflow.create_experiment("cohort-test", artifact_location=(root / "mlartifacts").as_uri())
        torch.manual_seed(0)
        with mlflow.start_run(experiment_id=exp) as run:
            log_sr_model(build_model("edsr", SCALE, n_feats=8, n_blocks=1), name="edsr")
    return {"uri": uri, "model": f"runs:/{run.info.run_id}/edsr"}


def test_edsr_cohort_equals_single_slide_bit_for_bit_and_is_logged(ray_session, cohort, edsr_store, tmp_path):
    common = {"model": edsr_store["model"], "scale": None, "compression": "lossless"}
    common |= {"tracking": {"uri": edsr_store["uri"], "log_run": True, "experiment": "cohort-runs"}}
    cfg = _cfg(slides=str(cohort), out_dir=str(tmp_path / "out"), actors=2, slides_in_flight=3, **common)
    report = predict_cohort(cfg)
    manifest = report.manifest
    assert manifest["totals"]["status"] == {"done": 3, "failed": 1} and report.run_id
    assert manifest["model"]["pinned"] == edsr_store["model"] and manifest["model"]["arch"] == "edsr"
    first = next(r for r in manifest["slides"] if r["status"] == "done")
    single = tmp_path / "single.tiff"
    predict_slide(_cfg(slide=first["uri"], out=str(single), actors=1, **common))
    np.testing.assert_array_equal(tifffile.imread(first["output"], key=0), tifffile.imread(single, key=0))
    assert read_provenance(first["output"])["model_pinned"] == edsr_store["model"]

    client = mlflow.MlflowClient(edsr_store["uri"])
    run = client.get_run(report.run_id)
    assert run.data.metrics["slides_done"] == 3 and run.data.metrics["slides_failed"] == 1
    assert run.data.params["model"] == edsr_store["model"] and run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(report.run_id)}
    assert "_manifest.json" in artifacts
    thumbs = [a.path for a in client.list_artifacts(report.run_id, "thumbnails")]
    assert len(thumbs) == 1 and thumbs[0].endswith("_lr_sr.png")


# --------------------------------------------------------------------------- s3:// in and out


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 for this module (started by the cluster tests' helper), stopped after."""
    from cluster_utils import s3_bucket

    with s3_bucket(tmp_path_factory.mktemp("s3"), "cohort") as s3:
        yield s3


def _leftovers() -> set[str]:
    tmp = tempfile.gettempdir()
    return set(glob.glob(os.path.join(tmp, "srtn-stage-*")) + glob.glob(os.path.join(tmp, "srtn-predict-*")))


def test_s3_slides_to_s3_outputs(ray_session, cohort, s3, monkeypatch, tmp_path):
    """Slides staged from the bucket and removed after; outputs uploaded only when complete, so the corrupt
    slide publishes nothing; status records and the manifest in the bucket too."""
    for key, value in s3["env"].items():
        monkeypatch.setenv(key, value)
    client = s3["client"]
    names = sorted(p.name for p in cohort.iterdir())
    for name in names:
        client.upload_file(str(cohort / name), "cohort", f"slides/{name}")
    before = _leftovers()
    report = predict_cohort(_cfg(slides="s3://cohort/slides", out_dir="s3://cohort/sr", actors=1))
    assert report.exit_code == 0 and report.manifest["totals"]["status"] == {"done": 3, "failed": 1}
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="cohort", Prefix="sr/")["Contents"]}
    tiffs = sorted(k for k in keys if k.endswith(".tiff"))
    assert len(tiffs) == 3 and not any(CORRUPT in k for k in tiffs)
    assert "sr/_manifest.json" in keys and sum(k.startswith("sr/_status/") for k in keys) == 4
    assert {f"s3://cohort/{k}" for k in tiffs} == {f["file"] for f in report.manifest["files"]}
    local = tmp_path / "one.tiff"
    local.write_bytes(storage.read_bytes(f"s3://cohort/{tiffs[0]}"))
    with openslide.OpenSlide(str(local)) as o:
        assert o.dimensions == (SCALE * W, SCALE * H)
        assert o.properties["aperio.srtn.source"].startswith("s3://cohort/slides/")
    assert _leftovers() <= before  # staged slides and local outputs removed
    manifest = json.loads(storage.read_bytes("s3://cohort/sr/_manifest.json"))
    assert manifest["totals"]["slides"] == 4
    again = predict_cohort(_cfg(slides="s3://cohort/slides", out_dir="s3://cohort/sr", actors=1))
    assert again.manifest["totals"]["resumed"] == 3
