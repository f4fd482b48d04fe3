"""Stage 4, comparison on the test split: score models on tiles (`score`, no Ray in the maths), tables and
figures (`report`), the Ray Data job and its MLflow comparison run (`job`)."""

from srtn.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "METRICS": "score",
        "ResolvedModel": "score",
        "aggregate": "score",
        "score_batch": "score",
        "LOSS_KEYS": "report",
        "log_comparison": "report",
        "markdown_table": "report",
        "EvaluationReport": "job",
        "comparison_experiment": "job",
        "evaluate": "job",
        "resolve_models": "job",
        "run_evaluation": "job",
    },
)
