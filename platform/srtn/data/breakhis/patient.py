"""One BreakHis patient's task: read its images, pair each 400X image with its 100X region, crop,
copy-paste, select, write its shards and status record. No Ray: the job (`job`) maps `process_patient`
over patients, and tests and the serial benchmark call it directly.

Each 400X image (HR) is searched for inside the same patient's 100X images; the best region scoring
at least the threshold is its real LR partner (SEED.md, Dataset 2). Doing all of a patient's work in
one task means a killed run resumes at patient granularity and one bad patient never stops the others.

Rows follow the tile-row schema: `source_id` is the 400X image id (file stem), `group_id` the patient
(the split unit), `x, y` the HR crop's top-left in 400X pixels, `level` 0, and `mpp` null: BreakHis
publishes no pixel calibration, so none is invented.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from srtn import storage
from srtn.config.breakhis import BreakHisConfig
from srtn.data import shard_writer
from srtn.data.breakhis.index import PatientUnit
from srtn.data.breakhis.pairs import Match, best_match, copy_paste, crop_origin, crop_pair, to_gray
from srtn.data.manifest import write_status
from srtn.data.quality import downsample, rejection_reason
from srtn.data.schema import decode_png, empty_row, encode_png, lr_column, tile_id
from srtn.data.splits import assign_split

__all__ = ["STAGES", "patient_split", "initial_record", "process_patient"]

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
    """The image as RGB uint8; `ValueError` saying why for any file that is not a decodable image (zero
    bytes, garbage, truncated), whatever the decoder raised: OpenCV raises `cv2.error`, neither `OSError`
    nor `ValueError`, on an empty buffer, and one such file must stay one listed problem of its patient."""
    data = storage.read_bytes(uri)
    if not data:
        raise ValueError("empty file (0 bytes): not an image")
    try:
        return decode_png(data)
    except cv2.error as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise ValueError(f"OpenCV cannot decode it ({lines[-1].strip()})") from exc


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


def patient_split(unit: PatientUnit, config: BreakHisConfig) -> str:
    """The patient's split (`train`, `val` or `test`), from its id and the configured ratios alone."""
    return assign_split(unit.patient_id, config.split.ratios, salt=config.split.salt)


def initial_record(unit: PatientUnit, split: str) -> dict[str, Any]:
    """A `failed` status record with nothing counted yet: what a patient's record is until its task finishes."""
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
    split = patient_split(unit, config)
    rec = initial_record(unit, split)
    stages: Counter[str] = Counter(rec["stages"])
    rejected: Counter[str] = Counter()
    try:
        matched_mode = config.lr_mode == "matched"
        m = config.matching
        candidates, colour = _read_all(unit.lr if matched_mode else [], rec["problems"], keep_colour=True)
        if matched_mode and not candidates:
            rec["status"], rec["reason"] = "skipped", "no readable 100X images: nothing to match 400X images against"
            rec["problems"].append({"path": unit.patient_id, "kind": "no_lr_images", "error": rec["reason"]})
            shard_writer.write_source_shards([], config.output, source_id=unit.patient_id)  # drop stale shards
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
                try:  # another patient's 100X image (search_scope=all) is re-read when it wins
                    lr_image = _read_rgb(lr_image) if isinstance(lr_image, str) else lr_image
                except (OSError, ValueError) as exc:
                    rec["problems"].append({"path": str(lr_image), "kind": "unreadable", "error": str(exc)})
                    continue
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
        rec["split_counts"] = shard_writer.write_source_shards(rows, config.output, source_id=unit.patient_id)
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
