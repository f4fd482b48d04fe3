"""The synthetic BreakHis tree: BreakHis names and sizes, a truthful truth.json, same seed same bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import pytest

from srtn.data.breakhis.index import index_tree, parse_name
from srtn.synth.breakhis import write_breakhis_tree


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_breakhis_tree(tmp_path_factory.mktemp("a"), patients=2, seed=3, images_per_patient=3)


def test_layout_names_and_sizes(small: Path) -> None:
    files = sorted(small.rglob("*.png"))
    assert len(files) == 2 * (3 + 3 + 2 + 2)  # 400X, 100X, 40X, 200X
    for f in files:
        fields = parse_name(f.name)
        assert fields is not None, f.name
        rel = f.relative_to(small).parts
        assert rel[:3] == ("histology_slides", "breast", fields["tumour_class"])
        assert rel[3:5] == ("SOB", fields["subtype"]) and rel[6] == f"{fields['magnification']}X"
        assert rel[5] == f"SOB_{f.name[4]}_{f.name.split('-')[0][6:]}_{fields['patient_id']}"
        assert cv2.imread(str(f)).shape == (460, 700, 3)
    index = index_tree(str(small))
    assert not index.problems and [(len(p.hr), len(p.lr), p.other) for p in index.patients] == [(3, 3, 4)] * 2


def test_truth_is_where_template_matching_says(small: Path) -> None:
    out = small.parent
    truth = json.loads((out / "truth.json").read_text())
    assert len(truth) == 6 and sum(v is None for v in truth.values()) == round(6 * 0.25)
    for key, where in truth.items():
        if where is None:
            continue
        hr = cv2.imread(str(out / key), cv2.IMREAD_GRAYSCALE)
        lr = cv2.imread(str(out / where["file"]), cv2.IMREAD_GRAYSCALE)
        scores = cv2.matchTemplate(lr, cv2.resize(hr, (175, 115), interpolation=cv2.INTER_AREA), cv2.TM_CCOEFF_NORMED)
        _, top, _, loc = cv2.minMaxLoc(scores)
        assert loc == (where["x"], where["y"]) and 0.95 <= top < 0.9999  # found, but not a byte copy


def test_same_seed_same_files(tmp_path: Path) -> None:
    tiny = {"patients": 1, "images_per_patient": 2, "lr_images_per_patient": 1, "other_images_per_magnification": 1}
    first = write_breakhis_tree(tmp_path / "a", seed=3, **tiny)
    assert _digest(write_breakhis_tree(tmp_path / "b", seed=3, **tiny).parent) == _digest(first.parent)
    assert _digest(write_breakhis_tree(tmp_path / "c", seed=4, **tiny).parent) != _digest(first.parent)
    with pytest.raises(ValueError, match="unmatched_fraction"):
        write_breakhis_tree(tmp_path / "d", patients=1, seed=0, unmatched_fraction=1.5)
