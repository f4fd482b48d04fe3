"""Slide sets of the tiling benchmark: generated once into a cache folder keyed by their parameters, reused.

Two layouts (`srtn.synth.tcga.LAYOUTS`): ``srtn`` (256-px JPEG tiles, levels halved; 3 of 4 Aperio SVS, 1 of 4
generic TIFF) and ``aperio`` (what a real 40x Aperio scanner writes: 240-px JPEG tiles, levels at downsamples
4 and 16, MPP 0.25, AppMag 40; all SVS). Slides are written by `srtn.synth.tcga.write_tcga_slide` in a
`multiprocessing.Pool(procs)`, one slide per task; a folder is used only once it holds `COMPLETE` (delete it to
rebuild). A set of n slides is the first n of a larger set of the same parameters when one exists (the plan
is sequential: the first n specs do not depend on the total), listed in a `.txt` file that every method reads.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["SlideSet", "ensure_slides", "slide_list", "read_list", "warm_page_cache"]


@dataclass(frozen=True)
class SlideSet:
    """What a set of synthetic slides is made of (every field is in its cache folder's name)."""

    n: int
    width: int
    height: int
    layout: str = "srtn"  # srtn | aperio
    tissue: float = 0.4
    seed: int = 0
    fmt: str = "mixed"  # mixed | svs | tiff

    def key(self) -> str:
        return f"slides-{self.layout}-{self.fmt}-n{self.n}-{self.width}x{self.height}-t{self.tissue:g}-s{self.seed}"

    def label(self) -> str:
        side = f"{self.width // 1000}k" if self.width >= 10000 else f"{self.width}"
        return f"{self.n} x {side} {self.layout}"

    def describe(self) -> dict[str, Any]:
        return asdict(self) | {"key": self.key()}


def _layout_kwargs(layout: str) -> dict[str, Any]:
    if layout == "srtn":
        return {}  # today's defaults: 256-px tiles, x2 levels
    from srtn.synth.tcga import APERIO_LAYOUT

    return dict(APERIO_LAYOUT) | {"mpp": 0.25, "app_mag": 40}


def _write_one(job: tuple[str, Any, SlideSet]) -> str:
    from srtn.synth.tcga import write_tcga_slide

    path, spec, s = job
    kwargs = _layout_kwargs(s.layout)
    return str(write_tcga_slide(path, spec, width=s.width, height=s.height, tissue_fraction=s.tissue, **kwargs))


def _complete_superset(cache: Path, s: SlideSet) -> Path | None:
    """A finished folder of the same parameters with at least `s.n` slides (its first n are these)."""
    best: tuple[int, Path] | None = None
    for d in cache.glob(SlideSet(**(asdict(s) | {"n": 0})).key().replace("-n0-", "-n*-")):
        if not (d / "COMPLETE").exists():
            continue
        n = json.loads((d / "COMPLETE").read_text()).get("n", 0)
        if n >= s.n and (best is None or n < best[0]):
            best = (n, d)
    return best[1] if best else None


def ensure_slides(cache: Path, s: SlideSet, *, procs: int = 2) -> list[Path]:
    """The slides of `s` (generated if missing, in a Pool of `procs`), in plan order."""
    from srtn.synth.tcga import tcga_slide_specs

    specs = tcga_slide_specs(s.n, seed=s.seed, fmt=s.fmt)  # type: ignore[arg-type]
    found = _complete_superset(cache, s)
    if found is not None:
        return [found / spec.name for spec in specs]
    final = cache / s.key()
    tmp = final.with_name(final.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    jobs = [(str(tmp / spec.name), spec, s) for spec in specs if not (tmp / spec.name).exists()]
    t0 = time.perf_counter()
    print(f"generating {len(jobs)} slides for {s.key()} in {procs} processes ...", file=sys.stderr, flush=True)
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        for _ in pool.imap_unordered(_write_one, jobs, chunksize=1):
            pass
    (tmp / "COMPLETE").write_text(json.dumps(asdict(s) | {"seconds": time.perf_counter() - t0}))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return [final / spec.name for spec in specs]


def slide_list(paths: list[Path], out: Path) -> Path:
    """A `.txt` file naming `paths`, one a line: the input every method reads (srtn takes it as `input`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{p}\n" for p in paths))
    return out


def read_list(path: str | Path) -> list[Path]:
    """The slides of a `.txt` list or of a folder (`.svs`, `.tiff`), sorted as given / by name."""
    p = Path(path)
    if p.is_file():
        return [Path(line.strip()) for line in p.read_text().splitlines() if line.strip()]
    return sorted(q for q in p.iterdir() if q.suffix in (".svs", ".tiff", ".tif"))


def warm_page_cache(paths: list[Path]) -> float:
    """Read every slide file once, so each method finds them in the page cache (the same warm-up for all);
    returns the seconds taken."""
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(8 << 20):
                pass
    return time.perf_counter() - t0
