"""`srtn breakhis`: real x4 HR/LR pairs from a BreakHis tree, one Ray task per patient.

The driver only indexes file names, runs `patient.process_patient` once per pending patient with Ray
Data (each task writes its own shards and status record), then builds `manifest.json` from the status
records and prints the summary.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from srtn.config.breakhis import BreakHisConfig
from srtn.data.breakhis.index import BreakHisIndex, PatientUnit, index_tree
from srtn.data.breakhis.patient import STAGES, initial_record, patient_split, process_patient
from srtn.data.manifest import build_manifest, read_status, summary_table, write_manifest
from srtn.errors import ConfigError

__all__ = ["extra_candidates", "patient_dataset", "finish_manifest", "run_breakhis"]

logger = logging.getLogger(__name__)


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
        lines = [f"  {p['kind']:<16} {p['path']}: {p['error']}" for p in problems[:10]]
        logger.warning("%d problem(s), see the manifest: %s\n%s", len(problems), totals["problems"], "\n".join(lines))


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
            records[unit.patient_id] = initial_record(unit, patient_split(unit, config))
            records[unit.patient_id]["error"] = "no status record after the run"
    manifest = finish_manifest(config, [records[u.patient_id] for u in index.patients], index.problems)
    uri = write_manifest(config.output, manifest)
    _print_summary(manifest)
    print(f"manifest: {uri}")
    statuses = manifest["totals"]["status"]
    if not statuses.get("done"):
        logger.error("no patient produced pairs; see the manifest")
        return 1
    if config.strict and (statuses.get("failed") or manifest["problems"]):
        logger.error("strict: failing because of the warnings above")
        return 1
    return 0
