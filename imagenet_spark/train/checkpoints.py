"""Checkpoints of a training run: restore on start, save at epoch ends (and every N steps), keep the best epoch.

Why one keeper: where a run resumes, what a checkpoint holds (model, optimizer, EMA, position, best score so
far) and when the best epoch's weights are kept must agree with each other and across ranks. Every method is
called on every rank: saving is a collective under MWMS, so a worker that is not the chief writes its copy to a
rank-local temporary directory and deletes it, and the chief writes the model dir (``ModelDir.checkpoints``,
``ModelDir.best_checkpoints``). TensorFlow is imported inside the functions (worker side only).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagenet_spark.config import VAL_METRICS
from imagenet_spark.data import fs
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.layout import ModelDir
from imagenet_spark.train.divergence import check_finite_weights
from imagenet_spark.train.ema import WeightAverage
from imagenet_spark.train_config import TrainConfig

log = logging.getLogger(__name__)


def tf_path(uri: str) -> str:
    """TensorFlow's file APIs take local paths or their own URIs (hdfs://, gs://); strip our ``file:``."""
    return fs.normalize(uri) if "://" not in fs.normalize(uri) else uri


@dataclass(frozen=True)
class RunCounters:
    """The run's position and best epoch so far, as TensorFlow variables checkpointed with the weights (so a
    resumed run continues where it stopped and keeps comparing against the best epoch it already had)."""

    epoch: Any
    step_in_epoch: Any
    best_score: Any  # the best metric so far, negated when smaller is better
    best_epoch: Any

    @classmethod
    def create(cls) -> RunCounters:
        """Call inside the strategy's scope, after the model and the optimizer (the variable order is the
        checkpoint's and must match on every rank)."""
        import tensorflow as tf

        def counter(name: str, dtype: Any, initial: Any) -> Any:
            return tf.Variable(initial, dtype=dtype, trainable=False, name=name,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        return cls(epoch=counter("epoch", tf.int64, 0), step_in_epoch=counter("step_in_epoch", tf.int64, 0),
                   best_score=counter("best_score", tf.float64, -math.inf),
                   best_epoch=counter("best_epoch", tf.int64, 0))


class CheckpointKeeper:
    """Restore, save and keep-best for one rank; built once per run after the model, optimizer and counters."""

    def __init__(self, cfg: TrainConfig, ctx: WorkerContext, backend: Any, *, model: Any, optimizer: Any,
                 counters: RunCounters, average: WeightAverage | None, steps_per_epoch: int,
                 learning_rate: Callable[[int], float]) -> None:
        import tensorflow as tf

        self._cfg, self._ctx, self._backend = cfg, ctx, backend
        self._model, self._average, self.counters = model, average, counters
        self._steps_per_epoch, self._learning_rate = steps_per_epoch, learning_rate
        self._dir = ModelDir(cfg.model_dir)
        self._checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=counters.epoch, step_in_epoch=counters.step_in_epoch,
            best_score=counters.best_score, best_epoch=counters.best_epoch,
            **({"ema": average.trackable} if average else {}))
        self._manager = tf.train.CheckpointManager(self._checkpoint, tf_path(self._dir.checkpoints),
                                                   max_to_keep=cfg.loop.keep_checkpoints)
        self._best_checkpoint = tf.train.Checkpoint(model=model)  # weights only: what the export needs
        self._best_manager = tf.train.CheckpointManager(self._best_checkpoint,
                                                        tf_path(self._dir.best_checkpoints), max_to_keep=1)
        self._larger_is_better = VAL_METRICS[cfg.output.best_metric]

    def restore(self) -> tuple[int, int]:
        """Restore the newest checkpoint, if any; returns the (epoch, step in epoch) to continue from."""
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(tf_path(self._dir.checkpoints))
        if latest:
            self._checkpoint.restore(latest).expect_partial()
            log.info("rank %d: resumed from %s (epoch %d, step %d)", self._ctx.rank, latest,
                     int(self.counters.epoch.numpy()), int(self.counters.step_in_epoch.numpy()))
        return int(self.counters.epoch.numpy()), int(self.counters.step_in_epoch.numpy())

    def save(self, epoch: int, step_in_epoch: int) -> None:
        """Checkpoint the run at ``epoch`` (completed epochs) and ``step_in_epoch``, numbered by global step."""
        number = epoch * self._steps_per_epoch + step_in_epoch
        # Every rank reads the weights (a collective under MWMS), so every rank refuses alike.
        check_finite_weights(self._cfg, self._model.get_weights() + (self._average.values() if self._average else []),
                             what="the checkpoint", step=number, lr=self._learning_rate(max(0, number - 1)))
        self.counters.epoch.assign(epoch)
        self.counters.step_in_epoch.assign(step_in_epoch)
        path = self._save(self._manager, self._checkpoint, number)
        if path:
            log.info("checkpoint %s (epoch %d, step %d)", path, epoch, step_in_epoch)

    def keep_if_best(self, epoch: int, value: float | None) -> None:
        """Keep the model's current weights in ``checkpoints/best/`` when ``value`` (the epoch's ``best_metric``)
        beats every epoch before. Every rank decides alike (the metric is already reduced across workers), so the
        save stays collective."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        score = value if self._larger_is_better else -value
        if score > float(self.counters.best_score.numpy()):
            self.counters.best_score.assign(score)
            self.counters.best_epoch.assign(epoch)
            self._save(self._best_manager, self._best_checkpoint, epoch)
            if self._ctx.is_chief:
                log.info("best so far: epoch %d, %s=%.4f (%s/%s)", epoch, self._cfg.output.best_metric, value,
                         ModelDir.CHECKPOINTS, ModelDir.BEST)

    def best(self) -> dict[str, Any] | None:
        """The best evaluated epoch of the run (resumed runs included), or None when none was evaluated."""
        epoch = int(self.counters.best_epoch.numpy())
        if not epoch:
            return None
        sign = 1 if self._larger_is_better else -1
        return {"epoch": epoch, "metric": self._cfg.output.best_metric,
                "value": float(self.counters.best_score.numpy()) * sign}

    def best_weights_path(self) -> str | None:
        """The checkpoint ``checkpoints/best/`` holds (its path prefix), or None."""
        import tensorflow as tf

        return tf.train.latest_checkpoint(tf_path(self._dir.best_checkpoints))  # type: ignore[no-any-return]

    def _save(self, manager: Any, checkpoint: Any, number: int) -> str | None:
        if self._ctx.is_chief:
            return str(manager.save(checkpoint_number=number))
        if self._backend.save_on_all_ranks:  # every worker must take part (collectives); only the chief's is kept
            tmp = tempfile.mkdtemp(prefix=f"ckpt-rank{self._ctx.rank}-")
            checkpoint.write(os.path.join(tmp, ModelDir.CHECKPOINT_PREFIX))
            shutil.rmtree(tmp, ignore_errors=True)
        return None
