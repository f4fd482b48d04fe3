"""A synthetic stand-in for TCGA-KIRC: real pyramidal Aperio SVS and generic TIFF slides with TCGA names.

Why: tests, the demo and benchmarks need whole slides that OpenSlide opens exactly like the real data
(vendor ``aperio`` with ``AppMag``/``MPP``, or ``generic-tiff`` with a TIFF resolution), named like GDC
downloads so that patient grouping and the 8:1:1 patient split run on them unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from srtn.data.splits import assign_split
from srtn.pyramid import Flavor, write_pyramid
from srtn.synth.artefacts import ArtefactSlide, plan_artefacts
from srtn.synth.render import SyntheticSlide
from srtn.vocab import SPLITS

__all__ = [
    "SlideSpec",
    "render_slide",
    "tcga_slide_specs",
    "write_tcga_slide",
    "write_tcga_dataset",
    "regions_path",
    "read_regions",
    "APERIO_LAYOUT",
    "SRTN_LAYOUT",
    "LAYOUTS",
]

REGIONS_SUFFIX = ".regions.json"

SlideFormat = Literal["svs", "tiff", "mixed"]
Layout = Literal["srtn", "aperio"]

SRTN_LAYOUT: dict[str, int] = {"tile_size": 256, "level_factor": 2}
"""This platform's own layout: 256-px tiles, levels halved (downsamples 1, 2, 4, ...)."""
APERIO_LAYOUT: dict[str, int] = {"tile_size": 240, "level_factor": 4}
"""A real Aperio scanner's layout (TCGA 40x SVS): 240x240 JPEG tiles, levels at downsamples 1, 4, 16.
A 256-px read then spans up to four stored tiles, as on the real data."""
LAYOUTS: dict[Layout, dict[str, int]] = {"srtn": SRTN_LAYOUT, "aperio": APERIO_LAYOUT}

# Tissue source sites that contributed KIRC slides; any two upper-case alphanumerics are valid.
_KIRC_TSS = ("A3", "AK", "AS", "B0", "B2", "B4", "B8", "BP", "CJ", "CW", "CZ", "DV", "EU", "G6", "GK", "MM", "T7")
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SECOND_SLIDE_EVERY = 5  # slide i (i >= 3, i % 5 == 4) is the DX2 slide of the previous slide's patient
_TIFF_EVERY = 4  # in "mixed", slide i with i % 4 == 3 is a generic TIFF


@dataclass(frozen=True)
class SlideSpec:
    """One planned slide: file name, patient, render seed and TIFF layout."""

    name: str
    patient_id: str
    seed: int
    flavor: Flavor


def render_slide(
    *,
    width: int,
    height: int,
    seed: int,
    tissue_fraction: float = 0.4,
    mpp: float = 0.25,
    qc_regions: bool = False,
) -> SyntheticSlide | ArtefactSlide:
    """An H&E-like tile source: ``source(x, y, w, h)`` -> RGB uint8 region at level-0 pixel (x, y).

    White glass (~240 gray), tissue blobs covering about `tissue_fraction` of the area with pink stroma
    and purple nuclei, plus green/blue pen strokes, dark folds (gray < 55), blurred patches and pale
    tissue edges. Rendering is per region and deterministic from the seed: memory does not grow with
    the slide.

    `qc_regions=True` draws the same tissue and folds with known artefacts instead of the random ones
    (`srtn.synth.artefacts`): out-of-focus boxes and a green, a blue and a black marker stroke on tissue,
    listed in level-0 coordinates by the result's `regions_json()`.
    """
    if not qc_regions:
        return SyntheticSlide(width=width, height=height, seed=seed, tissue_fraction=tissue_fraction, mpp=mpp)
    base = SyntheticSlide(
        width=width, height=height, seed=seed, tissue_fraction=tissue_fraction, mpp=mpp, artefacts=("fold",)
    )
    blur, ink = plan_artefacts(base, seed=seed)
    return ArtefactSlide(base, blur, ink)


def regions_path(slide_path: str | os.PathLike[str]) -> Path:
    """The sidecar next to a slide written with `qc_regions`: ``<slide file name>.regions.json``."""
    p = Path(slide_path)
    return p.with_name(p.name + REGIONS_SUFFIX)


def read_regions(slide_path: str | os.PathLike[str]) -> dict:
    """The sidecar of a slide written with `qc_regions` (see `ArtefactSlide.regions_json`)."""
    return json.loads(regions_path(slide_path).read_text())


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("|".join(str(p) for p in ("srtn-tcga", *parts)).encode()).digest()


