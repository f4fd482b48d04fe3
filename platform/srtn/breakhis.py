"""`srtn breakhis`: real x4 HR/LR pairs from a BreakHis tree, one Ray task per patient.

Each 400X image (HR) is searched for inside the same patient's 100X images; the best region scoring
at least the threshold is its real LR partner (SEED.md, Dataset 2). A patient's task does all of its
work (read, match, crop, copy-paste, select, write its shards and status record), so a killed run
resumes at patient granularity and one bad patient never stops the others. The driver only indexes
file names, then builds `manifest.json` from the status records.

Rows follow the tile-row schema: `source_id` is the 400X image id (file stem), `group_id` the patient
(the split unit), `x, y` the HR crop's top-left in 400X pixels, `level` 0, and `mpp` null: BreakHis
publishes no pixel calibration, so none is invented.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from srtn import shards, storage
from srtn.breakhis_index import BreakHisIndex, PatientUnit, index_tree
from srtn.breakhis_pairs import Match, best_match, copy_paste, crop_origin, crop_pair, to_gray
from srtn.config.breakhis import BreakHisConfig
from srtn.errors import ConfigError
from srtn.manifest import build_manifest, read_status, summary_table, write_manifest, write_status
from srtn.schema import decode_png, empty_row, encode_png, lr_column, tile_id
from srtn.splits import assign_split
from srtn.tiles import downsample, rejection_reason

__all__ = ["STAGES", "process_patient", "patient_dataset", "finish_manifest", "run_breakhis", "extra_candidates"]

STAGES: tuple[str, ...] = (
    "hr_images",  # 400X images indexed
    "lr_images",  # 100X images indexed
    "pairs",  # 400X images with a partner (matched mode) or used as they are (downsampled mode)
    "unmatched",  # 400X images whose best match scored below the threshold
    "crops",  # crops cut from the pairs
    "after_copy_paste",  # crops plus augmented rows (train only)
    "after_selection",  # rows kept by the quality filter: what the shards hold
)


def _read_rgb(uri: str) -> np.ndarray:
    return decode_png(storage.read_bytes(uri))


def _image_id(uri: str) -> str:
    return storage.basename(uri).rsplit(".", 1)[0]


def _rng_for(key: str, seed: int) -> np.random.Generator:
    """A generator fixed by (seed, crop): augmentation does not depend on task order or parallelism."""
    return np.random.default_rng([seed, int(hashlib.sha1(key.encode()).hexdigest()[:15], 16)])


def _read_all(
    uris: Sequence[str], problems: list[dict[str, str]], *, keep_colour: bool
) -> tuple[list[tuple[str, np.ndarray]], dict[str, np.ndarray | str]]:
    """Gray search images `(id, gray)` and, per id, the colour image (or its URI, re-read if it wins).

    Grays are made once per task, not once per 400X image; other patients' colour images
    (search_scope=all) are not held, which keeps a task's memory near its own patient's.
    """
    grays: list[tuple[str, np.ndarray]] = []
    colour: dict[str, np.ndarray | str] = {}
    for uri in uris:
        image_id = _image_id(uri)
        try:
            rgb = _read_rgb(uri)
        except (OSError, ValueError) as exc:
            problems.append({"path": uri, "kind": "unreadable", "error": str(exc)})
            continue
        grays.append((image_id, to_gray(rgb)))
        colour[image_id] = rgb if keep_colour else uri
    return grays, colour


def _pair_rows(
    hr: np.ndarray,
    lr_region: np.ndarray | None,
    *,
    image_id: str,
    patient_id: str,
    split: str,
    score: float | None,
    config: BreakHisConfig,
    stages: Counter[str],
    rejected: Counter[str],
) -> list[dict[str, Any]]:
    """Crops (and copy-paste rows in train) of one pair that pass selection, as tile rows.

    `lr_region` is the matched 100X region, or None in downsampled mode (LR made from each HR crop).
    """
    scale, size = config.matching.scale, config.crops.hr_size
    thresholds = config.selection.thresholds()
    augment = config.augmentation.enabled and split == "train"
    height, width = hr.shape[:2]
    rows = []
    for position in config.crops.positions:
        x, y = crop_origin(position, width, height, size, scale)
        if lr_region is None:
            hr_crop = hr[y : y + size, x : x + size].copy()
            lr_crop = downsample(hr_crop, scale, config.downsample_method)
        else:
            hr_crop, lr_crop = crop_pair(hr, lr_region, x, y, size, scale)
        stages["crops"] += 1
        variants = [(False, hr_crop, lr_crop)]
        if augment:
            aug = config.augmentation
            rng = _rng_for(f"{image_id}|{position}", config.augmentation_seed)
            a_hr, a_lr = copy_paste(hr_crop, lr_crop, regions=aug.regions, size=aug.size, scale=scale, rng=rng)
            if lr_region is None:
                a_lr = downsample(a_hr, scale, config.downsample_method)
            variants.append((True, a_hr, a_lr))
        for augmented, h, lo in variants:
            stages["after_copy_paste"] += 1
            reason = rejection_reason(h, thresholds)
            if reason is not None:
                rejected[reason] += 1
                continue
            stages["after_selection"] += 1
            row = empty_row() | {
                "tile_id": tile_id(image_id, 0, x, y, extra=f"x{scale}|{position}|aug={int(augmented)}"),
                "source_id": image_id,
                "group_id": patient_id,
                "split": split,
                "x": x,
                "y": y,
                "level": 0,
                "mpp": None,
                "hr": encode_png(h),
                lr_column(scale): encode_png(lo),
                "hr_height": size,
                "hr_width": size,
                "origin": "downsampled" if lr_region is None else "matched",
                "augmented": augmented,
                "match_score": score,
            }
            rows.append(row)
    return rows


def _split_of(unit: PatientUnit, config: BreakHisConfig) -> str:
    return assign_split(unit.patient_id, config.split.ratios, salt=config.split.salt)


def _record(unit: PatientUnit, split: str) -> dict[str, Any]:
    return {
        "source_id": unit.patient_id,
        "status": "failed",
        "tumour_class": unit.tumour_class,
        "subtype": unit.subtype,
        "split": split,
        "seen": 0,
        "kept": 0,
        "rejected": {},
        "split_counts": {},
        "stages": dict.fromkeys(STAGES, 0) | {"hr_images": len(unit.hr), "lr_images": len(unit.lr)},
        "matches": [],
        "unmatched": [],
        "problems": [],
    }


def process_patient(unit: PatientUnit, config: BreakHisConfig, *, extra_lr: Sequence[str] = ()) -> dict[str, Any]:
    """Do all of one patient's work and write its shards and status record; return the record.

    `extra_lr`: other patients' 100X images to search as well (what `matching.search_scope: all` passes).
    Never raises for bad data: unreadable files become `problems`, anything else a `failed` record.
    """
    start = (time.perf_counter(), time.process_time())
    split = _split_of(unit, config)
    rec = _record(unit, split)
    stages: Counter[str] = Counter(rec["stages"])
    rejected: Counter[str] = Counter()
    try:
        matched_mode = config.lr_mode == "matched"
        m = config.matching
        candidates, colour = _read_all(unit.lr if matched_mode else [], rec["problems"], keep_colour=True)
        if matched_mode and not candidates:
            rec["status"], rec["reason"] = "skipped", "no readable 100X images: nothing to match 400X images against"
            rec["problems"].append({"path": unit.patient_id, "kind": "no_lr_images", "error": rec["reason"]})
            shards.write_source_shards([], config.output, source_id=unit.patient_id)  # drop stale shards
            return _finish(rec, config, stages, rejected, start)
        if matched_mode and extra_lr:
            extra, extra_colour = _read_all(extra_lr, rec["problems"], keep_colour=False)
            candidates, colour = candidates + extra, colour | extra_colour
        rows: list[dict[str, Any]] = []
        for uri in unit.hr:
            image_id = _image_id(uri)
            try:
                hr = _read_rgb(uri)
            except (OSError, ValueError) as exc:
                rec["problems"].append({"path": uri, "kind": "unreadable", "error": str(exc)})
                continue
            lr_region = None
            match: Match | None = None
            if matched_mode:
                if hr.shape[0] % m.scale or hr.shape[1] % m.scale or min(hr.shape[:2]) < config.crops.hr_size:
                    error = f"400X image is {hr.shape[1]}x{hr.shape[0]}: not divisible by {m.scale} or under the crop"
                    rec["problems"].append({"path": uri, "kind": "bad_size", "error": error})
                    continue
                # 700x460 gives lr_size (175x115); another size the scale divides is matched at its size / scale
                lr_w, lr_h = hr.shape[1] // m.scale, hr.shape[0] // m.scale
                match = best_match(hr, candidates, lr_size=(lr_w, lr_h), method=m.method)
                if match is None or match.score < m.threshold:
                    stages["unmatched"] += 1
                    best = None if match is None else round(match.score, 4)
                    rec["unmatched"].append({"hr": image_id, "best_score": best})
                    continue
                lr_image = colour[match.lr_id]
                lr_image = _read_rgb(lr_image) if isinstance(lr_image, str) else lr_image
                lr_region = lr_image[match.y : match.y + lr_h, match.x : match.x + lr_w]
                found = {"hr": image_id, "lr": match.lr_id, "x": match.x, "y": match.y, "score": round(match.score, 4)}
                if (lr_w, lr_h) != tuple(m.lr_size):
                    found["lr_size"] = [lr_w, lr_h]
                rec["matches"].append(found)
            elif min(hr.shape[:2]) < config.crops.hr_size:
                rec["problems"].append(
                    {"path": uri, "kind": "bad_size", "error": f"smaller than {config.crops.hr_size}"}
                )
                continue
            stages["pairs"] += 1
            rows += _pair_rows(
                hr,
                lr_region,
                image_id=image_id,
                patient_id=unit.patient_id,
                split=split,
                score=match.score if match else None,
                config=config,
                stages=stages,
                rejected=rejected,
            )
        rec["split_counts"] = shards.write_source_shards(rows, config.output, source_id=unit.patient_id)
        rec["status"] = "done"
    except Exception as exc:  # one patient's failure is recorded, never fatal to the job
        rec["status"] = "failed"
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc(limit=4)
        for key in STAGES[2:]:  # nothing of this patient reached the shards
            stages[key] = 0
        rejected.clear()
    return _finish(rec, config, stages, rejected, start)


def _finish(
    rec: dict[str, Any],
    config: BreakHisConfig,
    stages: Counter[str],
    rejected: Counter[str],
    start: tuple[float, float],
) -> dict[str, Any]:
    rec["stages"] = {k: int(stages[k]) for k in STAGES}
    rec["rejected"] = dict(sorted(rejected.items()))
    rec["seen"], rec["kept"] = rec["stages"]["after_copy_paste"], rec["stages"]["after_selection"]
    rec["seconds"] = round(time.perf_counter() - start[0], 3)
    rec["cpu_seconds"] = round(time.process_time() - start[1], 3)  # well under `seconds`: I/O or a busy machine
    write_status(config.output, rec)
    return rec


def extra_candidates(index: BreakHisIndex, config: BreakHisConfig) -> dict[str, list[str]]:
    """Per patient, the other patients' 100X images to search as well (search_scope=all), else nothing."""
    if config.matching.search_scope != "all" or config.lr_mode != "matched":
        return {}
    every = index.lr_uris()
    out = {}
    for p in index.patients:
        own = set(p.lr)
        out[p.patient_id] = [u for u in every if u not in own]
    return out


