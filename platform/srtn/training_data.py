"""Ray Data input pipeline of training: Parquet tile shards -> float HR/LR patch tensors.

- `train` reads only `OUT/split=train/*.parquet`, `val` only `OUT/split=val/*.parquet`, and each also
  filters rows on the `split` column, so a stray row can never move a test tile into validation (the
  original scripts validated on the test set). One read task per shard file (see `read_split`).
- PNG decoding, the aligned random crop and the flips/rot90 run in Ray Data `map_batches` tasks
  (`num_cpus=scaling.data_cpus`, at most `scaling.data_concurrency` at once), not in the training step:
  workers receive ready float32 NCHW arrays in [0, 1].
- Shuffling of train, per epoch: the file order is reshuffled on every execution
  (`randomize_block_order(RandomSeedConfig(seed, reseed_after_execution=True))`, one block per file)
  and each worker mixes rows in a local
  buffer (`iter_torch_batches(local_shuffle_buffer_size=data.shuffle_buffer)`). Files are per source
  (slide or patient), so the two together give batches that mix sources, streaming and with bounded
  memory; a full `random_shuffle` would be an all-to-all exchange of every tile every epoch, which
  costs more than it gives for patches that are randomly cropped anyway.
- Val uses whole tiles (or centre crops, `data.val_crop`), in file order, no augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from srtn import storage
from srtn.errors import ConfigError
from srtn.schema import decode_png, lr_column
from srtn.shards import shard_files

if TYPE_CHECKING:
    import ray.data

    from srtn.config.train import TrainConfig

__all__ = [
    "META_COLUMNS",
    "aligned_crop",
    "augment_pair",
    "build_datasets",
    "centre_crop",
    "check_shards",
    "decode_eval_batch",
    "decode_train_batch",
    "read_shard_rows",
    "read_split",
]

META_COLUMNS: tuple[str, ...] = ("tile_id", "source_id", "split")


# --------------------------------------------------------------------------- pure per-tile steps


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


def centre_crop(hr: np.ndarray, lr: np.ndarray, scale: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """The centred LR `patch` x `patch` crop and its aligned HR partner (whole tile if smaller)."""
    h, w = lr.shape[:2]
    ph, pw = min(patch, h), min(patch, w)
    i, j = (h - ph) // 2, (w - pw) // 2
    return hr[i * scale : (i + ph) * scale, j * scale : (j + pw) * scale], lr[i : i + ph, j : j + pw]


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


def _decode_pair(hr_png: bytes, lr_png: bytes | None, scale: int, tile: Any) -> tuple[np.ndarray, np.ndarray]:
    if lr_png is None:
        raise ValueError(f"tile {tile} has no {lr_column(scale)} image: the shards were not made at x{scale}")
    hr, lr = decode_png(hr_png), decode_png(lr_png)
    if hr.shape[0] != lr.shape[0] * scale or hr.shape[1] != lr.shape[1] * scale:
        raise ValueError(f"tile {tile}: HR {hr.shape[:2]} is not x{scale} of LR {lr.shape[:2]}")
    return hr, lr


def _decoded_pairs(batch: Mapping[str, Any], scale: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(HR, LR) uint8 arrays of every row of a batch of PNG bytes, checked to be x`scale` apart."""
    ids = batch.get("tile_id", [None] * len(batch["hr"]))
    for hr_png, lr_png, tile in zip(batch["hr"], batch[lr_column(scale)], ids):
        yield _decode_pair(hr_png, lr_png, scale, tile)


def _stack(images: list[np.ndarray], what: str) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(
            f"{what} images of different sizes {sorted(shapes)} in one batch: set data.patch_size / data.val_crop"
        )
    # NHWC uint8 -> NCHW float32 in [0, 1]
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def _with_meta(out: dict[str, np.ndarray], batch: Mapping[str, Any], keep_meta: bool) -> dict[str, np.ndarray]:
    if keep_meta:
        for name in META_COLUMNS:
            if name in batch:
                out[name] = np.asarray(batch[name])
    return out


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
    for hr, lr in _decoded_pairs(batch, scale):
        if patch_size:
            hr, lr = aligned_crop(hr, lr, scale, patch_size, rng)
        hr, lr = augment_pair(hr, lr, rng, flips=flips, rot90=rot90)
        hrs.append(hr)
        lrs.append(lr)
    return _with_meta({"lr": _stack(lrs, "LR"), "hr": _stack(hrs, "HR")}, batch, keep_meta)


def decode_eval_batch(
    batch: Mapping[str, Any], *, scale: int, crop: int | None = None, keep_meta: bool = False
) -> dict[str, np.ndarray]:
    """Like `decode_train_batch` for validation/evaluation: whole tiles or centre crops, no randomness."""
    lrs, hrs = [], []
    for hr, lr in _decoded_pairs(batch, scale):
        if crop:
            hr, lr = centre_crop(hr, lr, scale, crop)
        hrs.append(hr)
        lrs.append(lr)
    return _with_meta({"lr": _stack(lrs, "LR"), "hr": _stack(hrs, "HR")}, batch, keep_meta)


# --------------------------------------------------------------------------- Ray Data datasets