def tcga_slide_specs(slides: int, *, seed: int, fmt: SlideFormat = "mixed") -> list[SlideSpec]:
    """Plan a dataset: TCGA-style names, patients, per-slide seeds, SVS or TIFF (no pixels yet).

    Names look like ``TCGA-B0-4710-01Z-00-DX1.<UUID>.svs``. Every fifth slide from the fifth on is a
    second slide (DX2) of the previous patient. The first three patients are drawn by rejection sampling
    so that `srtn.data.splits.assign_split` (default 8:1:1 ratios, no salt) puts them in train, val and test:
    any dataset of three or more slides has all three splits. Later patients are random, so their splits
    follow the 8:1:1 hash.
    """
    if slides < 0:
        raise ValueError(f"slides must be >= 0, got {slides}")
    if fmt not in ("svs", "tiff", "mixed"):
        raise ValueError(f"fmt must be 'svs', 'tiff' or 'mixed', got {fmt!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7C6A]))
    used: set[str] = set()

    def new_patient(want_split: str | None) -> str:
        while True:
            tss = _KIRC_TSS[int(rng.integers(len(_KIRC_TSS)))]
            participant = "".join(_ALNUM[int(i)] for i in rng.integers(len(_ALNUM), size=4))
            pid = f"TCGA-{tss}-{participant}"
            if pid not in used and (want_split is None or assign_split(pid) == want_split):
                used.add(pid)
                return pid

    specs: list[SlideSpec] = []
    patients = 0
    for i in range(slides):
        if i >= 3 and i % _SECOND_SLIDE_EVERY == 4:
            pid, dx = specs[-1].patient_id, 2
        else:
            pid, dx = new_patient(SPLITS[patients] if patients < 3 else None), 1
            patients += 1
        flavor: Flavor = "generic" if fmt == "tiff" or (fmt == "mixed" and i % _TIFF_EVERY == 3) else "aperio"
        slide_uuid = str(uuid.UUID(bytes=_digest(seed, i, "uuid")[:16], version=4)).upper()
        ext = "svs" if flavor == "aperio" else "tiff"
        render_seed = int.from_bytes(_digest(seed, i, "render")[:8], "big")
        specs.append(SlideSpec(f"{pid}-01Z-00-DX{dx}.{slide_uuid}.{ext}", pid, render_seed, flavor))
    return specs


def write_tcga_slide(
    path: str | os.PathLike[str],
    spec: SlideSpec,
    *,
    width: int = 4096,
    height: int = 4096,
    tissue_fraction: float = 0.4,
    mpp: float = 0.25,
    app_mag: float = 40,
    quality: int = 90,
    qc_regions: bool = False,
    tile_size: int = 256,
    level_factor: int = 2,
) -> Path:
    """Render and write one planned slide (JPEG tiles); for parallel callers (a picklable, top-level call).

    `tile_size` and `level_factor` set the TIFF layout (default 256 px, x2 levels; ``**APERIO_LAYOUT``:
    240 px, x4 levels as a real scanner writes them).

    With `qc_regions` the slide carries known out-of-focus and ink regions (see `render_slide`), written
    to the sidecar `regions_path(path)` (level-0 coordinates) before the slide itself.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = render_slide(
        width=width, height=height, seed=spec.seed, tissue_fraction=tissue_fraction, mpp=mpp, qc_regions=qc_regions
    )
    if isinstance(source, ArtefactSlide):
        sidecar = {"slide": path.name} | source.regions_json()
        regions_path(path).write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
    extra = {"Filename": path.name.split(".")[0], "ScanScope ID": "SRTN-SYNTH"} if spec.flavor == "aperio" else None
    write_pyramid(
        path,
        source,
        width=width,
        height=height,
        tile_size=tile_size,
        level_factor=level_factor,
        mpp=mpp,
        app_mag=app_mag,
        flavor=spec.flavor,
        compression="jpeg",
        quality=quality,
        description_extra=extra,
    )
    return path


def write_tcga_dataset(
    out_dir: str | os.PathLike[str],
    *,
    slides: int,
    seed: int,
    width: int = 4096,
    height: int = 4096,
    tissue_fraction: float = 0.4,
    fmt: SlideFormat = "mixed",
    mpp: float = 0.25,
    app_mag: float = 40,
    qc_regions: bool = False,
    tile_size: int = 256,
    level_factor: int = 2,
) -> list[Path]:
    """Write `slides` synthetic slides into `out_dir` (created); return their paths in plan order.

    Same arguments, same bytes. With ``fmt="mixed"`` most slides are Aperio SVS and every fourth a
    generic TIFF. See `tcga_slide_specs` for names, patients and the guaranteed three splits. `qc_regions`:
    known blur and ink regions with a sidecar per slide (`write_tcga_slide`); the tissue is the same.
    `tile_size`/`level_factor`: the TIFF layout (`SRTN_LAYOUT` by default; ``**APERIO_LAYOUT`` for a real
    scanner's). A 20x cohort is ``mpp=0.5, app_mag=20``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_tcga_slide(
            out / spec.name,
            spec,
            width=width,
            height=height,
            tissue_fraction=tissue_fraction,
            mpp=mpp,
            app_mag=app_mag,
            qc_regions=qc_regions,
            tile_size=tile_size,
            level_factor=level_factor,
        )
        for spec in tcga_slide_specs(slides, seed=seed, fmt=fmt)
    ]
