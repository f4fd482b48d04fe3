"""Tiny synthetic tile shards for tests, benchmarks and the demo: no slides, no Ray, seconds to write.

Tiles are H&E-like: a smooth pink (eosin) stroma texture with dark purple (haematoxylin) nuclei blobs,
so models have edges to learn. LR partners come from `srtn.data.quality.downsample`, rows from
`srtn.data.schema.empty_row`, files from `srtn.data.shards.write_source_files` and a manifest from
`srtn.data.manifest`, so the output is laid out exactly as the tiling jobs lay theirs out
(`OUT/split=<split>/<source>.parquet` + `OUT/_manifest.json` listing every file, nothing else under
`split=*/`) and readers and `manifest_hash` work on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from srtn.data.manifest import build_manifest, commit_manifest, fingerprint, remove_manifest
from srtn.data.quality import downsample
from srtn.data.schema import empty_row, encode_png, lr_column, tile_id
from srtn.data.shard_writer import write_source_files
from srtn.vocab import SPLITS

__all__ = ["synthetic_tile", "write_synthetic_shards"]

_EOSIN = np.array([232.0, 150.0, 190.0])
_HAEMATOXYLIN = np.array([85.0, 45.0, 135.0])


def synthetic_tile(rng: np.random.Generator, size: int) -> np.ndarray:
    """One H&E-like RGB uint8 tile of `size` x `size` pixels."""
    # Smooth stroma: low-frequency noise at two scales tints the eosin colour.
    field = np.zeros((size, size), np.float32)
    for sigma, weight in ((size / 6, 0.7), (size / 24, 0.3)):
        noise = rng.standard_normal((size, size)).astype(np.float32)
        blurred = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(sigma, 0.8))
        field += weight * blurred / (blurred.std() + 1e-6)
    img = _EOSIN[None, None, :] * (1.0 + 0.12 * field[..., None])
    # Nuclei: dark blobs with soft edges.
    mask = np.zeros((size, size), np.float32)
    for _ in range(max(2, size * size // 300)):
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        axes = (int(rng.integers(2, max(3, size // 8))), int(rng.integers(2, max(3, size // 8))))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, thickness=-1)
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=0.8)[..., None]
    img = img * (1.0 - mask) + _HAEMATOXYLIN[None, None, :] * mask
    img += rng.normal(0.0, 3.0, img.shape)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)


def write_synthetic_shards(
    output: str,
    *,
    per_split: Mapping[str, int] | None = None,
    hr_size: int = 32,
    scales: Sequence[int] = (2, 4),
    seed: int = 0,
    groups: int | Mapping[str, int] = 2,
) -> str:
    """Write `per_split[split]` tiles per split under `output` (local path or s3://); returns `output`.

    Each split's tiles are spread round-robin over `groups` sources (one source = one group = one
    patient), named `synth-<split>-<k>`, so no source appears in two splits. `groups` is a count for
    every split or a per-split mapping. The same arguments write the same bytes.
    """
    per_split = dict(per_split) if per_split is not None else {"train": 16, "val": 4, "test": 4}
    unknown = set(per_split) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected some of {SPLITS}")
    for s in scales:
        lr_column(s)  # raises for unsupported scales
        if hr_size % s:
            raise ValueError(f"hr_size {hr_size} is not divisible by scale {s}")
    rng = np.random.default_rng(seed)
    config = {"synthetic": True, "per_split": per_split, "hr_size": hr_size, "scales": list(scales), "seed": seed}
    config["groups"] = dict(groups) if isinstance(groups, Mapping) else groups
    fp = fingerprint(config)
    remove_manifest(output)
    records: list[dict[str, Any]] = []
    for split in SPLITS:
        n = int(per_split.get(split, 0))
        if n <= 0:
            continue
        n_groups = groups.get(split, 1) if isinstance(groups, Mapping) else groups
        n_groups = max(1, min(int(n_groups), n))
        rows_by_source: dict[str, list[dict[str, Any]]] = {f"synth-{split}-{k:02d}": [] for k in range(n_groups)}
        sources = list(rows_by_source)
        for i in range(n):
            source = sources[i % n_groups]
            x, y = (i // n_groups) * hr_size, 0
            hr = synthetic_tile(rng, hr_size)
            row = empty_row() | {
                "tile_id": tile_id(source, 0, x, y),
                "source_id": source,
                "group_id": source,
                "split": split,
                "x": x,
                "y": y,
                "level": 0,
                "mpp": 0.25,
                "hr": encode_png(hr),
                "hr_height": hr_size,
                "hr_width": hr_size,
            }
            for s in scales:
                row[lr_column(s)] = encode_png(downsample(hr, s))
            rows_by_source[source].append(row)
        for source, rows in rows_by_source.items():
            files = write_source_files(rows, output, source)
            record = {"source_id": source, "status": "done", "seen": len(rows), "kept": len(rows), "rejected": {}}
            record |= {"split_counts": {f["split"]: f["rows"] for f in files}, "files": files}
            records.append(record | {"path": f"synthetic:{source}", "fingerprint": fp})
    commit_manifest(output, build_manifest(config, records, job="synthetic", fingerprint=fp))
    return output
