"""`make demo` / `srtn demo`: the whole pipeline end to end on generated slides, embedded defaults only.

Generate slides -> tile them (Ray Data) -> train SRTN, EDSR and SRCNN briefly on CPU (Ray Train) ->
evaluate them against bicubic on the test split -> print the comparison and the MLflow UI command.
Local Ray instance; MLflow in `sqlite:///runs/mlflow.db` unless MLFLOW_TRACKING_URI is set.
"""

from __future__ import annotations

import time
from pathlib import Path

from srtn.config.base import load_config
from srtn.console import stage

__all__ = ["DEMO_MODELS", "config_dir", "run_demo"]

# Demo-sized variants (see configs/train/demo.yaml): the full-size models need a GPU to learn anything
# in minutes; these keep each architecture's structure at a width a 2-core CPU can train briefly, and
# learn the residual over bicubic (`global_residual`, parameter-free), so minutes of CPU training
# start from bicubic quality instead of from noise.
DEMO_MODELS: dict[str, list[str]] = {
    "srtn": ["model.name=srtn", "model.kwargs={n_feats: 32, n_blocks: 4, heads: 4, global_residual: true}"],
    "edsr": ["model.name=edsr", "model.kwargs={n_feats: 32, n_blocks: 4, global_residual: true}"],
    "srcnn": ["model.name=srcnn", "model.kwargs={}"],
}


def config_dir() -> Path:
    """The repository's configs/ (next to platform/), else ./configs."""
    here = Path(__file__).resolve().parents[2] / "configs"
    return here if here.is_dir() else Path("configs")


def _step(title: str) -> float:
    stage(title)
    return time.perf_counter()


def run_demo(*, workdir: str = "runs/demo", fast: bool = False) -> int:
    """Run every stage; returns 0 when all stages succeeded."""
    from srtn.config.evaluate import EvaluateConfig
    from srtn.config.tile import TileConfig
    from srtn.config.train import TrainConfig
    from srtn.data.tile_job import run_tiling
    from srtn.evaluate.job import evaluate
    from srtn.synth import write_tcga_dataset
    from srtn.track import ui_hint
    from srtn.train.fit import fit
    from srtn.vocab import BICUBIC

    configs = config_dir()
    work = Path(workdir).resolve()
    slides_dir, shards = work / "slides", work / "shards"
    n_slides, side = (4, 2048) if fast else (8, 3072)

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

    t = _step(f"1/4 generate {n_slides} synthetic H&E slides ({side}x{side}) -> {slides_dir}")
    if not slides_dir.is_dir() or len(list(slides_dir.iterdir())) < n_slides:
        write_tcga_dataset(slides_dir, slides=n_slides, seed=0, width=side, height=side, tissue_fraction=0.45)
    print(f"done in {time.perf_counter() - t:.0f} s")

    t = _step("2/4 tile slides into Parquet shards (srtn tile)")
    if run_tiling(tile_cfg) != 0:
        return 1
    print(f"done in {time.perf_counter() - t:.0f} s")

    outcomes = {}
    for name, cfg in train_cfgs.items():
        t = _step(f"3/4 train {name} (srtn train, 2 Ray Train workers, DDP over gloo)")
        outcomes[name] = fit(cfg, run_name=f"demo-{name}-x4-{time.strftime('%Y%m%d-%H%M%S')}")
        best = outcomes[name].best_metrics
        print(f"{name}: val_psnr {best.get('val_psnr', float('nan')):.2f} dB in {time.perf_counter() - t:.0f} s")

    t = _step("4/4 evaluate on the test split against bicubic (srtn evaluate)")
    models = ", ".join(f"{{name: {n}, uri: '{o.model_uri}'}}" for n, o in outcomes.items())
    eval_cfg = load_config(
        EvaluateConfig, configs / "evaluate/demo.yaml", [f"data.shards={shards}", f"models=[{models}]"]
    )
    report = evaluate(eval_cfg)
    print(report.markdown)
    psnr = report.table.set_index("model")["psnr"]
    for name in outcomes:
        gain = psnr[name] - psnr[BICUBIC]
        print(f"{name} vs bicubic on test PSNR: {gain:+.2f} dB ({'beats' if gain > 0 else 'does NOT beat'} bicubic)")
    print(f"done in {time.perf_counter() - t:.0f} s")
    print("\nCompare the runs in the MLflow UI (.venv/bin/mlflow), then open the link:")
    for line in ui_hint(report.tracking_uri, report.experiment_id):
        print(f"  {line}")
    return 0
