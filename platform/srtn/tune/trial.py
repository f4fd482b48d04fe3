"""What one trial of a sweep runs: a Tune function trial that calls `srtn.train.fit.fit` with its training config.

The trial's Train run is `<sweep>-<trial id>` under the sweep's `trials/` folder; `TuneReportCallback` hands
every epoch's metrics to Tune. A trial the scheduler stops aborts its Train run before its actor goes (see
`make_trainable`), so its workers' CPUs/GPUs come back; `ControllerLink` is how the trial learns the Train
controller to abort. A trial restarted after its Train run already trained every epoch replays the stored
epochs to Tune instead of training again.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

from ray.train import UserCallback

from srtn import storage
from srtn.config.tune import TuneConfig

__all__ = ["ControllerLink", "TrialPlan", "abort_train_run", "make_trainable"]


@dataclass(frozen=True)
class TrialPlan:
    """What every trial needs to know (pickled into the trial function)."""

    cfg: TuneConfig
    name: str
    trials_uri: str
    parent_run_id: str


def _finished_history(run_dir: str, epochs: int) -> bool:
    """Whether the trial's Train run already trained all its epochs (a restart after the driver died
    between the last epoch and Tune recording the trial as done)."""
    from ray.train import Result

    if not storage.exists(run_dir):
        return False
    fs, path = storage.resolve(run_dir)
    try:
        result = Result.from_path(path, storage_filesystem=fs)
    except (RuntimeError, OSError, ValueError):
        return False
    return result.checkpoint is not None and (result.metrics or {}).get("epoch", 0) >= epochs


class ControllerLink(UserCallback):
    """Runs in the Train controller: hands the controller's actor handle to the trial on the first report,
    so that a trial the scheduler stops can abort its Train run (see `make_trainable`)."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._sent = False

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not self._sent:
            import ray

            self._sent = True
            self._queue.put(ray.get_runtime_context().current_actor)


def abort_train_run(queue: Any, done: threading.Event) -> None:
    """Abort the Train run whose controller handle is in `queue` and wait for the trial function to return."""
    import ray
    from ray.util.queue import Empty

    try:
        controller = queue.get(block=False)
    except Empty:
        return  # no epoch reported yet: nothing to abort gracefully
    with contextlib.suppress(ray.exceptions.RayError, TimeoutError):  # it exits while answering: the abort working
        ray.get(controller.abort.remote(), timeout=60)
    done.wait(timeout=60)


def make_trainable(plan: TrialPlan) -> type:
    """The Tune trainable of the sweep: a function trial that runs `fit`, plus a `cleanup` for trials the
    scheduler stops. Tune stops a trial by ending its actor; the Train controller it owns would die with
    it, ungracefully, and the worker group's placement group would stay reserved until the sweep's job
    ends (Ray Train's detached cleaner needs the State API, i.e. a dashboard). So `cleanup` first asks the
    controller to abort (the same call as Ray Train's Ctrl-C handler), which stops the workers and frees
    their resources for the next trial."""
    from ray.tune.trainable import wrap_function

    running: dict[str, tuple[Any, threading.Event, list[bool]]] = {}  # in a trial's process: trial id -> link

    def srtn_trial(config: dict[str, Any]) -> None:
        import ray.tune
        from ray.tune.integration.ray_train import TuneReportCallback
        from ray.util.queue import Queue

        from srtn.train.fit import fit

        trial_id = ray.tune.get_context().get_trial_id()
        cfg = plan.cfg.trial_config(config["params"])
        name = f"{plan.name}-{trial_id}"
        replay = _finished_history(storage.join(plan.trials_uri, name), cfg.optim.epochs)
        callbacks: list[Any] = []
        done, stopping = threading.Event(), [False]
        if not replay:
            queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
            running[trial_id] = (queue, done, stopping)
            callbacks = [ControllerLink(queue), TuneReportCallback()]
        try:
            outcome = fit(
                cfg, run_name=name, storage_path=plan.trials_uri, parent_run_id=plan.parent_run_id, callbacks=callbacks
            )
        except Exception:
            if stopping[0]:
                return  # stopped by the scheduler: the Train run was aborted on purpose
            raise
        finally:
            running.pop(trial_id, None)
            done.set()
        if replay:  # fit trained nothing, so nothing reached Tune: hand it the stored epochs
            for entry in outcome.history:
                ray.tune.report(dict(entry) | {"mlflow_run_id": outcome.mlflow_run_id})

    class SrtnTrial(wrap_function(srtn_trial)):  # type: ignore[misc]
        def cleanup(self) -> None:
            link = running.get(self.trial_id)
            if link is not None:  # still training: the scheduler stopped it (or the sweep is ending)
                link[2][0] = True
                abort_train_run(link[0], link[1])
            super().cleanup()

    return SrtnTrial
