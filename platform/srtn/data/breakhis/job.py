"""`srtn breakhis`: real x4 HR/LR pairs from a BreakHis tree, one Ray task per patient.

The driver checks the output (before Ray starts), indexes file names, runs `patient.process_patient` once
per pending patient with Ray Data (each task publishes its own shards, then its status record with the
files' entries), and ends as `srtn tile` does (`srtn.data.manifest`): every shard file and status record
not produced or kept by this run is deleted and `OUT/_manifest.json` lists the rest. A patient is resumed
only when its record has this config's fingerprint, the same image names (`inputs`) and its files on disk
with their recorded sizes; else it is redone.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from srtn import storage
from srtn.config.breakhis import BreakHisConfig
from srtn.data.breakhis.index import BreakHisIndex, PatientUnit, index_tree
from srtn.data.breakhis.patient import STAGES, initial_record, patient_split, process_patient
from srtn.data.manifest import (
    build_manifest,
    check_output,
    commit_manifest,
    fingerprint,
    is_done,
    read_status,
    remove_manifest,
    summary_table,
    write_status,
)
from srtn.data.shards import describe_source_files, existing_shards, remove_source_files
from srtn.errors import ConfigError

__all__ = [
    "NOT_ROW_KEYS",
    "breakhis_fingerprint",
    "patient_inputs",
    "extra_candidates",
    "patient_dataset",
    "finish_manifest",
    "run_breakhis",
]

logger = logging.getLogger(__name__)

NOT_ROW_KEYS: tuple[str, ...] = ("input", "output", "execution", "overwrite", "strict")
"""Config keys that never change a patient's rows; all others (matching, crops, augmentation, selection,
split, lr_mode, downsample_method, seed, and any new key) are in the fingerprint."""


def breakhis_fingerprint(config: BreakHisConfig) -> str:
    return fingerprint({k: v for k, v in config.model_dump(mode="json").items() if k not in NOT_ROW_KEYS})


def patient_inputs(unit: PatientUnit, extra_lr: Sequence[str] = ()) -> str:
    """Hash of the image names a patient's rows come from (its 400X and 100X images, and the other patients'
    100X images it is matched against): adding or removing an image redoes the patient."""
    names = {k: sorted(storage.basename(u) for u in v) for k, v in (("hr", unit.hr), ("lr", unit.lr))}
    return fingerprint(names | {"extra_lr": sorted(storage.basename(u) for u in extra_lr)})


def _patient_path(unit: PatientUnit) -> str:
    """The folder holding a patient's images (their common folder), as the manifest records it."""
    uris = [*unit.hr, *unit.lr]
    if not uris:
        return unit.patient_id
    folders = [u.rstrip("/").rsplit("/", 1)[0].split("/") for u in uris]  # local paths and s3:// URIs alike
    common = folders[0]
    for parts in folders[1:]:
        n = next((i for i, (a, b) in enumerate(zip(common, parts)) if a != b), min(len(common), len(parts)))
        common = common[:n]
    return "/".join(common)


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
    extra_lr = extra.get(unit.patient_id, ())
    try:
        rec = process_patient(unit, config, extra_lr=extra_lr)
    except Exception as exc:  # only its status write can escape: the output is unwritable
        rec = initial_record(unit, patient_split(unit, config))
        rec |= {"error": f"cannot write its status record: {type(exc).__name__}: {exc}", "output_error": True}
    return {"source_id": unit.patient_id, "record": json.dumps(_publish(rec, unit, config, extra_lr))}


def _publish(rec: dict[str, Any], unit: PatientUnit, config: BreakHisConfig, extra_lr: Sequence[str]) -> dict[str, Any]:
    """Complete a patient's record with its path, fingerprint, inputs and file entries, and write it again;
    a patient that is not done publishes no file."""
    rec |= {"path": _patient_path(unit), "fingerprint": breakhis_fingerprint(config)}
    rec |= {"inputs": patient_inputs(unit, extra_lr), "files": []}
    try:
        if rec["status"] == "done":
            rec["files"] = describe_source_files(config.output, unit.patient_id, rec.get("split_counts", {}))
        else:
            remove_source_files(config.output, unit.patient_id)
        write_status(config.output, rec)
    except Exception as exc:  # disk full, store refuses: the run must not exit 0
        rec |= {"status": "failed", "error": f"cannot write its outputs: {exc}", "output_error": True}
        rec |= {"files": [], "kept": 0, "split_counts": {}}  # nothing of it is published
        with contextlib.suppress(OSError):
            remove_source_files(config.output, unit.patient_id)
    return rec


