"""Config of `srtn train`: tile shards -> a model trained with Ray Train (PyTorch DDP) -> MLflow.

Blocks: `data` (shards, scale, patches, augmentation), `model` (registry name + constructor kwargs,
BasicSR style), `optim` (the recipe: MSE, Adam, lr 1e-3, global batch 8, 10 epochs by default),
`scaling` (Ray Train workers and resources), `run` (names, storage, checkpoints, registry), `tracking`
(MLflow) and `testing` (fault injection for tests only). Every key is documented in configs/train/*.yaml.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from pydantic import Field, model_validator

from srtn.config.base import Scale, StrictModel

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScalingConfig",
    "FaultInjectionConfig",
    "TrackingConfig",
    "TrainConfig",
]


class AugmentConfig(StrictModel):
    flips: bool = Field(True, description="random horizontal and vertical flips of train patches")
    rot90: bool = Field(True, description="random 90-degree rotations (transposes) of train patches")


class DataConfig(StrictModel):
    shards: str = Field(description="tile shards folder (local or s3://): OUT of srtn tile / srtn breakhis")
    dataset: str | None = Field(None, description="dataset name for run names/experiment; default: folder name")
    scale: Scale = Field(4, description="SR factor; the shards need the lr_x<scale> column")
    patch_size: int | None = Field(48, ge=4, description="LR train patch side (HR = patch*scale); null: whole tiles")
    val_crop: int | None = Field(None, ge=4, description="LR centre crop of val tiles; null: whole tiles")
    cache_val: bool = Field(True, description="rank 0 keeps decoded val tiles in memory after the first epoch")
    augment: AugmentConfig = AugmentConfig()
    limit_train: int | None = Field(None, ge=1, description="use at most this many train rows (smoke runs)")
    limit_val: int | None = Field(None, ge=1, description="use at most this many val rows")
    shuffle_buffer: int = Field(256, ge=0, description="rows in each worker's local shuffle buffer; 0: off")
    seed: int = Field(0, description="seed of the per-epoch file order and of model init")

    @property
    def name(self) -> str:
        return self.dataset or self.shards.rstrip("/").rsplit("/", 1)[-1] or "dataset"


class ModelConfig(StrictModel):
    name: str = Field("srtn", description="registry name: srtn, edsr, srcnn (bicubic has nothing to train)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor kwargs, e.g. n_feats, n_blocks")

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        from srtn.models.registry import MODELS

        if self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}; available: {', '.join(MODELS)}")
        if self.name == "bicubic":
            raise ValueError("bicubic has no parameters to train; evaluate it with srtn evaluate instead")
        params = inspect.signature(MODELS[self.name]).parameters
        accepted = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {"scale"}
        unknown = sorted(set(self.kwargs) - accepted)
        if unknown:
            raise ValueError(f"model {self.name!r} takes no argument(s) {unknown}; it takes {sorted(accepted)}")
        return self


class OptimConfig(StrictModel):
    loss: Literal["mse", "l1"] = "mse"
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1, description="global batch; each worker takes batch_size / num_workers")
    epochs: int = Field(10, ge=1)
    scheduler: Literal["none", "cosine", "step"] = "none"
    step_size: int = Field(5, ge=1, description="scheduler=step: epochs between decays")
    gamma: float = Field(0.5, gt=0, le=1, description="scheduler=step: decay factor")
    min_lr: float = Field(0.0, ge=0, description="scheduler=cosine: final learning rate")
    grad_clip: float = Field(0.0, ge=0, description="max global gradient norm; 0: off")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of weights (e.g. 0.999); 0: off")
    bf16: bool = Field(False, description="bfloat16 autocast for forward and loss")
    # On by default: measured on CPU (oneDNN, 2 threads) train steps 1.32x faster for SRTN 32x4, 1.17x EDSR,
    # 1.19x SRCNN, never slower (README, Performance: Training); PyTorch recommends it for convnets on GPUs
    # under AMP. Checkpoints and logged models are loaded into contiguous models, so it stays internal.
    channels_last: bool = Field(True, description="channels_last memory format (faster convs on CPUs and GPUs)")


class ScalingConfig(StrictModel):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU when use_gpu)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0, description="used only when use_gpu")
    data_cpus: float = Field(0.25, gt=0, description="CPUs per Ray Data read/decode task")
    data_concurrency: int | None = Field(2, ge=1, description="max Ray Data decode tasks at once; null: no cap")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="placement of the workers: PACK fills a node first; SPREAD puts them on distinct nodes"
    )


class RunConfig(StrictModel):
    name: str | None = Field(None, description="Ray Train run name; the same name resumes; default: generated")
    experiment: str | None = Field(None, description="MLflow experiment; default: srtn-<dataset>")
    storage_path: str = Field("runs/ray_results", description="Ray Train storage (local or s3://)")
    registered_model_name: str | None = Field(None, description="MLflow registry name; null: not registered")
    final_model: Literal["best", "last"] = Field("best", description="which checkpoint becomes the logged model")
    log_images_every: int = Field(1, ge=0, description="sample grid every N epochs (and at the last); 0: off")
    num_images: int = Field(4, ge=1, description="val tiles in each sample grid")
    num_to_keep: int = Field(2, ge=1, description="best checkpoints kept by val_psnr (the latest is kept too)")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts from the latest checkpoint; -1: no limit")


class TrackingConfig(StrictModel):
    uri: str | None = Field(None, description="MLflow URI; null: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db")
    parent_run_id: str | None = Field(None, description="make the run a child of this run (Tune trials)")


class FaultInjectionConfig(StrictModel):
    fail_at_epoch: int | None = Field(
        None, ge=1, description="TEST ONLY: rank 0 exits the process at the start of this epoch, first attempt only"
    )


class TrainConfig(StrictModel):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    run: RunConfig = RunConfig()
    tracking: TrackingConfig = TrackingConfig()
    testing: FaultInjectionConfig = FaultInjectionConfig()

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.optim.batch_size % self.scaling.num_workers:
            raise ValueError(
                f"optim.batch_size {self.optim.batch_size} is not divisible by scaling.num_workers "
                f"{self.scaling.num_workers}"
            )
        return self

    @property
    def batch_per_worker(self) -> int:
        return self.optim.batch_size // self.scaling.num_workers

    def default_run_name(self) -> str:
        """`<model>-x<scale>-<dataset>`: what the run is, as the MLflow conventions ask."""
        return f"{self.model.name}-x{self.data.scale}-{self.data.name}"

    @property
    def experiment_name(self) -> str:
        return self.run.experiment or f"srtn-{self.data.name}"
