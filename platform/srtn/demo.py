"""`make demo` / `srtn demo`: the whole pipeline end to end on generated data, embedded defaults only.

Generate slides -> tile them (Ray Data; LR downsampled from HR) -> train SRTN, EDSR and SRCNN briefly on CPU
(Ray Train) -> build a BreakHis-style set whose LR is *matched* (real optics: 400X crops found inside 100X
images), and the same crops with LR downsampled from HR -> evaluate every model against bicubic on the test
split of all three in one comparison run (the models x datasets matrix, side-by-side tiles) -> print the
matrix and the MLflow UI command. Local Ray instance; MLflow in `sqlite:///runs/mlflow.db` unless
MLFLOW_TRACKING_URI is set.

The BreakHis-style set is never trained on: all its patients go to the test split, and its two LR variants
share every HR crop, so their difference is the difference between real and synthetic LR alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from srtn.config.base import load_config
from srtn.console import stage

__all__ = ["BREAKHIS_SETS", "DEMO_MODELS", "config_dir", "run_demo"]

# Demo-sized variants (see configs/train/demo.yaml): the full-size models need a GPU to learn anything
# in minutes; these keep each architecture's structure at a width a 2-core CPU can train briefly, and
# learn the residual over bicubic (`global_residual`, parameter-free), so minutes of CPU training
# start from bicubic quality instead of from noise.
DEMO_MODELS: dict[str, list[str]] = {
    "srtn": ["model.name=srtn", "model.kwargs={n_feats: 32, n_blocks: 4, heads: 4, global_residual: true}"],
    "edsr": ["model.name=edsr", "model.kwargs={n_feats: 32, n_blocks: 4, global_residual: true}"],
    "srcnn": ["model.name=srcnn", "model.kwargs={}"],
}


# The transfer sets: one BreakHis-style tree, its crops with matched (real) LR and with LR downsampled from HR
# the way the training tiles were (lanczos), so the two differ only in where the LR comes from.
BREAKHIS_SETS: dict[str, str] = {"breakhis-matched": "matched", "breakhis-downsampled": "downsampled"}


def config_dir() -> Path:
    """The repository's configs/ (next to platform/), else ./configs."""
    here = Path(__file__).resolve().parents[2] / "configs"
    return here if here.is_dir() else Path("configs")


def _step(title: str) -> float:
    stage(title)
    return time.perf_counter()


def _breakhis_configs(configs: Path, tree: Path, work: Path) -> dict[str, Any]:
    """The `srtn breakhis` config of each transfer set: every patient in test (never trained on), no copy-paste."""
    from srtn.config.breakhis import BreakHisConfig

    return {
        name: load_config(
            BreakHisConfig,
            configs / "data/breakhis.yaml",
            [
                f"input={tree / 'BreaKHis_v1'}",
                f"output={work / name}",
                f"lr_mode={mode}",
                "downsample_method=lanczos",
                "split.ratios=[0, 0, 1]",
                "augmentation.enabled=false",
            ],
        )
        for name, mode in BREAKHIS_SETS.items()
    }


def _print_gains(report: Any, names: list[str]) -> None:
    """Each trained model against bicubic, per dataset, in one line each."""
    matrix = report.matrix
    for name in names:
        cells = matrix[(matrix["model"] == name) & matrix["applicable"]]
        gains = ", ".join(f"{r.dataset} {r.gain_psnr:+.2f} dB" for r in cells.itertuples())
        print(f"{name} vs bicubic (test PSNR): {gains}")


