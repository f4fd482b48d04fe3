"""Training's per-tile randomness: the aligned random crop, the paired flips/transposes, and the decoding of
a batch of PNG rows into augmented float patches (`decode_train_batch`, run in Ray Data tasks).

Ray-free (numpy and `srtn.data.reader`), so `benchmarks/training.py` prepares its plain loops' batches with
the very same functions. Validation and evaluation use `srtn.data.reader.decode_eval_batch` instead:
whole tiles or centre crops, no randomness.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from srtn.data.reader import decoded_pairs, stack_nchw, with_meta

__all__ = ["aligned_crop", "augment_pair", "decode_train_batch"]


def aligned_crop(
    hr: np.ndarray, lr: np.ndarray, scale: int, patch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random LR patch `patch` x `patch` at (i, j) and its HR partner `patch*scale` at (i*scale, j*scale).

    A tile smaller than `patch` is used whole. Arrays are HxWxC.
    """
    h, w = lr.shape[:2]
    ph, pw = min(patch, h), min(patch, w)
    i = int(rng.integers(0, h - ph + 1))
    j = int(rng.integers(0, w - pw + 1))
    return (
        hr[i * scale : (i + ph) * scale, j * scale : (j + pw) * scale],
        lr[i : i + ph, j : j + pw],
    )


def augment_pair(
    hr: np.ndarray, lr: np.ndarray, rng: np.random.Generator, *, flips: bool = True, rot90: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The same random flip / transpose on both images (with both on: the 8 symmetries of a square)."""
    if flips and rng.random() < 0.5:
        hr, lr = hr[:, ::-1], lr[:, ::-1]
    if flips and rng.random() < 0.5:
        hr, lr = hr[::-1], lr[::-1]
    if rot90 and rng.random() < 0.5:
        hr, lr = hr.transpose(1, 0, 2), lr.transpose(1, 0, 2)
    return hr, lr


def decode_train_batch(
    batch: Mapping[str, Any],
    *,
    scale: int,
    patch_size: int | None,
    flips: bool,
    rot90: bool,
    keep_meta: bool = False,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """A numpy batch of rows (`hr`, `lr_x<scale>` PNG bytes) -> `{"lr", "hr"}` float32 NCHW patches."""
    rng = np.random.default_rng(seed)
    lrs, hrs = [], []
    for hr, lr in decoded_pairs(batch, scale):
        if patch_size:
            hr, lr = aligned_crop(hr, lr, scale, patch_size, rng)
        hr, lr = augment_pair(hr, lr, rng, flips=flips, rot90=rot90)
        hrs.append(hr)
        lrs.append(lr)
    return with_meta({"lr": stack_nchw(lrs, "LR"), "hr": stack_nchw(hrs, "HR")}, batch, keep_meta)