def patient_dataset(
    config: BreakHisConfig, units: Sequence[PatientUnit], extra: Mapping[str, list[str]]
) -> list[dict[str, Any]]:
    """Run `process_patient` over `units` with Ray Data, one task per patient; returns the records."""
    from srtn.data.per_item import map_items

    # biggest patients first: the last tasks to start are small ones, so the CPUs finish together
    units = sorted(units, key=lambda u: -len(u.hr) * max(1, len(u.lr)))
    items = [{"unit": json.dumps(u.to_dict())} for u in units]  # JSON: nested lists stay plain lists
    rows = map_items(
        _process_row,
        items,
        fn_kwargs={"config": config, "extra": dict(extra)},
        num_cpus=config.execution.num_cpus_per_task,
        concurrency=config.execution.concurrency,
        desc="pairing",
        unit="patient",
    )
    return [json.loads(r["record"]) for r in rows]


def finish_manifest(
    config: BreakHisConfig,
    records: Sequence[Mapping[str, Any]],
    index_problems: Sequence[Mapping[str, str]],
    *,
    fingerprint: str = "",
) -> dict[str, Any]:
    """build_manifest plus BreakHis extras: stage counts, every reported problem, match score range."""
    manifest = build_manifest(config.model_dump(mode="json"), records, job="breakhis", fingerprint=fingerprint)
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
        lines = [f"  {p['kind']:<16} {p['path']}: {p['error']}" for p in problems[:10]]
        logger.warning("%d problem(s), see the manifest: %s\n%s", len(problems), totals["problems"], "\n".join(lines))


def _pending(
    config: BreakHisConfig, index: BreakHisIndex, extra: Mapping[str, list[str]], fp: str
) -> tuple[list[PatientUnit], dict[str, dict[str, Any]]]:
    """(patients to process, records of the patients resumed)."""
    existing = existing_shards(config.output)
    todo, records = [], {}
    for unit in index.patients:
        previous = None if config.overwrite else read_status(config.output, unit.patient_id)
        inputs = patient_inputs(unit, extra.get(unit.patient_id, ()))
        if is_done(previous, fingerprint=fp, existing=existing, inputs=inputs):
            records[unit.patient_id] = dict(previous or {}) | {"resumed": True}
        else:
            todo.append(unit)
    return todo, records


def _exit_code(config: BreakHisConfig, manifest: Mapping[str, Any]) -> int:
    statuses = manifest["totals"]["status"]
    if any(rec.get("output_error") for rec in manifest["sources"]):
        logger.error("outputs of some patients could not be written; see the manifest")
        return 1
    if not statuses.get("done"):
        logger.error("no patient produced pairs; see the manifest")
        return 1
    if config.strict and (statuses.get("failed") or manifest["problems"]):
        logger.error("strict: failing because of the warnings above")
        return 1
    return 0


def run_breakhis(config: BreakHisConfig) -> int:
    """The `srtn breakhis` job: check the output, index, process pending patients on Ray, commit the
    manifest, summarise.

    Exit 2 (`ConfigError`, before Ray) for a bad input or output; 1 when no patient is done, an output could
    not be written, or `strict` is set and a patient failed or a problem was reported; else 0.
    """
    try:
        index = index_tree(config.input)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc), key="input") from exc
    check_output(config.output)
    fp = breakhis_fingerprint(config)
    extra = extra_candidates(index, config)
    todo, records = _pending(config, index, extra, fp)
    remove_manifest(config.output)
    print(
        f"srtn breakhis: {len(index.patients)} patients, {len(records)} already done, {len(todo)} to process "
        f"-> {config.output}"
    )
    if todo:
        records |= {rec["source_id"]: rec for rec in patient_dataset(config, todo, extra)}
    for unit in index.patients:
        if unit.patient_id not in records:  # only if a task vanished without raising
            records[unit.patient_id] = initial_record(unit, patient_split(unit, config))
            records[unit.patient_id] |= {"error": "no status record after the run", "files": []}
    manifest = finish_manifest(config, [records[u.patient_id] for u in index.patients], index.problems, fingerprint=fp)
    try:
        uri = commit_manifest(config.output, manifest)
    except OSError as exc:
        _print_summary(manifest)
        logger.error("the shard folder %s could not be completed, no manifest written: %s", config.output, exc)
        return 1
    _print_summary(manifest)
    print(f"manifest: {uri}")
    return _exit_code(config, manifest)