def run_demo(*, workdir: str = "runs/demo", fast: bool = False) -> int:
    """Run every stage; returns 0 when all stages succeeded."""
    from srtn.config.evaluate import EvaluateConfig
    from srtn.config.tile import TileConfig
    from srtn.config.train import TrainConfig
    from srtn.data.breakhis.job import run_breakhis
    from srtn.data.tile_job import run_tiling
    from srtn.evaluate.job import evaluate
    from srtn.runtime import init_ray
    from srtn.synth import write_breakhis_tree, write_tcga_dataset
    from srtn.track import ui_hint
    from srtn.train.fit import fit

    configs = config_dir()
    work = Path(workdir).resolve()
    slides_dir, shards, tree = work / "slides", work / "shards", work / "breakhis_tree"
    n_slides, side = (4, 2048) if fast else (8, 3072)
    n_patients = 3 if fast else 6

    # Everything is validated before any Ray work starts.
    tile_cfg = load_config(
        TileConfig,
        configs / "data/tcga_kirc.yaml",
        [f"input={slides_dir}", f"output={shards}", "max_tiles_per_slide=60"],
    )
    train_cfgs = {
        name: load_config(
            TrainConfig,
            configs / "train/demo.yaml",
            [*overrides, f"data.shards={shards}", f"run.storage_path={work / 'ray_results'}"]
            + [f"run.registered_model_name=demo-{name}-x4"]
            + (["optim.epochs=1", "data.limit_train=32"] if fast else []),
        )
        for name, overrides in DEMO_MODELS.items()
    }
    breakhis_cfgs = _breakhis_configs(configs, tree, work)

    t = _step(f"1/5 generate {n_slides} synthetic H&E slides ({side}x{side}) -> {slides_dir}")
    if not slides_dir.is_dir() or len(list(slides_dir.iterdir())) < n_slides:
        write_tcga_dataset(slides_dir, slides=n_slides, seed=0, width=side, height=side, tissue_fraction=0.45)
    print(f"done in {time.perf_counter() - t:.0f} s")

    t = _step("2/5 tile slides into Parquet shards (srtn tile)")
    init_ray()  # with the dashboard: the demo trains later in this process (Ray Train needs its state API)
    if run_tiling(tile_cfg) != 0:
        return 1
    print(f"done in {time.perf_counter() - t:.0f} s")

    outcomes = {}
    for name, cfg in train_cfgs.items():
        t = _step(f"3/5 train {name} (srtn train, 2 Ray Train workers, DDP over gloo)")
        outcomes[name] = fit(cfg, run_name=f"demo-{name}-x4-{time.strftime('%Y%m%d-%H%M%S')}")
        best = outcomes[name].best_metrics
        print(f"{name}: val_psnr {best.get('val_psnr', float('nan')):.2f} dB in {time.perf_counter() - t:.0f} s")

    t = _step(f"4/5 a BreakHis-style set of {n_patients} patients, LR matched and LR downsampled (srtn breakhis)")
    if not (tree / "BreaKHis_v1").is_dir():
        write_breakhis_tree(tree, patients=n_patients, seed=0, unmatched_fraction=0.0)
    for cfg in breakhis_cfgs.values():
        if run_breakhis(cfg) != 0:
            return 1
    print(f"done in {time.perf_counter() - t:.0f} s")

    t = _step("5/5 evaluate on the test splits of all three sets against bicubic (srtn evaluate)")
    models = ", ".join(f"{{name: {n}, uri: '{o.model_uri}'}}" for n, o in outcomes.items())
    sets = ", ".join(
        f"{{name: {n}, shards: '{p}'}}"
        for n, p in [("demo", shards), *((n, c.output) for n, c in breakhis_cfgs.items())]
    )
    eval_cfg = load_config(EvaluateConfig, configs / "evaluate/demo.yaml", [f"datasets=[{sets}]", f"models=[{models}]"])
    report = evaluate(eval_cfg)
    print("models x datasets, test PSNR / SSIM (RGB, and Y):\n")
    print(report.comparison.matrix_markdown(compact=True))
    _print_gains(report, list(outcomes))
    print(f"done in {time.perf_counter() - t:.0f} s")
    print("\nCompare the runs in the MLflow UI (.venv/bin/mlflow), then open the link:")
    for line in ui_hint(report.tracking_uri, report.experiment_id):
        print(f"  {line}")
    return 0
