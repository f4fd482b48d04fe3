"""Stage 3, Ray Tune sweeps: the sweep driver (`sweep`), what each trial runs (`trial`), ASHA that replays a
resumed sweep (`scheduler`), MLflow parent/child runs and the best trial (`report`)."""

from srtn.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "tune_sweep": "sweep",
        "run_tune": "sweep",
        "SweepOutcome": "sweep",
        "check_cluster": "sweep",
        "trial_requirements": "sweep",
        "ReplayingASHA": "scheduler",
        "TrialSummary": "report",
    },
)
