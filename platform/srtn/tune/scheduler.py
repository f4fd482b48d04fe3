"""How a sweep picks and cuts trials: the search space and searcher Tune samples trials from, and ASHA
(`ReplayingASHA`) that stops bad trials at its rungs and, on `Tuner.restore`, gets those rungs back from the
sweep's recorded results, because Tune does not save scheduler state.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from srtn import storage
from srtn.config.tune import TuneConfig
from srtn.errors import ConfigError

__all__ = ["ReplayingASHA", "build_scheduler", "build_search_alg", "param_space"]

logger = logging.getLogger(__name__)


def param_space(cfg: TuneConfig) -> dict[str, Any]:
    """Tune's `param_space`: the search space under `params` (dotted train keys -> Tune distributions)."""
    grid = cfg.searcher == "grid"
    return {"params": {key: spec.to_tune(grid=grid) for key, spec in cfg.search_space.items()}}


def build_search_alg(cfg: TuneConfig, concurrent: int) -> Any:
    """The searcher, limited to `concurrent` trials at once (Tune ignores `TuneConfig.max_concurrent_trials`
    for a BasicVariantGenerator, which is not a `Searcher`: it takes the limit itself)."""
    if cfg.searcher == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as exc:  # pragma: no cover - optuna is an optional extra
            raise ConfigError("searcher optuna needs `pip install 'srtn[optuna]'`", key="searcher") from exc
        from ray.tune.search import ConcurrencyLimiter

        return ConcurrencyLimiter(OptunaSearch(seed=cfg.seed), max_concurrent=concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrent)


class ReplayingASHA(ASHAScheduler):
    """ASHA that gets its rungs back on `Tuner.restore`.

    Tune does not save scheduler state with the experiment (ray-project/ray#30838): a restored sweep gets the
    scheduler pickled when the sweep started, with empty rungs, and would then judge the remaining trials
    against nothing that finished before the interruption. Here every trial that Tune adds back on restore
    has the results Tune recorded for it (the sweep's per-trial results, `ExperimentAnalysis`) replayed
    through `on_trial_result`, so rung records are as they were; a restarted trial also keeps its records
    for the epochs it already passed.
    """

    def __init__(self, *, sweep_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sweep_path = sweep_path
        self._histories: dict[str, Any] | None = None

    def _history(self, trial_id: str) -> Any:
        if self._histories is None:
            self._histories = {}
            fs, path = storage.resolve(self._sweep_path)
            if any(os.path.basename(f).startswith("experiment_state") for f in _list(self._sweep_path)):
                from ray.tune import ExperimentAnalysis

                try:
                    self._histories = dict(ExperimentAnalysis(path, storage_filesystem=fs).trial_dataframes)
                except (OSError, ValueError, RuntimeError) as exc:
                    logger.warning("cannot read the sweep's earlier results (%s): ASHA starts with empty rungs", exc)
        return self._histories.get(trial_id)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        frame = self._history(trial.trial_id)
        if frame is None or len(frame) == 0:
            return
        for row in frame.to_dict("records"):
            self.on_trial_result(tune_controller, trial, row)  # records the rungs; the decision is history


def _list(uri: str) -> list[str]:
    fs, path = storage.resolve(uri)
    from pyarrow import fs as pafs

    return [i.path for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))]


def build_scheduler(cfg: TuneConfig, sweep_uri: str) -> ReplayingASHA | None:
    """The sweep's trial scheduler: `ReplayingASHA` on `epoch` up to `max_t`, or None (FIFO)."""
    if cfg.scheduler.type == "fifo":
        return None
    s = cfg.scheduler
    # stop_last_trials=False: a trial that passes the last rung runs to its own last epoch, so `fit`
    # finishes normally and logs the trial's model.
    return ReplayingASHA(
        sweep_path=sweep_uri,
        time_attr="epoch",
        max_t=cfg.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        brackets=s.brackets,
        stop_last_trials=False,
    )
