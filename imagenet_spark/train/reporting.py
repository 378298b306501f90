"""What a run tells the outside while it trains: metrics.json, TensorBoard, the log, and progress to the driver.

Why one module: the epoch record (train/epochs.py) leaves the worker four ways (``ModelDir.metrics``, TensorBoard
scalars, the ``epoch N/M`` log line and the driver's progress channel, which MLflow and the search read), and
they must carry the same values. Only the chief writes or reports; the other ranks hold no writer.
``metrics.json`` is rewritten whole and atomically after every epoch, so a reader never sees half a file and a
resumed run continues the history of the epochs it kept.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagenet_spark import jsonio
from imagenet_spark.config import to_dict
from imagenet_spark.data import fs
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.layout import ModelDir
from imagenet_spark.train.checkpoints import tf_path
from imagenet_spark.train.epochs import EpochRecord

log = logging.getLogger(__name__)

Reporter = Callable[[dict[str, Any]], None]


def read_metrics(model_dir: str) -> list[dict[str, Any]]:
    """The epoch records a run wrote (``metrics.json``), oldest first; [] when it has none yet."""
    uri = ModelDir(model_dir).metrics
    return json.loads(fs.read_text(uri)) if fs.exists(uri) else []


@dataclass(frozen=True)
class ProgressRecord:
    """A progress message to the driver while an epoch runs (``{"event": "progress", ...}`` on the wire)."""

    epoch: int
    epochs: int
    step: int
    steps: int
    global_step: int
    total_steps: int
    loss: float
    images_per_s: float
    eta_s: float | None


class ProgressReporter:
    """Sends a :class:`ProgressRecord` at most every ``progress_every_s`` (the first step's at once), with the
    run's throughput and ETA; a no-op on ranks other than the chief or without a driver channel."""

    def __init__(self, report: Reporter | None, ctx: WorkerContext, *, every_s: float, global_batch_size: int,
                 total_steps: int, epochs_total: int) -> None:
        self._report = report if ctx.is_chief else None
        self._every_s, self._batch = every_s, global_batch_size
        self._total_steps, self._epochs_total = total_steps, epochs_total
        self._run_started = time.monotonic()
        self._last = 0.0

    def after_steps(self, *, epoch: int, step: int, epoch_steps: int, global_step: int, loss: float,
                    steps_run: int, epoch_started: float) -> None:
        """``epoch`` counts from 1; ``steps_run``: the steps this process ran in the epoch since ``epoch_started``."""
        now = time.monotonic()
        if self._report is None or now - self._last < self._every_s:
            return
        self._last = now
        rate = steps_run * self._batch / max(now - epoch_started, 1e-9)
        done = global_step / self._total_steps
        eta = round((now - self._run_started) / max(done, 1e-9) * (1 - done), 1) if done else None
        record = ProgressRecord(epoch=epoch, epochs=self._epochs_total, step=step, steps=epoch_steps,
                                global_step=global_step, total_steps=self._total_steps, loss=loss,
                                images_per_s=round(rate, 1), eta_s=eta)
        self._report({"event": "progress", **to_dict(record)})


class EpochLog:
    """The chief's record of finished epochs: ``metrics.json``, TensorBoard scalars, the log line and the driver's
    ``epoch`` event. ``history`` starts from the kept epochs of a resumed run (``start_epoch`` of them)."""

    def __init__(self, model_dir: str, ctx: WorkerContext, *, start_epoch: int, epochs_total: int,
                 report: Reporter | None) -> None:
        import tensorflow as tf

        self._dir = ModelDir(model_dir)
        self._chief = ctx.is_chief
        self._epochs_total = epochs_total
        self._report = report
        self.history: list[dict[str, Any]] = read_metrics(model_dir)[:start_epoch] if ctx.is_chief else []
        self._writer = tf.summary.create_file_writer(tf_path(self._dir.tensorboard)) if ctx.is_chief else None

    def write(self, record: EpochRecord) -> None:
        """Append the epoch to the history and tell everyone who reads it (chief only)."""
        import tensorflow as tf

        if not self._chief:
            return
        values = record.to_dict()
        self.history.append(values)
        fs.write_text_atomic(self._dir.metrics, jsonio.dumps(self.history, indent=1))
        assert self._writer is not None
        with self._writer.as_default(step=record.global_step):
            for key, value in values.items():
                if isinstance(value, float):
                    tf.summary.scalar(key, value)
        self._writer.flush()
        log.info("epoch %d/%d: %s", record.epoch, self._epochs_total, json.dumps(values))
        if self._report:
            self._report({"event": "epoch", **values, "epochs": self._epochs_total})

    @property
    def epochs_written(self) -> int | None:
        """Epochs in metrics.json (None on ranks other than the chief, which keep no history)."""
        return len(self.history) if self._chief else None
