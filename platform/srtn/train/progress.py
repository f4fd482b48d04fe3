"""The training console on the driver: a bar over epochs and one line per epoch, while `trainer.fit()` runs.

Worker output stays in Ray's log files (`srtn.console`: the driver does not stream it unless verbose), so the
epoch lines cannot come from rank 0's stdout. A Train callback in the controller hands each report's rank-0
metrics to a Ray queue; a driver thread prints them as they arrive.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from ray.train import UserCallback

__all__ = ["EpochReporter", "epoch_line", "epoch_progress"]


def epoch_line(metrics: Mapping[str, Any], epochs: int) -> str:
    """`epoch 3/8: train_loss 0.01234  val_psnr 27.512 dB  val_ssim 0.8123  41.0 samples/s  data wait 2%`."""
    m = {"val_psnr": float("nan"), "val_ssim": float("nan"), "samples_per_second": 0.0, "data_wait_share": 0.0}
    m |= metrics
    return (
        f"epoch {m['epoch']}/{epochs}: train_loss {m['train_loss']:.5f}  val_psnr {m['val_psnr']:.3f} dB  "
        f"val_ssim {m['val_ssim']:.4f}  {m['samples_per_second']:.1f} samples/s  "
        f"data wait {100 * m['data_wait_share']:.0f}%"
    )


class EpochReporter(UserCallback):
    """Runs in the Train controller: puts the metrics of every report that carries validation (rank 0's) on
    `queue`."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        validated = [m for m in metrics if "val_psnr" in m]
        if validated:
            self._queue.put({k: v for k, v in validated[0].items() if isinstance(v, (int, float, str))})


def _print_epochs(queue: Any, epochs: int, done: threading.Event) -> None:
    from ray.util.queue import Empty
    from tqdm import tqdm

    interval = 0.5 if sys.stderr.isatty() else 60.0
    with tqdm(total=epochs, desc="training", unit="epoch", file=sys.stderr, mininterval=interval) as bar:
        while not (done.is_set() and queue.empty()):
            try:
                metrics = queue.get(timeout=0.5)
            except Empty:
                continue
            bar.write(epoch_line(metrics, epochs), file=sys.stdout)
            bar.n = int(metrics["epoch"])
            bar.refresh()


@contextlib.contextmanager
def epoch_progress(epochs: int) -> Iterator[list[UserCallback]]:
    """The callbacks to give the trainer; while the block runs, each epoch's line is printed on the driver."""
    from ray.util.queue import Queue

    queue = Queue(actor_options={"num_cpus": 0})
    done = threading.Event()
    printer = threading.Thread(target=_print_epochs, args=(queue, epochs, done), name="srtn-epochs", daemon=True)
    printer.start()
    try:
        yield [EpochReporter(queue)]
    finally:
        done.set()
        printer.join(timeout=10)
        queue.shutdown()
