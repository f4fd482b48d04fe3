"""What the focus and pen-ink filters cost (issue 17: at most 10% of srtn's per-slide time).

The same slides (synthetic, laid out with out-of-focus boxes and pen strokes, `--qc-regions`) are tiled
in-process by `srtn.data.tile_slide.tile_slide`, srtn's whole per-slide work (tissue mask, level-0 reads,
filters, LR, PNG encodes), with `configs/data/tcga_kirc_seed.yaml` (the original's filters) and with
`configs/data/tcga_kirc.yaml` (plus focus and ink), in interleaved rounds (seed, default, seed, ...), one
process, the same warm-up for both (one untimed slide each). Reported: wall and CPU seconds per slide and
their ratios, kept and decoded tiles. The ratios mix two effects: the filters' own work, and fewer kept
tiles (fewer LR resizes and PNG encodes) when the filters reject more. The filters' own cost is measured
apart: `rejection_reason` alone on the same decoded tiles with each config (ms per tile), times the tiles
decoded per slide, as a share of the seed's per-slide CPU time; that is the goal's figure.

    .venv/bin/python benchmarks/filters.py [--slides 4 --size 4096 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import markdown_table, save_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))


def _per_slide(cfg, slides: list[Path]) -> tuple[float, float, int, int]:
    """(wall s, CPU s) per slide, tiles kept, tiles decoded (level-0 reads)."""
    from srtn.data.tile_slide import tile_slide

    t0, c0, kept, decoded = time.perf_counter(), time.process_time(), 0, 0
    for s in slides:
        result = tile_slide(str(s), source_id=s.stem, cfg=cfg)
        kept, decoded = kept + len(result.rows), decoded + result.record["decoded"]
    return (time.perf_counter() - t0) / len(slides), (time.process_time() - c0) / len(slides), kept, decoded


def _filter_floor(cfgs: dict, slide: Path) -> dict[str, float]:
    """ms per decoded 256-px tile of `rejection_reason` with each config's thresholds (same tiles)."""
    import openslide

    from srtn.data.quality import rejection_reason
    from srtn.data.slides import read_rgb

    with openslide.OpenSlide(str(slide)) as s:
        w, h = s.dimensions
        tiles = [read_rgb(s, x, y, 0, 256, 256) for y in range(0, h - 255, 512) for x in range(0, w - 255, 512)]
    out = {}
    for name, cfg in cfgs.items():
        th = cfg.filters.thresholds()
        t0 = time.perf_counter()
        for _ in range(3):
            for t in tiles:
                rejection_reason(t, th)
        out[name] = 1000 * (time.perf_counter() - t0) / (3 * len(tiles))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slides", type=int, default=4)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from srtn.config.base import load_config
    from srtn.config.tile import TileConfig
    from srtn.synth import write_tcga_dataset

    work = Path(tempfile.mkdtemp(prefix="srtn-bench-filters-"))
    slides = write_tcga_dataset(work, slides=args.slides + 1, seed=3, width=args.size, height=args.size, fmt="svs",
                                qc_regions=True)  # fmt: skip
    warm, timed = slides[0], slides[1:]
    cfgs = {
        name: load_config(TileConfig, REPO / "configs/data" / f"{name}.yaml", ["input=x", "output=x"])
        for name in ("tcga_kirc_seed", "tcga_kirc")
    }
    for cfg in cfgs.values():
        _per_slide(cfg, [warm])
    runs: dict[str, list[tuple[float, float, int, int]]] = {name: [] for name in cfgs}
    for _ in range(args.repeats):
        for name, cfg in cfgs.items():
            runs[name].append(_per_slide(cfg, timed))
    floor = _filter_floor(cfgs, timed[0])
    wall = {n: statistics.median(r[0] for r in rs) for n, rs in runs.items()}
    cpu = {n: statistics.median(r[1] for r in rs) for n, rs in runs.items()}
    kept = {n: rs[0][2] for n, rs in runs.items()}
    decoded = {n: rs[0][3] / len(timed) for n, rs in runs.items()}
    ratio = {"wall": wall["tcga_kirc"] / wall["tcga_kirc_seed"], "cpu": cpu["tcga_kirc"] / cpu["tcga_kirc_seed"]}
    # the filters' own cost: their extra ms per decoded tile, times the tiles decoded per slide
    share = (floor["tcga_kirc"] - floor["tcga_kirc_seed"]) * decoded["tcga_kirc"] / 1000 / cpu["tcga_kirc_seed"]
    rows = [[n, f"{wall[n]:.3f}", f"{cpu[n]:.3f}", kept[n], f"{decoded[n]:.0f}", f"{floor[n]:.3f}"] for n in cfgs]
    print(markdown_table(["config", "wall s/slide", "CPU s/slide", "kept", "decoded/slide", "filters ms/tile"], rows))
    verdict = "PASS" if share <= 0.10 else "FAIL"
    print(f"\nwith focus + ink filters / seed filters, per slide: wall {ratio['wall']:.3f}, CPU {ratio['cpu']:.3f}")
    print(f"the filters' own cost: {share:.1%} of srtn's per-slide CPU time (goal <= 10%: {verdict})")
    result = {"args": vars(args), "wall_s_per_slide": wall, "cpu_s_per_slide": cpu, "kept": kept,
              "decoded_per_slide": decoded, "filters_ms_per_tile": floor, "runs": runs, "ratio": ratio,
              "filter_cost_share": share, "goal": 0.10, "verdict": verdict}  # fmt: skip
    print(f"saved {save_result(result, 'filters')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