def _process_row(row: dict[str, Any], *, config: BreakHisConfig, extra: dict[str, list[str]]) -> dict[str, Any]:
    """Ray Data map function: one row = one patient; returns the status record as JSON (one flat column)."""
    import cv2

    cv2.setNumThreads(1)  # the task holds one CPU: OpenCV's own pool would oversubscribe it
    unit = PatientUnit.from_dict(json.loads(row["unit"]))
    rec = process_patient(unit, config, extra_lr=extra.get(unit.patient_id, ()))
    return {"source_id": unit.patient_id, "record": json.dumps(rec)}


def patient_dataset(
    config: BreakHisConfig, units: Sequence[PatientUnit], extra: Mapping[str, list[str]]
) -> list[dict[str, Any]]:
    """Run `process_patient` over `units` with Ray Data, one task per patient; returns the records."""
    from srtn.per_item import map_items

    # biggest patients first: the last tasks to start are small ones, so the CPUs finish together
    units = sorted(units, key=lambda u: -len(u.hr) * max(1, len(u.lr)))
    items = [{"unit": json.dumps(u.to_dict())} for u in units]  # JSON: nested lists stay plain lists
    rows = map_items(
        _process_row,
        items,
        fn_kwargs={"config": config, "extra": dict(extra)},
        num_cpus=config.execution.num_cpus_per_task,
        concurrency=config.execution.concurrency,
    )
    return [json.loads(r["record"]) for r in rows]


