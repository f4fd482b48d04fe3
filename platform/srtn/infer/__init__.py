"""Stage 5, whole-slide SR: tile plan and seam blending (`blending`, no Ray), the Ray Data actor pool that
writes a pyramidal TIFF (`predict`)."""

from srtn.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {"predict_slide": "predict", "run_predict": "predict", "PredictSummary": "predict", "TilePlan": "blending"},
)
