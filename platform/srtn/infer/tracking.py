"""A cohort run in MLflow (`tracking.log_run: true`): params, totals, the manifest and an LR | SR picture.

One run per `srtn predict` cohort command in the experiment `tracking.experiment`: the flattened config as
params, the pinned model and its fingerprint as tags, the totals (slides done and failed, Mpx in and out,
Mpx/s, tiles) as metrics, `_manifest.json` as an artifact, and a thumbnail pair of the first finished slide
(its region as read, left; the SR output, right) as `thumbnails/<slide>_lr_sr.png`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["log_cohort_run", "lr_sr_pair"]


def _fit(rgb: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    f = size / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def lr_sr_pair(source: str, output: str, *, level: int, region: list[int], size: int = 256) -> np.ndarray:
    """The region of the local slide `source` as read (left) next to the SR TIFF `output` (right), each
    fitted into `size` x `size`, on a white strip: (size, 2 * size + 8, 3) uint8."""
    from srtn.data.slides import open_slide, read_rgb

    x, y, w, h = region
    with open_slide(source) as slide:
        ds = max(w, h) / size
        lvl = max(level, slide.get_best_level_for_downsample(max(1.0, ds)))
        f = slide.level_downsamples[lvl]
        lr = read_rgb(slide, x, y, lvl, max(1, int(w / f)), max(1, int(h / f)))
    with open_slide(output) as out:
        sr = np.asarray(out.get_thumbnail((size, size)).convert("RGB"))
    pair = np.full((size, 2 * size + 8, 3), 255, np.uint8)
    for i, img in enumerate((_fit(lr, size), _fit(sr, size))):
        pair[: img.shape[0], i * (size + 8) : i * (size + 8) + img.shape[1]] = img
    return pair


def log_cohort_run(
    *,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    config: Any,
    manifest: Mapping[str, Any],
    thumbnail: tuple[str, np.ndarray] | None,
) -> tuple[str, str]:
    """Record the cohort in MLflow; returns `(run id, experiment id)`."""
    from srtn import track

    experiment_id = track.get_or_create_experiment(experiment, tracking_uri=tracking_uri)
    model = manifest["model"]
    tags = {
        "srtn.job": "predict",
        "srtn.model_pinned": model.get("pinned"),
        "srtn.fingerprint": manifest["fingerprint"],
    }
    run_id = track.create_run(tracking_uri, experiment_id, run_name=run_name, tags=tags)
    client = track.client(tracking_uri)
    try:
        track.log_params_flat(tracking_uri, run_id, config)
        totals = manifest["totals"]
        metrics = {
            "slides_done": totals["status"].get("done", 0),
            "slides_failed": totals["status"].get("failed", 0),
            "mpx_in": totals["mpx_in"],
            "mpx_out": totals["mpx_out"],
            "tiles": totals["tiles"],
            "seconds": totals["seconds"],
        }
        if totals.get("mpx_in_per_s") is not None:
            metrics |= {"mpx_in_per_s": totals["mpx_in_per_s"], "mpx_out_per_s": totals["mpx_out_per_s"]}
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value))
        client.log_dict(run_id, dict(manifest), "_manifest.json")
        if thumbnail is not None:
            slide, image = thumbnail
            client.log_image(run_id, image, artifact_file=f"thumbnails/{slide}_lr_sr.png")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id, experiment_id
