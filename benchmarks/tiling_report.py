"""Tables and goals of the tiling benchmark, from its saved runs (so `--report FILE` re-renders a result JSON)."""

from __future__ import annotations

import statistics
from typing import Any

from _common import markdown_table

__all__ = ["GOALS", "goals", "render", "runs_of", "median_of"]

GOALS = {  # issue 16, "What it must show" 2
    "aperio_serial": 6.0,
    "aperio_pool2": 3.0,
    "aperio_ratiopath": 3.0,
    "small_pool2": 1.5,
    "small_ratiopath": 1.5,
    "noray_share": 0.8,
    "whole_cpus": 1.7,
    "memory": 1.25,
}
METHODS = ("srtn", "srtn-noray", "pool2", "serial", "ratiopath")


ONE_TWO = ("srtn-1cpu", "srtn")  # the whole case's 1-core and 2-core runs


def runs_of(runs: list[dict[str, Any]], case: str, label: str, method: str) -> list[dict[str, Any]]:
    return [r for r in runs if (r["case"], r["set"], r["method"]) == (case, label, method) and "failed" not in r]


def median_of(rs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(values) if values else None


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _paired(runs: list[dict[str, Any]], case: str, label: str, a: str, b: str, key: str = "wall_s") -> list[float]:
    """Per-round ratios a/b of `key` (runs of the same round only)."""
    ra = {r["rep"]: r[key] for r in runs_of(runs, case, label, a)}
    rb = {r["rep"]: r[key] for r in runs_of(runs, case, label, b)}
    return [ra[k] / rb[k] for k in sorted(ra) if rb.get(k)]


def _probe_startup(runs: list[dict[str, Any]]) -> float | None:
    """srtn's start-up before its first slide (import + config, init_ray, first task per CPU), from the probe."""
    rs = [r for r in runs if r["method"] == "raystart" and "failed" not in r]
    if not rs:
        return None
    stops = ("ray.shutdown", "shutdown_ray")  # the probe's name for it before / since srtn.runtime.shutdown_ray
    return statistics.median(sum(v for k, v in r["phases"].items() if k not in stops) for r in rs)


def _probe_fixed(runs: list[dict[str, Any]]) -> float | None:
    """All of srtn's fixed costs from the probe, shutdown included (for "work only" estimates)."""
    rs = [r for r in runs if r["method"] == "raystart" and "failed" not in r]
    return statistics.median(sum(r["phases"].values()) for r in rs) if rs else None


def _floor_ms(floors: dict[str, Any], label: str) -> float | None:
    """ms per kept tile of the floor measured on slides of this set's layout (the label's last word)."""
    for name, f in floors.items():
        if name.split()[-1] == label.split()[-1] and f["tiles"]:
            return 1000 * sum(f["wall_s"].values()) / f["tiles"]
    return None


def _method_table(runs: list[dict[str, Any]], case: str, label: str, floors: dict[str, Any], cpus: int) -> str:
    """One set: each method's wall, rate, srtn's lead, start-up, CPU, kept, decodes, memory, load, share of floor."""
    rows = []
    probe = _probe_startup(runs)
    floor = _floor_ms(floors, label)
    srtn = median_of(runs_of(runs, case, label, "srtn"), "wall_s")
    for m in METHODS:
        rs = runs_of(runs, case, label, m)
        failed = [r for r in runs if (r["case"], r["set"], r["method"]) == (case, label, m) and "failed" in r]
        if not rs:
            if failed:
                rows.append([m, "failed: " + str(failed[0]["failed"])[:80]] + [""] * 9)
            continue
        wall = median_of(rs, "wall_s") or float("nan")
        kept = median_of(rs, "kept") or 0
        dec = median_of(rs, "decoded")
        rows.append(
            [
                m,
                _spread([r["wall_s"] for r in rs]),
                f"{60 * rs[0]['slides'] / wall:.1f}",
                "-" if m == "srtn" or not srtn else f"{wall / srtn:.2f}x",
                _spread([r["startup_s"] for r in rs if r.get("startup_s") is not None])
                if m != "srtn"
                else ("-" if probe is None else f"{probe:.1f} (probe)"),
                _spread([r["cpu_s"] for r in rs]),
                f"{median_of(rs, 'cpu_s') / rs[0]['slides']:.2f}",
                f"{kept:.0f}",
                "-" if dec is None else f"{dec / max(kept, 1):.2f}",
                f"{median_of(rs, 'peak_pss_mib'):.0f}",
                ", ".join(f"{r['load'][0]:.1f}-{r['load'][1]:.1f}" for r in rs),
                "-"
                if floor is None or not kept
                else f"{60 * rs[0]['slides'] / wall / _floor_spm(floor, cpus, kept / rs[0]['slides']):.0%}",
            ]
        )
    head = ["method", "wall s", "slides/min", "srtn faster by", "start-up s", "CPU-s", "CPU-s/slide", "kept"]
    return markdown_table([*head, "decodes/kept", "peak PSS MiB", "load avg", "of floor"], rows)


def _checks_table(checks: list[dict[str, Any]]) -> str:
    rows = [
        [
            c["set"],
            c["method"],
            c["kept"],
            f"{c['kept_in_passing']:.2%}",
            c["passing"],
            f"{c['mask_excluded']:.2%}",
        ]
        for c in checks
    ]
    head = ["slides", "method", "kept", "kept in serial's passing set", "serial passing", "passing excluded by mask"]
    return markdown_table(head, rows)


def ray_limit(runs: list[dict[str, Any]], case: str, label: str, cpus: int) -> dict[str, float] | None:
    """The most srtn / srtn-noray can be with Ray in the loop, from srtn-empty (Ray's floor: `srtn tile` with
    nothing to cut) and srtn-noray (the work) of the same set; medians over rounds. srtn's wall is at least
    - serial: srtn-empty's time to its first item + srtn-noray's work (its Pool's span) + srtn-empty's time after
      its last item (no slide can start before a worker has one; the work takes at least what it takes in a Pool);
    - CPU: (srtn-noray's per-slide CPU, its pool processes, + srtn-empty's whole tree) / cpus.
    Both assume Ray's workers cut as fast as the Pool's; the limit is srtn-noray's wall over the larger bound."""
    empty, noray = runs_of(runs, case, label, "srtn-empty"), runs_of(runs, case, label, "srtn-noray")
    if not empty or not noray or median_of(noray, "work_s") is None:
        return None
    first, tail = median_of(empty, "first_item_s"), median_of(empty, "tail_s")
    work, noray_wall = median_of(noray, "work_s"), median_of(noray, "wall_s")
    pool_cpu = statistics.median(r["cpu_s"] - r["cpu_roles"].get("root", 0.0) for r in noray)
    serial = first + work + tail
    cpu = (pool_cpu + median_of(empty, "cpu_s")) / cpus
    return {
        "empty_wall": median_of(empty, "wall_s"),
        "empty_cpu": median_of(empty, "cpu_s"),
        "first": first,
        "span": median_of(empty, "items_span_s"),
        "tail": tail,
        "serial": serial,
        "cpu": cpu,
        "limit": noray_wall / max(serial, cpu),
    }


def _limit_table(runs: list[dict[str, Any]], cpus: int) -> str:
    labels = sorted({r["set"] for r in runs if r["method"] == "srtn-empty"}, key=lambda x: (x.split()[-1], x))
    rows = []
    for label in labels:
        case = next(r["case"] for r in runs if r["method"] == "srtn-empty" and r["set"] == label)
        lim = ray_limit(runs, case, label, cpus)
        if lim is None:
            continue
        s, n = (median_of(runs_of(runs, case, label, m), "wall_s") for m in ("srtn", "srtn-noray"))
        share = n / s if s and n else None
        rows.append(
            [
                label,
                f"{lim['empty_wall']:.1f}",
                f"{lim['empty_cpu']:.1f}",
                f"{lim['first']:.1f}",
                f"{lim['span']:.2f}",
                f"{lim['tail']:.1f}",
                f"{lim['serial']:.1f} / {lim['cpu']:.1f}",
                f"{lim['limit']:.2f}",
                "-" if share is None else f"{share:.2f} = {share / lim['limit']:.0%} of it",
            ]
        )
    head = ["slides", "srtn-empty wall s", "its CPU-s", "first item at s", "items took s", "after last s"]
    return markdown_table([*head, "srtn >= s (serial / CPU)", "limit", "srtn / srtn-noray"], rows) if rows else ""


def _raystart_table(runs: list[dict[str, Any]]) -> str:
    rs = [r for r in runs if r["method"] == "raystart" and "failed" not in r]
    if not rs:
        return ""
    names = list(rs[0]["phases"])
    rows = [
        [n, _spread([r["phases"][n] for r in rs], "{:.2f}"), _spread([r["cpu"][n] for r in rs], "{:.2f}")]
        for n in names
    ]
    rows.append(["process end to end (spawn to exit)", _spread([r["wall_s"] for r in rs], "{:.2f}"), ""])
    return markdown_table(["srtn fixed cost", "wall s", "driver CPU s"], rows)


def _floor_spm(floor_ms: float, cpus: int, kept_per_slide: float) -> float:
    """Slides/min the per-kept-tile floor allows on `cpus` CPUs at `kept_per_slide`."""
    return 60 * cpus / (floor_ms / 1000 * kept_per_slide)


def _floor_rows(runs: list[dict[str, Any]], floors: dict[str, Any], cpus: int) -> list[list[str]]:
    """Per floor: ms per kept tile by phase; the rate it implies on `cpus` CPUs; srtn's share of it."""
    rows = []
    for label, f in floors.items():
        n = max(f["tiles"], 1)
        per = {k: 1000 * v / n for k, v in f["wall_s"].items()}
        total = sum(per.values())
        srtn = [r for r in runs if r["method"] == "srtn" and r["set"] == label and r["case"] in ("aperio", "count")]
        share = "-"
        if srtn:
            kept_per_slide = statistics.median([r["kept"] / r["slides"] for r in srtn])
            floor_spm = _floor_spm(total, cpus, kept_per_slide)
            spm = 60 * srtn[0]["slides"] / statistics.median([r["wall_s"] for r in srtn])
            share = f"{spm:.1f} of {floor_spm:.1f} = {spm / floor_spm:.0%}"
        rows.append(
            [label, *(f"{per[k]:.2f}" for k in ("read", "filters", "lr", "png", "parquet")), f"{total:.2f}", share]
        )
    return rows


def _sweep_table(runs: list[dict[str, Any]], case: str, labels: list[str]) -> str:
    rows = []
    for label in labels:
        cells = [label]
        for m in METHODS:
            w = median_of(runs_of(runs, case, label, m), "wall_s")
            cells.append("-" if w is None else f"{w:.1f}")
        s, p = (median_of(runs_of(runs, case, label, m), "wall_s") for m in ("srtn", "pool2"))
        n = median_of(runs_of(runs, case, label, "srtn-noray"), "wall_s")
        cells.append("-" if not (s and p) else f"{p / s:.2f}x")
        cells.append("-" if not (s and n) else f"{n / s:.2f}")
        rows.append(cells)
    return markdown_table(["slides", *(f"{m} s" for m in METHODS), "srtn vs pool2", "srtn-noray / srtn"], rows)


def _verdict(value: float | None, target: float, *, at_most: bool = False) -> str:
    if value is None:
        return "not run"
    ok = value <= target if at_most else value >= target
    return "met" if ok else "not met"


def goals(res: dict[str, Any]) -> list[list[str]]:
    """The goals table of issue 16 (ratios of medians; per-round range where rounds > 1)."""
    runs, sets = res["runs"], res["sets"]
    out: list[list[str]] = []

    def ratio_row(name: str, case: str, label: str | None, a: str, b: str, target: float) -> None:
        if label is None:
            out.append([name, "not run", f">= {target:g}", "not run"])
            return
        wa, wb = (median_of(runs_of(runs, case, label, m), "wall_s") for m in (a, b))
        v = wa / wb if wa and wb else None
        per = _paired(runs, case, label, a, b)
        shown = "-" if v is None else f"{v:.2f}" + (f" ({min(per):.2f}-{max(per):.2f})" if len(per) > 1 else "")
        out.append([f"{name} ({label})", shown, f">= {target:g}", _verdict(v, target)])

    ap, sm = sets.get("aperio_main"), sets.get("small_main")
    ratio_row("srtn vs serial, Aperio-like", "aperio", ap, "serial", "srtn", GOALS["aperio_serial"])
    ratio_row("srtn vs pool2, Aperio-like", "aperio", ap, "pool2", "srtn", GOALS["aperio_pool2"])
    ratio_row("srtn vs ratiopath, Aperio-like", "aperio", ap, "ratiopath", "srtn", GOALS["aperio_ratiopath"])
    ratio_row("srtn vs pool2, small", "count", sm, "pool2", "srtn", GOALS["small_pool2"])
    ratio_row("srtn vs ratiopath, small", "count", sm, "ratiopath", "srtn", GOALS["small_ratiopath"])
    for case, label in (("aperio", ap), ("count", sm)):
        ratio_row("srtn end to end / srtn-noray (speed)", case, label, "srtn-noray", "srtn", GOALS["noray_share"])
        lim = ray_limit(runs, case, label, res["args"]["cpus"]) if label else None
        if lim is not None:
            name = "(limit) the most it can be with Ray in the loop (srtn-empty, see Ray's floor)"
            out.append([name, f"{lim['limit']:.2f}", "", "info"])
    fixed = _probe_fixed(runs)
    for w in (sets.get("whole"), sets.get("whole_large")):
        ratio_row("whole slide, 2 cores vs 1", "whole", w, "srtn-1cpu", "srtn", GOALS["whole_cpus"])
        if w and runs_of(runs, "whole", w, "srtn-1slot"):
            one, two = (median_of(runs_of(runs, "whole", w, m), "wall_s") for m in ("srtn-1slot", "srtn"))
            if one and two:
                name = "(info) Ray told 1 CPU on 2 cores vs 2 CPUs (earlier runs' measure)"
                out.append([name, f"{one / two:.2f}", "", "info"])
        task = [[sum(r.get("task_seconds") or [0]) for r in runs_of(runs, "whole", w, m)] for m in ONE_TWO]
        if w and all(task):
            v = statistics.median(task[0]) / statistics.median(task[1])
            out.append(["(info) the slide task alone (its record's seconds), 2 cores vs 1", f"{v:.2f}", "", "info"])
        if w and fixed is not None:
            one, two = (median_of(runs_of(runs, "whole", w, m), "wall_s") for m in ONE_TWO)
            if one and two and two > fixed:
                v = (one - fixed) / (two - fixed)
                name = f"(info) the same without Ray's fixed {fixed:.1f} s (wall - probe)"
                out.append([name, f"{v:.2f}", "", "info"])
    small_mem, big_mem = sets.get("memory_small"), sets.get("memory_large")
    if small_mem and big_mem:
        a = median_of(runs_of(runs, "memory", big_mem, "srtn"), "peak_pss_mib")
        b = median_of(runs_of(runs, "memory", small_mem, "srtn"), "peak_pss_mib")
        v = a / b if a and b else None
        shown = "-" if v is None else f"{v:.2f} ({a:.0f} / {b:.0f} MiB)"
        out.append(
            [
                f"peak PSS, whole slide {big_mem} / {small_mem}",
                shown,
                f"<= {GOALS['memory']:g}",
                _verdict(v, GOALS["memory"], at_most=True),
            ]
        )
    else:
        out.append(["peak PSS, whole slide 40k / 20k", "not run", f"<= {GOALS['memory']:g}", "not run"])
    return out


def render(res: dict[str, Any]) -> str:
    """The whole report as markdown."""
    runs, cpus = res["runs"], res["args"]["cpus"]
    out = [f"\n## Tiling benchmark ({'--quick' if res['args'].get('quick') else 'full'}, {cpus} CPUs)\n"]
    out.append(
        "Wall s: spawn to exit of each method's process (what a user waits for: interpreter, imports, Ray start "
        "where used, work, shutdown); median (min-max) over interleaved rounds. start-up s: spawn until the "
        "method starts its work (srtn: the separate fixed-cost probe below). CPU-s: the whole process tree. "
        "srtn faster by: the method's wall / srtn's.\n"
    )
    for case, title in (("aperio", "Aperio-like slides"), ("count", "Small slides"), ("size", "Slide size")):
        dims = {r["set"]: (r["slides"], r.get("width", 0)) for r in runs if r["case"] == case}
        labels = sorted(dims, key=lambda label: dims[label])
        for label in labels if case != "size" else []:
            out += [f"\n### {title}: {label}\n", _method_table(runs, case, label, res.get("floors", {}), cpus)]
        if case in ("count", "size") and labels:
            out += [f"\n### Sweep: {title.lower()} (median wall s)\n", _sweep_table(runs, case, labels)]
    whole = [r for r in runs if r["case"] in ("whole", "memory") and "failed" not in r and not r.get("reused")]
    if whole:
        rows = [
            [
                r["set"],
                r["method"],
                r["rep"],
                f"{r['wall_s']:.1f}",
                f"{r['cpu_s']:.1f}",
                f"{r['peak_pss_mib']:.0f}",
                r.get("kept", "-"),
                r.get("tasks", "-"),
            ]
            for r in whole
        ]
        out += [
            "\n### Whole-slide extraction (`max_tiles_per_slide: null`)\n",
            markdown_table(["slide", "run", "round", "wall s", "CPU-s", "peak PSS MiB", "kept", "region tasks"], rows),
        ]
    if res.get("checks"):
        out += ["\n### Kept sets against the serial loop's passing set\n", _checks_table(res["checks"])]
    table = _limit_table(runs, cpus)
    if table:
        out += [
            "\n### Ray's floor: `srtn tile` with nothing to cut (srtn-empty), and the limit it sets\n",
            "srtn >= the larger of srtn-empty's time to its first item + srtn-noray's work + srtn-empty's time "
            "after its last item, and (srtn-noray's pool CPU + srtn-empty's CPU) / CPUs; the limit on srtn / "
            "srtn-noray is srtn-noray's wall over that bound.\n",
            table,
        ]
    table = _raystart_table(runs)
    if table:
        out += ["\n### srtn's fixed costs (`raystart` probe, a fresh process each round)\n", table]
    if res.get("floors"):
        out += [
            f"\n### Per-kept-tile floor (one process; srtn's slides/min as a share of its rate on {cpus} CPUs)\n",
            markdown_table(
                [
                    "slides",
                    "read ms",
                    "filters ms",
                    "LR ms",
                    "PNG ms",
                    "Parquet ms",
                    "floor ms/kept tile",
                    "srtn share",
                ],
                _floor_rows(runs, res["floors"], cpus),
            ),
        ]
    out += ["\n### Goals (issue 16)\n", markdown_table(["goal", "measured", "target", "result"], goals(res), "lrrc")]
    out.append(f"\nBenchmark wall time {res.get('total_s', 0) / 60:.1f} min; result: {res.get('saved', '-')}")
    return "\n".join(out)
