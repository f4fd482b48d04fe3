"""The train and val Ray Datasets of a training run: shard rows (`srtn.data.reader.read_split`) decoded in
Ray Data `map_batches` tasks, so workers receive ready float32 NCHW arrays in [0, 1].

- PNG decoding, the aligned random crop and the flips/rot90 (`srtn.train.augment.decode_train_batch`) run
  in tasks of `scaling.data_cpus` CPUs, at most `scaling.data_concurrency` at once, not in the training step.
- Shuffling of train, per epoch: the file order is reshuffled on every execution
  (`read_split(shuffle_seed=data.seed)`, one block per file) and each worker mixes rows in a local
  buffer (`iter_torch_batches(local_shuffle_buffer_size=data.shuffle_buffer)`, `srtn.train.loop`). Files
  are per source (slide or patient), so the two together give batches that mix sources, streaming and with
  bounded memory; a full `random_shuffle` would be an all-to-all exchange of every tile every epoch, which
  costs more than it gives for patches that are randomly cropped anyway.
- Val uses whole tiles (or centre crops, `data.val_crop`), in file order, no augmentation
  (`srtn.data.reader.decode_eval_batch`, as evaluation does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from srtn.config.train import TrainConfig
from srtn.data.reader import decode_eval_batch, read_split
from srtn.train.augment import decode_train_batch

if TYPE_CHECKING:
    import ray.data

__all__ = ["build_datasets"]


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
