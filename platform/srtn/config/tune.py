"""Config of `srtn tune`: a Ray Tune sweep (ASHA by default) over training runs, one MLflow child run per trial.

The `train` block is a whole `TrainConfig` (so `--set train.data.shards=...` works like `--set data.shards=...`
for `srtn train`), optionally seeded from a training YAML named by `base` (the inline block is merged over
it, key by key). `search_space` is data: dotted keys of that training config mapped to a distribution, e.g.

    search_space:
      optim.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      model.kwargs.attention: {type: choice, values: [ema, emha]}

Every key is checked when the config loads, before any Ray work: each value a key can take (both ends of
a range, every listed value) is applied to the training config, which is validated, and for `model.*`
keys the model is built. A key that does not exist, or a value the training config or the model refuses,
is a `ConfigError` naming `search_space.<key>`. Keys are checked one at a time (the others at their base
value), so combinations that only fail together (e.g. `n_feats` not divisible by `heads`) are not caught.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from srtn.config.base import StrictModel
from srtn.config.train import TrainConfig
from srtn.errors import ConfigError

__all__ = [
    "ParamSpec",
    "SchedulerConfig",
    "SweepRunConfig",
    "TrialConfig",
    "TuneConfig",
    "set_dotted",
]

# Keys the sweep sets on every trial itself: sweeping them would break naming, storage or tracking.
RESERVED_KEYS = ("run.name", "run.storage_path", "run.experiment", "run.registered_model_name", "tracking")


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set `a.b.c` in a nested dict in place (blocks are created as needed); returns `data`."""
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {'.'.join(parts[: i + 1])} is not a block", key=dotted)
        node = child
    node[parts[-1]] = value
    return data


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class ParamSpec(StrictModel):
    """One searched key: a range (`loguniform`, `uniform`, `randint`: `low`, `high`) or a list of `values`
    (`choice`: sampled; `grid`: every value, crossed with the other grid keys)."""

    type: Literal["loguniform", "uniform", "randint", "choice", "grid"]
    low: float | None = Field(None, description="range start (randint: first integer)")
    high: float | None = Field(None, description="range end (randint: last integer, included)")
    values: list[Any] | None = Field(None, description="choice/grid: the values")

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"type {self.type} needs a non-empty `values` list")
            if self.low is not None or self.high is not None:
                raise ValueError(f"type {self.type} takes `values`, not low/high")
            return self
        if self.values is not None:
            raise ValueError(f"type {self.type} takes low/high, not `values`")
        if self.low is None or self.high is None:
            raise ValueError(f"type {self.type} needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"low {self.low:g} must be below high {self.high:g}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        if self.type == "randint" and (self.low != math.floor(self.low) or self.high != math.floor(self.high)):
            raise ValueError("randint needs integer low and high")
        return self

    def samples(self) -> list[Any]:
        """The values checked at load time: every listed value, or both ends of the range and a value inside."""
        if self.values is not None:
            return list(self.values)
        lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]
        if self.type == "randint":
            return [int(lo), int(hi)]
        # and a value inside the range that is not a whole number: an int key fails here, not in a trial
        mid = math.sqrt(lo * hi) if self.type == "loguniform" else (lo + hi) / 2
        return [lo, hi, math.nextafter(mid, hi) if mid == math.floor(mid) else mid]

    def to_tune(self, *, grid: bool = False) -> Any:
        """The Ray Tune domain; `grid` turns `choice` into a grid search too (searcher: grid)."""
        from ray import tune

        if self.type == "grid" or (grid and self.type == "choice"):
            return tune.grid_search(list(self.values or []))
        if self.type == "choice":
            return tune.choice(list(self.values or []))
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        return tune.randint(int(self.low), int(self.high) + 1)  # type: ignore[arg-type]  # Tune's high is exclusive


class SchedulerConfig(StrictModel):
    type: Literal["asha", "fifo"] = Field("asha", description="asha: stop bad trials early; fifo: run all to the end")
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    max_t: int | None = Field(
        None, ge=1, description="ASHA's horizon: rungs at grace_period * rf^k up to it; null: train.optim.epochs"
    )
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps the best 1/reduction_factor at each rung")
    brackets: int = Field(1, ge=1, description="ASHA brackets (1: plain successive halving)")


class TrialConfig(StrictModel):
    driver_cpus: float = Field(
        0.25, ge=0, description="CPUs of each trial's driver (it only runs the Train controller; workers use scaling.*)"
    )
    driver_resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources of trial drivers, e.g. to keep them off spot nodes"
    )
    max_failures: int = Field(
        1, ge=-1, description="Tune restarts of a trial whose driver died (its Train run resumes); -1: no limit"
    )


class SweepRunConfig(StrictModel):
    name: str | None = Field(None, description="sweep name: folder, MLflow parent run; the same name resumes")
    storage_path: str | None = Field(
        None, description="the sweep folder's parent (local or s3://); null: train.run.storage_path"
    )
    experiment: str | None = Field(None, description="MLflow experiment; null: the train config's (srtn-<dataset>)")
    registered_model_name: str | None = Field(None, description="register the best trial's model; null: do not")


