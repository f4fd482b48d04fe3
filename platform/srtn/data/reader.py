"""Reading tile shards for training and evaluation: shard checks, one split's rows as a Ray Dataset, and
the decoding of PNG rows into float HR/LR arrays that both share.

- `read_split(shards, "train")` reads only the files `OUT/_manifest.json` lists for train, `"val"` only
  those of val, after checking them against the manifest (`srtn.data.shard_check`: missing, extra,
  changed, truncated files, columns, the LR scale); each also filters rows on the `split` column, so a
  stray row can never move a test tile into validation (the original scripts validated on the test set).
  One read task per shard file; with a `shuffle_seed` the file order is reshuffled on every execution
  (epoch), reproducibly.
- `decode_eval_batch`: whole tiles or centre crops, in file order, no randomness (validation and
  `srtn evaluate`). Training's random crops and flips, and its Ray Datasets, are `srtn.train.augment`
  and `srtn.train.datasets`; they build on `decoded_pairs`, `stack_nchw` and `with_meta` here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from srtn import storage
from srtn.data.schema import TILE_SCHEMA, decode_png, lr_column
from srtn.data.shard_check import check_shards
from srtn.data.shards import shard_files

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "META_COLUMNS",
    "centre_crop",
    "check_shards",
    "decode_eval_batch",
    "decoded_pairs",
    "read_shard_rows",
    "read_split",
    "read_split_table",
    "stack_nchw",
    "with_meta",
]

META_COLUMNS: tuple[str, ...] = ("tile_id", "source_id", "split")


# --------------------------------------------------------------------------- pure per-tile steps


def centre_crop(hr: np.ndarray, lr: np.ndarray, scale: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """The centred LR `patch` x `patch` crop and its aligned HR partner (whole tile if smaller)."""
    h, w = lr.shape[:2]
    ph, pw = min(patch, h), min(patch, w)
    i, j = (h - ph) // 2, (w - pw) // 2
    return hr[i * scale : (i + ph) * scale, j * scale : (j + pw) * scale], lr[i : i + ph, j : j + pw]


def _decode_pair(hr_png: bytes, lr_png: bytes | None, scale: int, tile: Any) -> tuple[np.ndarray, np.ndarray]:
    if lr_png is None:
        raise ValueError(f"tile {tile} has no {lr_column(scale)} image: the shards were not made at x{scale}")
    hr, lr = decode_png(hr_png), decode_png(lr_png)
    if hr.shape[0] != lr.shape[0] * scale or hr.shape[1] != lr.shape[1] * scale:
        raise ValueError(f"tile {tile}: HR {hr.shape[:2]} is not x{scale} of LR {lr.shape[:2]}")
    return hr, lr


def decoded_pairs(batch: Mapping[str, Any], scale: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(HR, LR) uint8 arrays of every row of a batch of PNG bytes, checked to be x`scale` apart."""
    ids = batch.get("tile_id", [None] * len(batch["hr"]))
    for hr_png, lr_png, tile in zip(batch["hr"], batch[lr_column(scale)], ids):
        yield _decode_pair(hr_png, lr_png, scale, tile)


def stack_nchw(images: list[np.ndarray], what: str) -> np.ndarray:
    """Same-sized NHWC uint8 images -> one NCHW-contiguous float32 batch in [0, 1] (`what` names them in the
    error when sizes differ)."""
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(
            f"{what} images of different sizes {sorted(shapes)} in one batch: set data.patch_size / data.val_crop"
        )
    # NHWC uint8 -> NCHW float32 in [0, 1]
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def with_meta(out: dict[str, np.ndarray], batch: Mapping[str, Any], keep_meta: bool) -> dict[str, np.ndarray]:
    """`out` plus the batch's `META_COLUMNS` (tile and source ids, split) when `keep_meta`."""
    if keep_meta:
        for name in META_COLUMNS:
            if name in batch:
                out[name] = np.asarray(batch[name])
    return out


def decode_eval_batch(
    batch: Mapping[str, Any], *, scale: int, crop: int | None = None, keep_meta: bool = False
) -> dict[str, np.ndarray]:
    """A numpy batch of rows (`hr`, `lr_x<scale>` PNG bytes) -> `{"lr", "hr"}` float32 NCHW arrays in [0, 1]
    for validation/evaluation: whole tiles or centre crops (`crop`, LR side), no randomness."""
    lrs, hrs = [], []
    for hr, lr in decoded_pairs(batch, scale):
        if crop:
            hr, lr = centre_crop(hr, lr, scale, crop)
        hrs.append(hr)
        lrs.append(lr)
    return with_meta({"lr": stack_nchw(lrs, "LR"), "hr": stack_nchw(hrs, "HR")}, batch, keep_meta)


# --------------------------------------------------------------------------- shard checks and reading


def read_shard_rows(
    batch: Mapping[str, Any], *, split: str, columns: list[str], rows_per_block: int = 64
) -> Iterator[pa.Table]:
    """Rows of the shard files named in `batch["path"]` (files of `split`) whose `split` column equals
    `split`, streamed in blocks of at most `rows_per_block` rows (one Parquet record batch at a time, so
    memory stays bounded). A file without a `split` column (the split only in its `split=<x>/` folder, as
    Hive-partitioned writers leave it) gets the column from its folder."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for uri in batch["path"]:
        fs, path = storage.resolve(str(uri))
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            in_file = [c for c in columns if c in parquet.schema_arrow.names]
            for record_batch in parquet.iter_batches(batch_size=rows_per_block, columns=in_file):
                table = pa.Table.from_batches([record_batch])
                if "split" in in_file:
                    table = table.filter(pc.equal(table["split"], split))
                elif "split" in columns:
                    table = table.append_column("split", pa.array([split] * table.num_rows, pa.string()))
                if table.num_rows:
                    yield table.select(columns)


def read_split_table(shards: str, split: str, *, columns: list[str] | None = None) -> pa.Table:
    """The whole split as one table of `TILE_SCHEMA` columns (tests, benchmarks, small datasets): the rows
    `read_split` streams, from the split's files (`split` from the folder); training streams with Ray Data."""
    wanted = columns or list(TILE_SCHEMA.names)
    schema = pa.schema([TILE_SCHEMA.field(c) for c in wanted])
    blocks = read_shard_rows({"path": shard_files(shards, split)}, split=split, columns=wanted, rows_per_block=1024)
    tables = [block.cast(schema) for block in blocks]
    return pa.concat_tables(tables) if tables else schema.empty_table()


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
    """Rows of one split (`hr`, `lr_x<scale>`, `tile_id`, `source_id`, `split`): only the files the manifest
    lists for `split`, checked first (`check_shards`: a bad file is a `ShardError` naming it, before any
    read), only rows whose `split` column says so. `shuffle_seed` reshuffles the file order on every
    execution (epoch), reproducibly.

    One read task per shard file (a source), each `num_cpus` CPUs, instead of `ray.data.read_parquet`:
    in Ray 2.60 `read_parquet` plans a file-listing task that takes a whole CPU (not configurable), which
    deadlocks when Train workers hold all but a fraction of the CPUs, and which added 2-10 s per epoch
    here (every epoch re-executes the pipeline) against about 0.1 s for this plan on the same files.
    """
    import ray.data
    from ray.data import RandomSeedConfig, TaskPoolStrategy

    files = check_shards(shards, scale, splits=(split,))[split]
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
