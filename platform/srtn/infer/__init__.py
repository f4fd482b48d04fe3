"""Stage 5, whole-slide SR: tile plan and seam blending (`blending`), per-tile reading and the network (`tiles`),
one slide start to end (`slide_job`), all without Ray; the shared pool of model actors and the slide tasks
(`pool`), one slide (`predict`) or a cohort with status records, manifest and resume (`cohort`, `records`,
`cohort_io`), what made each output (`provenance`), MLflow records of a cohort (`tracking`)."""

from srtn.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "CohortReport": "cohort",
        "PredictSummary": "predict",
        "TilePlan": "blending",
        "predict_cohort": "cohort",
        "predict_slide": "predict",
        "read_manifest": "records",
        "read_provenance": "provenance",
        "run_predict": "predict",
    },
)
