"""Index a BreakHis tree by patient from file names alone (no pixels read: the driver stays cheap).

BreakHis names carry everything: `SOB_B_A-14-22549AB-400-013.png` is benign (`B`), adenosis (`A`),
patient `14-22549AB` (year-number: the split unit), 400X, image 13. Folders are only checked for
consistency (class, magnification), so a root at `BreaKHis_v1`, `histology_slides` or `breast` works,
and so does a flat copy. Files that do not parse are reported, never fatal.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from srtn import storage

__all__ = [
    "CLASS_CODES",
    "SUBTYPE_CODES",
    "NAME_RE",
    "PatientUnit",
    "BreakHisIndex",
    "parse_name",
    "index_files",
    "index_tree",
]

CLASS_CODES: dict[str, str] = {"B": "benign", "M": "malignant"}
SUBTYPE_CODES: dict[str, str] = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
_SUBTYPE_CLASS = {"A": "B", "F": "B", "PT": "B", "TA": "B", "DC": "M", "LC": "M", "MC": "M", "PC": "M"}
NAME_RE = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<code>[A-Z]{1,2})-(?P<year>\d{2})-(?P<number>[0-9A-Za-z]+)"
    r"-(?P<mag>40|100|200|400)-(?P<seq>\d{3})\.png$"
)
_MAG_DIR = re.compile(r"^(\d+)X$", re.IGNORECASE)


@dataclass
class PatientUnit:
    """The work unit of the pipeline: one patient's 400X (HR) and 100X (LR) image URIs, sorted."""

    patient_id: str
    tumour_class: str
    subtype: str
    hr: list[str] = field(default_factory=list)
    lr: list[str] = field(default_factory=list)
    other: int = 0  # 40X and 200X images: counted, unused

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatientUnit:
        return cls(**data)


@dataclass
class BreakHisIndex:
    """Patients sorted by id, plus one `{"path", "kind", "error"}` entry per file that could not be indexed."""

    patients: list[PatientUnit]
    problems: list[dict[str, str]]

    def lr_uris(self) -> list[str]:
        return [uri for p in self.patients for uri in p.lr]


def parse_name(name: str) -> dict[str, Any] | None:
    """The fields of a BreakHis file name, or None if it is not one (wrong pattern, unknown code)."""
    m = NAME_RE.match(name)
    if m is None or _SUBTYPE_CLASS.get(m["code"]) != m["cls"]:
        return None
    return {
        "tumour_class": CLASS_CODES[m["cls"]],
        "subtype": SUBTYPE_CODES[m["code"]],
        "patient_id": f"{m['year']}-{m['number']}",
        "magnification": int(m["mag"]),
        "seq": int(m["seq"]),
    }


def _folder_problem(uri: str, fields: dict[str, Any]) -> str | None:
    """Why the folders contradict the name (a 400X file in a 100X folder is a mislabelled image)."""
    parts = uri.replace("\\", "/").split("/")[:-1]
    mag_dir = _MAG_DIR.match(parts[-1]) if parts else None
    if mag_dir and int(mag_dir.group(1)) != fields["magnification"]:
        return f"name says {fields['magnification']}X but the folder is {parts[-1]}"
    classes = {"benign", "malignant"} & set(parts)
    if classes and fields["tumour_class"] not in classes:
        return f"name says {fields['tumour_class']} but the folder is {classes.pop()}"
    return None


def index_files(uris: Iterable[str]) -> BreakHisIndex:
    """Group image URIs by patient; report malformed names, folder contradictions and duplicate ids."""
    problems: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    units: dict[str, PatientUnit] = {}
    hr: dict[str, list[tuple[int, str]]] = defaultdict(list)
    lr: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for uri in sorted(uris):
        name = storage.basename(uri)
        fields = parse_name(name)
        if fields is None:
            problems.append({"path": uri, "kind": "malformed_name", "error": f"{name!r} is not a BreakHis image name"})
            continue
        folder = _folder_problem(uri, fields)
        if folder:
            problems.append({"path": uri, "kind": "folder_mismatch", "error": folder})
            continue
        image_id = name[: -len(".png")]
        if image_id in seen:
            problems.append({"path": uri, "kind": "duplicate_id", "error": f"same name as {seen[image_id]}"})
            continue
        seen[image_id] = uri
        pid = fields["patient_id"]
        unit = units.setdefault(pid, PatientUnit(pid, fields["tumour_class"], fields["subtype"]))
        # an id filed under two subtypes stays one patient (the split unit); both labels are kept
        for attr in ("tumour_class", "subtype"):
            labels = getattr(unit, attr).split("+")
            if fields[attr] not in labels:
                setattr(unit, attr, "+".join(sorted([*labels, fields[attr]])))
        if fields["magnification"] == 400:
            hr[pid].append((fields["seq"], uri))
        elif fields["magnification"] == 100:
            lr[pid].append((fields["seq"], uri))
        else:
            unit.other += 1
    for pid, unit in units.items():
        unit.hr = [uri for _, uri in sorted(hr[pid])]
        unit.lr = [uri for _, uri in sorted(lr[pid])]
    return BreakHisIndex([units[pid] for pid in sorted(units)], problems)


def index_tree(roots: str | Sequence[str]) -> BreakHisIndex:
    """Index every `.png` under one or more roots (local or s3://); a missing root raises FileNotFoundError."""
    uris: list[str] = []
    for root in [roots] if isinstance(roots, str) else roots:
        if not storage.exists(root):
            raise FileNotFoundError(f"BreakHis root {root} does not exist")
        uris += storage.list_files(root, extensions=[".png"])
    return index_files(uris)