def finish_manifest(
    config: BreakHisConfig, records: Sequence[Mapping[str, Any]], index_problems: Sequence[Mapping[str, str]]
) -> dict[str, Any]:
    """build_manifest plus BreakHis extras: stage counts, every reported problem, match score range."""
    manifest = build_manifest(config.model_dump(mode="json"), records, job="breakhis")
    stages: Counter[str] = Counter()
    for rec in records:
        stages.update(rec.get("stages", {}))
    problems = [dict(p) for p in index_problems] + [p for rec in records for p in rec.get("problems", [])]
    scores = [m["score"] for rec in records for m in rec.get("matches", [])]
    totals = manifest["totals"]
    totals["stages"] = {k: int(stages[k]) for k in STAGES}
    totals["problems"] = dict(sorted(Counter(p["kind"] for p in problems).items()))
    totals["match_score"] = (
        {"min": min(scores), "mean": round(float(np.mean(scores)), 4), "max": max(scores)} if scores else None
    )
    manifest["problems"] = problems
    return manifest


def _print_summary(manifest: Mapping[str, Any]) -> None:
    totals, st = manifest["totals"], manifest["totals"]["stages"]
    print(summary_table(manifest))
    print(
        f"images: 400X={st['hr_images']} 100X={st['lr_images']}  pairs={st['pairs']} unmatched={st['unmatched']}  "
        f"crops={st['crops']} -> after copy-paste={st['after_copy_paste']} -> after selection={st['after_selection']}"
    )
    problems = manifest["problems"]
    if problems:
        print(f"WARNING: {len(problems)} problem(s), see manifest.json: {totals['problems']}", file=sys.stderr)
        for p in problems[:10]:
            print(f"  {p['kind']:<16} {p['path']}: {p['error']}", file=sys.stderr)


