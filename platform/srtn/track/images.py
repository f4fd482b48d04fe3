"""Pictures and per-epoch records of a run: sample grids (LR | bicubic | SR | HR) and `EpochLogger`, which rank 0
of a Ray Train worker group (or a Tune trial) uses to log each epoch once, also across restarts."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from srtn.track.runs import sanitize_key
from srtn.track.uris import client

__all__ = ["EpochLogger", "image_grid", "log_image_grid"]


def _to_hwc_uint8(images: Any) -> np.ndarray:
    """(N, C, H, W) float in [0, 1] (torch or numpy) or (N, H, W, C) uint8 to (N, H, W, 3) uint8."""
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        arr = arr.transpose(0, 2, 3, 1)  # float input is NCHW
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def image_grid(
    columns: Mapping[str, Any], *, max_rows: int = 4, pad: int = 2, label_height: int = 14, min_cell: int = 96
) -> np.ndarray:
    """One RGB uint8 image: a row per sample, a column per entry of `columns` (e.g. LR | bicubic | SR | HR).

    Each column is a batch (NCHW float in [0, 1] or NHWC uint8); smaller images are enlarged with
    nearest-neighbour to the largest size (at least `min_cell` pixels), so LR pixels stay visible. Column
    names head the grid.
    """
    import cv2

    if not columns:
        raise ValueError("image_grid needs at least one column")
    batches = {name: _to_hwc_uint8(imgs) for name, imgs in columns.items()}
    rows = min(max_rows, *(b.shape[0] for b in batches.values()))
    h = max(b.shape[1] for b in batches.values())
    w = max(b.shape[2] for b in batches.values())
    zoom = max(1, -(-min_cell // min(h, w)))  # small tiles are enlarged so pixels and labels stay readable
    h, w = h * zoom, w * zoom
    n_cols = len(batches)
    grid = np.full((label_height + rows * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for c, (name, batch) in enumerate(batches.items()):
        x0 = pad + c * (w + pad)
        cv2.putText(grid, name[:24], (x0, label_height - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for r in range(rows):
            img = batch[r]
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST)
            y0 = label_height + pad + r * (h + pad)
            grid[y0 : y0 + h, x0 : x0 + w] = img
    return grid


def log_image_grid(
    uri: str, run_id: str, columns: Mapping[str, Any], *, artifact_file: str, max_rows: int = 4
) -> np.ndarray:
    """Log `image_grid(columns)` as a PNG artifact of the run; returns the grid."""
    grid = image_grid(columns, max_rows=max_rows)
    client(uri).log_image(run_id, grid, artifact_file=artifact_file)
    return grid


# --------------------------------------------------------------------------- per-epoch logging


class EpochLogger:
    """Per-epoch metrics and sample images of one MLflow run, by run id (no global active run).

    Used by rank 0 of a Ray Train worker group; Tune makes one per trial on a child run. Metrics are
    logged with `step=epoch`. After a restart, `backfill(history)` logs the epochs that a checkpoint
    holds but MLflow missed (a crash between the checkpoint and the log), and never logs a step twice.
    """

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.uri = tracking_uri
        self.run_id = run_id
        self._client = client(tracking_uri)

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self._client.get_metric_history(self.run_id, key)}

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(sanitize_key(k), float(v), now, int(epoch))
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self._client.log_batch(self.run_id, metrics=items)

    def backfill(self, history: Sequence[Mapping[str, Any]], *, key: str = "val_loss") -> list[int]:
        """Log the entries of `history` (dicts with `epoch`) whose step MLflow lacks; returns their epochs."""
        have = self.logged_steps(key)
        missing = [h for h in history if int(h["epoch"]) not in have]
        for entry in missing:
            self.log_epoch(int(entry["epoch"]), {k: v for k, v in entry.items() if k != "epoch"})
        return [int(h["epoch"]) for h in missing]

    def log_images(self, epoch: int, columns: Mapping[str, Any], *, max_rows: int = 4) -> str:
        artifact = f"samples/epoch_{epoch:03d}.png"
        log_image_grid(self.uri, self.run_id, columns, artifact_file=artifact, max_rows=max_rows)
        return artifact