class TuneConfig(StrictModel):
    base: str | None = Field(None, description="training YAML the `train` block is merged over; null: none")
    train: TrainConfig
    search_space: dict[str, ParamSpec] = Field(description="dotted train-config key -> distribution")
    metric: str = Field("val_psnr", description="reported metric the scheduler and the best trial are chosen by")
    mode: Literal["max", "min"] = "max"
    scheduler: SchedulerConfig = SchedulerConfig()
    searcher: Literal["random", "grid", "optuna"] = Field(
        "random", description="random: grid keys crossed, others sampled; grid: choice keys crossed too; optuna: TPE"
    )
    num_samples: int = Field(1, ge=1, description="samples per grid point (random/grid) or trials (optuna)")
    max_concurrent_trials: int | None = Field(None, ge=1, description="null: as many as fit the cluster now")
    seed: int | None = Field(0, description="seed of the sampler (random, optuna); null: not seeded")
    trial: TrialConfig = TrialConfig()
    cluster_wait_s: float = Field(
        0.0, ge=0, description="ask the autoscaler for one trial's resources and wait this long for them to appear"
    )
    run: SweepRunConfig = SweepRunConfig()
    resume: bool = Field(False, description="continue the sweep run.name in its folder (srtn tune --resume)")

    @model_validator(mode="before")
    @classmethod
    def _merge_base(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("base"):
            return data
        path = Path(str(data["base"]))
        if not path.is_file():
            raise ConfigError(f"base: training config {path} does not exist", key="base", path=str(path))
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"base: {path} is not valid YAML: {exc}", key="base", path=str(path)) from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"base: {path} must hold a mapping at top level", key="base", path=str(path))
        inline = data.get("train") or {}
        if not isinstance(inline, dict):
            return data  # pydantic reports the bad type
        return {**data, "train": _deep_merge(loaded, inline)}

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if not self.search_space:
            raise ValueError("search_space is empty: nothing to sweep (use srtn train for a single run)")
        s = self.scheduler
        if s.type == "asha" and s.grace_period > self.max_t:
            raise ValueError(f"scheduler.grace_period {s.grace_period} exceeds max_t {self.max_t}")
        if self.searcher == "optuna":
            grid = [k for k, p in self.search_space.items() if p.type == "grid"]
            if grid:
                raise ConfigError(
                    f"searcher optuna cannot take grid keys {grid}; use type choice", key=f"search_space.{grid[0]}"
                )
        if self.searcher == "grid":
            ranged = [k for k, p in self.search_space.items() if p.values is None]
            if ranged:
                raise ConfigError(
                    f"searcher grid needs finite values; {ranged} are ranges (use choice/grid or searcher random)",
                    key=f"search_space.{ranged[0]}",
                )
        for key, spec in self.search_space.items():
            self._check_key(key, spec)
        return self

    @property
    def max_t(self) -> int:
        return self.scheduler.max_t or self.train.optim.epochs

    def _check_key(self, key: str, spec: ParamSpec) -> None:
        where = f"search_space.{key}"
        reserved = next((r for r in RESERVED_KEYS if key == r or key.startswith(f"{r}.")), None)
        if reserved:
            raise ConfigError(f"{where}: the sweep sets {reserved} for each trial; it cannot be searched", key=where)
        for value in spec.samples():
            try:
                cfg = self.trial_config({key: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}", key=where) from exc
            if key.startswith("model."):
                from srtn.models import build_model

                try:
                    build_model(cfg.model.name, cfg.data.scale, **cfg.model.kwargs)
                except (ValueError, TypeError, RuntimeError) as exc:
                    msg = f"{where}: {value!r} does not build model {cfg.model.name}: {exc}"
                    raise ConfigError(msg, key=where) from exc

    def trial_config(self, params: Mapping[str, Any]) -> TrainConfig:
        """The training config of one trial: `train` with `params` (dotted key -> value) applied, validated.

        Raises `ConfigError` naming the first key the training config refuses."""
        data = self.train.model_dump(mode="json")
        for key, value in params.items():
            set_dotted(data, key, value)
        try:
            return TrainConfig.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            given = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"train.{loc}: {what} (with {given})", key=f"train.{loc}") from exc

    def search_space_values(self) -> dict[str, list[Any]]:
        """Each key's checked values (range ends or listed values): what resource checks take the max over."""
        return {k: p.samples() for k, p in self.search_space.items()}

    def sweep_name(self) -> str:
        return self.run.name or f"{self.train.default_run_name()}-sweep"

    @property
    def storage_path(self) -> str:
        return self.run.storage_path or self.train.run.storage_path

    @property
    def experiment_name(self) -> str:
        return self.run.experiment or self.train.experiment_name