def _check_scale_present(files: list[str], scale: int) -> None:
    """Fail before Ray Train starts when the shards hold no LR images at this scale (from the Parquet null
    counts; from the column itself when a file was written without statistics)."""
    import pyarrow.parquet as pq

    col = lr_column(scale)
    fs, path = storage.resolve(files[0])
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        meta = parquet.metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if col not in names:
            raise ConfigError(f"shards {files[0]} have no column {col}", key="data.scale")
        idx = names.index(col)
        groups = [meta.row_group(rg) for rg in range(meta.num_row_groups)]
        stats = [g.column(idx).statistics for g in groups]
        if all(st is not None and st.has_null_count for st in stats):
            present = any(st.null_count < g.num_rows for st, g in zip(stats, groups))
        else:  # written without statistics: read the column itself
            present = parquet.read(columns=[col]).column(col).null_count < meta.num_rows
    if present:
        return
    raise ConfigError(
        f"shards {files[0]} hold no {col} images: they were tiled without scale {scale} (lr.scales)",
        key="data.scale",
    )


def check_shards(shards: str, scale: int) -> None:
    """Fail before any Ray or MLflow work when `shards` has no train or val files, or no LR at `scale`
    (`ConfigError` naming `data.shards` / `data.scale`)."""
    for split in ("train", "val"):
        files = shard_files(shards, split)
        if not files:
            raise ConfigError(
                f"no {split} shards under {shards} (expected {shards}/split={split}/*.parquet)", key="data.shards"
            )
        _check_scale_present(files, scale)


def read_shard_rows(
    batch: Mapping[str, Any], *, split: str, columns: list[str], rows_per_block: int = 64
) -> Iterator[pa.Table]:
    """Rows of the shard files named in `batch["path"]` whose `split` column equals `split`, streamed in
    blocks of at most `rows_per_block` rows (one Parquet record batch at a time, so memory stays bounded)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for uri in batch["path"]:
        fs, path = storage.resolve(str(uri))
        with fs.open_input_file(path) as f:
            for record_batch in pq.ParquetFile(f).iter_batches(batch_size=rows_per_block, columns=columns):
                table = pa.Table.from_batches([record_batch])
                table = table.filter(pc.equal(table["split"], split))
                if table.num_rows:
                    yield table


def read_split(
    shards: str,
    split: str,
    *,
    scale: int,
    limit: int | None = None,
    num_cpus: float = 0.25,
    concurrency: int | None = None,
    shuffle_seed: int | None = None,
) -> ray.data.Dataset:
    """Rows of one split (`hr`, `lr_x<scale>`, `tile_id`, `source_id`, `split`): only the files under
    `split=<split>/`, only rows whose `split` column says so. `shuffle_seed` reshuffles the file order on
    every execution (epoch), reproducibly.

    One read task per shard file (a source), each `num_cpus` CPUs, instead of `ray.data.read_parquet`:
    in Ray 2.60 `read_parquet` plans a file-listing task that takes a whole CPU (not configurable), which
    deadlocks when Train workers hold all but a fraction of the CPUs, and which added 2-10 s per epoch
    here (every epoch re-executes the pipeline) against about 0.1 s for this plan on the same files.
    """
    import ray.data
    from ray.data import RandomSeedConfig, TaskPoolStrategy

    files = shard_files(shards, split)
    if not files:
        raise ConfigError(
            f"no {split} shards under {shards} (expected {shards}/split={split}/*.parquet)", key="data.shards"
        )
    _check_scale_present(files, scale)
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    if shuffle_seed is not None:
        ds = ds.randomize_block_order(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True))
    ds = ds.map_batches(
        read_shard_rows,
        fn_kwargs={"split": split, "columns": ["hr", lr_column(scale), *META_COLUMNS]},
        batch_size=1,
        batch_format="numpy",
        num_cpus=num_cpus,
        compute=TaskPoolStrategy(size=concurrency),
    )
    if limit:
        ds = ds.limit(limit)
    return ds


def build_datasets(
    cfg: TrainConfig, *, keep_meta: bool = False, progress_bars: bool = False
) -> dict[str, ray.data.Dataset]:
    """`{"train": ..., "val": ...}` Ray Datasets of decoded float32 patches for `cfg` (never the test split).

    Ray Data's progress bars are off by default: re-executed every epoch, they would bury the per-epoch
    lines of the training log."""
    d, s = cfg.data, cfg.scaling
    from ray.data import TaskPoolStrategy

    map_kwargs: dict[str, Any] = {
        "batch_format": "numpy",
        "batch_size": 32,
        "num_cpus": s.data_cpus,
        "compute": TaskPoolStrategy(size=s.data_concurrency),
    }
    read = {"num_cpus": s.data_cpus, "concurrency": s.data_concurrency}
    train = read_split(d.shards, "train", scale=d.scale, limit=d.limit_train, shuffle_seed=d.seed, **read).map_batches(
        decode_train_batch,
        fn_kwargs={
            "scale": d.scale,
            "patch_size": d.patch_size,
            "flips": d.augment.flips,
            "rot90": d.augment.rot90,
            "keep_meta": keep_meta,
        },
        **map_kwargs,
    )
    val = read_split(d.shards, "val", scale=d.scale, limit=d.limit_val, **read).map_batches(
        decode_eval_batch, fn_kwargs={"scale": d.scale, "crop": d.val_crop, "keep_meta": keep_meta}, **map_kwargs
    )
    for ds in (train, val):
        ds.context.enable_progress_bars = progress_bars
    return {"train": train, "val": val}
