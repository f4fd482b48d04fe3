"""BreakHis real-LR pairs: index the tree by patient (`index`), find each 400X image inside its patient's 100X
images and crop aligned pairs (`pairs`, pure functions), one patient's rows (`patient`, no Ray), the Ray Data
job (`job`)."""

from srtn.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "index_tree": "index",
        "BreakHisIndex": "index",
        "best_match": "pairs",
        "crop_pair": "pairs",
        "process_patient": "patient",
        "run_breakhis": "job",
    },
)
