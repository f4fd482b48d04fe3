"""The `srtn` console script: one subcommand per job, each a thin shell over a library function.

Every config-driven command loads and validates its config first (so a bad key fails before Ray
starts), then calls `run(config) -> exit code`. Flags such as `--overwrite` are shorthands for
`--set overwrite=true`, so the YAML, the flags and `--set` are one source of truth.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from srtn import runtime
from srtn.errors import SrtnError

__all__ = ["main", "build_parser", "COMMANDS"]


@dataclass(frozen=True)
class Command:
    """A config-driven job: where its config model and its run function live (imported lazily)."""

    config: str
    run: str
    help: str
    flags: dict[str, str] = field(default_factory=dict)  # --flag -> config key set to true
    options: dict[str, str] = field(default_factory=dict)  # --option VALUE -> config key
    config_required: bool = True

    def load(self, ref: str) -> Any:
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {
    "tile": Command(
        "srtn.config.tile:TileConfig",
        "srtn.data.tile_job:run_tiling",
        "Cut whole-slide images into HR/LR tile pairs and write Parquet shards (Ray Data).",
        flags={"--overwrite": "overwrite", "--strict": "strict"},
    ),
    "breakhis": Command(
        "srtn.config.breakhis:BreakHisConfig",
        "srtn.data.breakhis.job:run_breakhis",
        "Build real HR/LR pairs from a BreakHis tree by template matching 400X inside 100X (Ray Data).",
        flags={"--overwrite": "overwrite", "--strict": "strict"},
    ),
    "train": Command(
        "srtn.config.train:TrainConfig",
        "srtn.train.fit:run_training",
        "Train a model on tile shards with Ray Train (PyTorch DDP), tracked in MLflow.",
    ),
    "evaluate": Command(
        "srtn.config.evaluate:EvaluateConfig",
        "srtn.evaluate.job:run_evaluation",
        "Evaluate trained models and bicubic on the test split; log a comparison run to MLflow.",
    ),
    "tune": Command(
        "srtn.config.tune:TuneConfig",
        "srtn.tune.sweep:run_tune",
        "Sweep hyperparameters with Ray Tune (ASHA), one MLflow child run per trial.",
        flags={"--resume": "resume"},
    ),
    "predict": Command(
        "srtn.config.predict:PredictConfig",
        "srtn.infer.predict:run_predict",
        "Super-resolve a whole slide (or a region) into a pyramidal TIFF that OpenSlide opens.",
        flags={"--overwrite": "overwrite", "--strict": "strict"},
        options={
            "--model": "model",
            "--slide": "slide",
            "--out": "out",
            "--slides": "slides",
            "--out-dir": "out_dir",
            "--level": "level",
            "--region": "region",
        },
        config_required=False,
    ),
}


def _verbose_flag(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show Ray's, Ray Data's, Ray Train's and MLflow's own INFO logs (same as SRTN_LOG_LEVEL=DEBUG)",
    )


def _add_config_command(sub: argparse._SubParsersAction, name: str, cmd: Command) -> None:
    p = sub.add_parser(name, help=cmd.help, description=cmd.help)
    _verbose_flag(p, default=argparse.SUPPRESS)  # after the command too; SUPPRESS keeps a flag given before it
    p.add_argument(
        "--config",
        required=cmd.config_required,
        metavar="FILE",
        help="YAML config (see configs/); every key is documented there",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, dotted for nested keys (repeatable), e.g. --set tiles.size=512",
    )
    for flag, key in cmd.flags.items():
        p.add_argument(flag, action="store_true", help=f"same as --set {key}=true")
    for option, key in cmd.options.items():
        p.add_argument(option, metavar=key.upper(), help=f"same as --set {key}=VALUE")
    p.set_defaults(command=name)


def _synth_tcga(args: argparse.Namespace) -> int:
    from srtn.synth import LAYOUTS, write_tcga_dataset

    paths = write_tcga_dataset(
        args.out,
        slides=args.slides,
        seed=args.seed,
        width=args.width,
        height=args.height,
        tissue_fraction=args.tissue_fraction,
        fmt=args.format,
        mpp=args.mpp,
        app_mag=args.app_mag,
        qc_regions=args.qc_regions,
        **LAYOUTS[args.layout],
    )
    print(f"wrote {len(paths)} slides to {args.out}")
    return 0


def _synth_breakhis(args: argparse.Namespace) -> int:
    from srtn.synth import write_breakhis_tree

    root = write_breakhis_tree(args.out, patients=args.patients, seed=args.seed)
    print(f"wrote a BreakHis-style tree for {args.patients} patients under {root}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from srtn.models.summary import summary_table

    print(summary_table(scale=args.scale))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from srtn.demo import run_demo

    return run_demo(workdir=args.workdir, fast=args.fast)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srtn",
        description="SRTN platform: slides -> tile shards -> training/tuning -> evaluation -> whole-slide SR. "
        "Runs on a local Ray instance unless RAY_ADDRESS is set; tracks in MLflow "
        "(MLFLOW_TRACKING_URI, default sqlite:///runs/mlflow.db).",
    )
    _verbose_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        _add_config_command(sub, name, cmd)

    synth = sub.add_parser("synth", help="Generate synthetic datasets (H&E-like slides, BreakHis-like trees).")
    synth_sub = synth.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    tcga = synth_sub.add_parser("tcga", help="Pyramidal Aperio SVS / tiled TIFF slides that OpenSlide opens.")
    tcga.add_argument("out", help="output folder")
    tcga.add_argument("--slides", type=int, default=8, help="number of slides (default 8)")
    tcga.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    tcga.add_argument("--width", type=int, default=4096, help="level-0 width in pixels (default 4096)")
    tcga.add_argument("--height", type=int, default=4096, help="level-0 height in pixels (default 4096)")
    tcga.add_argument("--tissue-fraction", type=float, default=0.4, help="share of the slide that is tissue")
    tcga.add_argument("--format", choices=["svs", "tiff", "mixed"], default="mixed", help="file format(s)")
    tcga.add_argument(
        "--layout",
        choices=["srtn", "aperio"],
        default="srtn",
        help="TIFF layout: srtn = 256-px tiles, levels x2 (default); aperio = a real scanner's 240-px tiles, "
        "levels x4 (downsamples 1, 4, 16)",
    )
    tcga.add_argument("--mpp", type=float, default=0.25, help="microns per level-0 pixel (default 0.25: 40x)")
    tcga.add_argument(
        "--app-mag", type=float, default=40, help="objective power (default 40; a 20x slide: --mpp 0.5 --app-mag 20)"
    )
    tcga.add_argument(
        "--qc-regions",
        action="store_true",
        help="plant out-of-focus boxes and green/blue/black pen strokes; their level-0 geometry goes to "
        "<slide>.regions.json",
    )
    tcga.set_defaults(func=_synth_tcga)
    bh = synth_sub.add_parser("breakhis", help="A BreakHis-style tree whose 400X images sit inside 100X ones.")
    bh.add_argument("out", help="output folder")
    bh.add_argument("--patients", type=int, default=6, help="number of patients (default 6)")
    bh.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    bh.set_defaults(func=_synth_breakhis)

    models = sub.add_parser("models", help="Print the model zoo: parameters and FLOPs per LR pixel.")
    models.add_argument("--scale", type=int, default=4)
    models.set_defaults(func=_models)

    demo = sub.add_parser("demo", help="Run the whole pipeline end to end on generated slides (make demo).")
    demo.add_argument("--workdir", default="runs/demo", help="where data and shards go (default runs/demo)")
    demo.add_argument("--fast", action="store_true", help="smallest possible run (smoke test)")
    _verbose_flag(demo, default=argparse.SUPPRESS)
    demo.set_defaults(func=_demo)
    return parser


def run_config_command(name: str, args: argparse.Namespace) -> int:
    """Validate the config (no Ray yet), then hand it to the job's run function."""
    from srtn.config.base import load_config

    cmd = COMMANDS[name]
    overrides = list(args.set)
    overrides += [f"{key}=true" for flag, key in cmd.flags.items() if getattr(args, flag.lstrip("-").replace("-", "_"))]
    for option, key in cmd.options.items():
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(cmd.load(cmd.config), args.config, overrides)
    run: Callable[[Any], int] = cmd.load(cmd.run)
    return int(run(config) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    from srtn.console import configure

    parser = build_parser()
    args = parser.parse_args(argv)
    configure(verbose=args.verbose)
    ray_was_up = runtime.connected_ray() is not None
    try:
        if args.command in COMMANDS:
            return run_config_command(args.command, args)
        return int(args.func(args) or 0)
    except SrtnError as exc:
        print(f"srtn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; status records make the rerun resume
        print(f"srtn {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if not ray_was_up and runtime.connected_ray() is not None:  # what this command started, this command stops
            runtime.shutdown_ray()


if __name__ == "__main__":
    sys.exit(main())