def run_breakhis(config: BreakHisConfig) -> int:
    """The `srtn breakhis` job: index, process pending patients on Ray, write manifest.json, summarise.

    Exit 0 unless no patient is done, or `strict` is set and a patient failed or a problem was reported.
    """
    try:
        index = index_tree(config.input)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc), key="input") from exc
    todo, records = [], {}
    for unit in index.patients:
        previous = None if config.overwrite else read_status(config.output, unit.patient_id)
        if previous and previous.get("status") == "done":
            records[unit.patient_id] = previous | {"resumed": True}
        else:
            todo.append(unit)
    print(
        f"srtn breakhis: {len(index.patients)} patients, {len(records)} already done, {len(todo)} to process "
        f"-> {config.output}"
    )
    if todo:
        records |= {rec["source_id"]: rec for rec in patient_dataset(config, todo, extra_candidates(index, config))}
    for unit in index.patients:
        if unit.patient_id not in records:  # only if a task vanished without raising
            records[unit.patient_id] = _record(unit, _split_of(unit, config))
            records[unit.patient_id]["error"] = "no status record after the run"
    manifest = finish_manifest(config, [records[u.patient_id] for u in index.patients], index.problems)
    uri = write_manifest(config.output, manifest)
    _print_summary(manifest)
    print(f"manifest: {uri}")
    statuses = manifest["totals"]["status"]
    if not statuses.get("done"):
        print("ERROR: no patient produced pairs; see the manifest", file=sys.stderr)
        return 1
    if config.strict and (statuses.get("failed") or manifest["problems"]):
        print("strict: failing because of the warnings above", file=sys.stderr)
        return 1
    return 0
