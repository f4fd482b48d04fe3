"""Stage 4, comparison on the test split of one or several datasets: score models on tiles (`score`, no Ray in
the maths), the Ray Data pass (`pipeline`), the models x datasets matrix (`matrix`), side-by-side pictures
(`compare_tiles`), tables and figures (`report`), the comparison run (`tracking`) and the job (`job`)."""

from srtn.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "METRICS": "score",
        "HrReference": "score",
        "ResolvedModel": "score",
        "aggregate": "score",
        "score_batch": "score",
        "super_resolve": "score",
        "DatasetPlan": "pipeline",
        "score_datasets": "pipeline",
        "MATRIX_METRICS": "matrix",
        "comparison_matrix": "matrix",
        "matrix_markdown": "matrix",
        "choose_tiles": "compare_tiles",
        "comparison_pictures": "compare_tiles",
        "picture_size": "compare_tiles",
        "LOSS_KEYS": "report",
        "markdown_table": "report",
        "Comparison": "tracking",
        "log_comparison": "tracking",
        "EvaluationReport": "job",
        "comparison_experiment": "job",
        "evaluate": "job",
        "model_scale": "job",
        "resolve_models": "job",
        "run_evaluation": "job",
    },
)
