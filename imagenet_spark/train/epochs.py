"""One epoch of training and its evaluation, returned as an :class:`EpochRecord`.

Why separate from the wiring (train/loop.py): the epoch is where the run's rules meet (as many steps on every
rank, the first step reported at once, calls cut at checkpoint, divergence-check and fault steps, evaluation on
the averaged weights, the best epoch kept from what was evaluated) and a reader should see them in one place,
without the setup around them. Every value in the record is reduced across workers, so every rank computes the
same record and takes the same decisions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagenet_spark.config import to_dict
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.train.checkpoints import CheckpointKeeper
from imagenet_spark.train.divergence import check_finite_training
from imagenet_spark.train.faults import FaultInjector
from imagenet_spark.train.schedules import Schedule
from imagenet_spark.train_config import TrainConfig

# Present only when the epoch was evaluated (metrics.json omits them otherwise).
_EVALUATION_FIELDS = ("val_loss", "val_top1", "val_top5", "val_images", "eval_weights")


@dataclass(frozen=True, kw_only=True)
class EpochRecord:
    """One finished epoch: a line of ``metrics.json``, the ``epoch`` event to the driver, MLflow's metrics.

    Losses and accuracies are exact global ratios (sums across workers, not means of means); ``learning_rate``
    is the schedule's at the epoch's last step; ``attempt`` counts the relaunches of the run."""

    epoch: int
    global_step: int
    loss: float
    top1: float
    top5: float
    images_per_s: float
    learning_rate: float
    train_time_s: float
    attempt: int
    val_loss: float | None = None
    val_top1: float | None = None
    val_top5: float | None = None
    val_images: int | None = None
    eval_weights: str | None = None  # "ema" or "raw": the weights evaluated
    wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        """The wire and ``metrics.json`` form (field order kept; evaluation fields only when evaluated)."""
        return {k: v for k, v in to_dict(self).items() if not (k in _EVALUATION_FIELDS and v is None)}

    def metric(self, name: str) -> float | None:
        """A metric by name (``best_metric``): None when the epoch did not measure it."""
        value = getattr(self, name, None)
        return None if value is None else float(value)


@dataclass(frozen=True)
class EpochParts:
    """What every epoch of a run uses, built once by the loop."""

    cfg: TrainConfig
    ctx: WorkerContext
    backend: Any
    sums: dict[str, Any]
    train_steps: Any
    eval_steps: Any
    iterator: Any
    val_ds: Any  # None: the dataset has no validation split
    val_steps: int
    steps_per_epoch: int
    total_steps: int
    epochs_total: int
    schedule: Schedule
    keeper: CheckpointKeeper
    faults: FaultInjector
    progress: Any  # reporting.ProgressReporter
    after_first_call: Callable[[], None]
    with_average: Callable[[], Any]  # context manager: the averaged weights swapped in (EMA), else a no-op
    eval_weights: str


def steps_per_call(steps_per_epoch: int) -> int:
    """Steps run inside one ``tf.function`` call (Python overhead per step stays negligible)."""
    return max(1, min(50, steps_per_epoch))


def run_epoch(parts: EpochParts, epoch: int, *, start_step: int, global_step: int, first_call: bool) -> EpochRecord:
    """Train epoch ``epoch`` (0-based) from ``start_step``, evaluate when due, keep it if best; on every rank."""
    import tensorflow as tf

    cfg, backend, sums = parts.cfg, parts.backend, parts.sums
    epoch_steps = min(parts.steps_per_epoch, parts.total_steps - epoch * parts.steps_per_epoch)
    for name in ("loss", "top1", "top5", "count"):
        sums[name].reset_state()
    started = time.monotonic()
    global_step, steps_run = _train_steps(parts, epoch, epoch_steps, step=start_step, global_step=global_step,
                                          first_call=first_call, started=started)
    train_time = time.monotonic() - started
    record = EpochRecord(
        epoch=epoch + 1, global_step=global_step,
        loss=_ratio(backend, sums["loss"], sums["count"]),
        top1=_ratio(backend, sums["top1"], sums["count"]),
        top5=_ratio(backend, sums["top5"], sums["count"]),
        images_per_s=round(steps_run * cfg.global_batch_size / max(train_time, 1e-9), 1),
        learning_rate=round(parts.schedule(global_step - 1), 6), train_time_s=round(train_time, 2),
        attempt=parts.ctx.attempt, wall_time_s=0.0)
    is_last = epoch == parts.epochs_total - 1
    evaluate = parts.val_ds is not None and ((epoch + 1) % cfg.loop.eval_every_epochs == 0 or is_last)
    with parts.with_average() if evaluate else contextlib.nullcontext():  # checkpoints/best/ keeps what was evaluated
        if evaluate:
            record = dataclasses.replace(record, **_evaluate(parts, tf))
        record = dataclasses.replace(record, wall_time_s=round(time.monotonic() - started, 2))
        if cfg.output.export == "best":
            parts.keeper.keep_if_best(record.epoch, record.metric(cfg.output.best_metric))
    return record


def _train_steps(parts: EpochParts, epoch: int, epoch_steps: int, *, step: int, global_step: int,
                 first_call: bool, started: float) -> tuple[int, int]:
    """The epoch's optimizer steps, in calls of up to :func:`steps_per_call`; returns (global step, steps run)."""
    import tensorflow as tf

    cfg, backend, sums = parts.cfg, parts.backend, parts.sums
    per_call = steps_per_call(parts.steps_per_epoch)
    steps_run = 0
    while step < epoch_steps:
        n = _call_length(cfg, parts.faults, 1 if first_call else min(per_call, epoch_steps - step), global_step)
        parts.train_steps(parts.iterator, tf.constant(n))
        running_loss = _ratio(backend, sums["loss"], sums["count"])  # a collective: every rank reads it
        if first_call:
            parts.after_first_call()
            first_call = False
        step += n
        steps_run += n
        global_step += n
        check_finite_training(cfg, backend, sums, running_loss, global_step=global_step, steps=n, epoch=epoch + 1,
                              lr=parts.schedule(global_step - 1))
        parts.faults.after_steps(global_step)
        every = cfg.loop.checkpoint_every_steps
        if every and global_step % every == 0 and step < epoch_steps:
            parts.keeper.save(epoch, step)
        parts.progress.after_steps(epoch=epoch + 1, step=step, epoch_steps=epoch_steps, global_step=global_step,
                                   loss=running_loss, steps_run=steps_run, epoch_started=started)
    return global_step, steps_run


def _call_length(cfg: TrainConfig, faults: FaultInjector, steps: int, global_step: int) -> int:
    """``steps`` cut so a call ends at the next periodic checkpoint, divergence check and injected fault."""
    if cfg.loop.checkpoint_every_steps:
        steps = min(steps, cfg.loop.checkpoint_every_steps - global_step % cfg.loop.checkpoint_every_steps)
    if cfg.loop.divergence_check_steps:  # the non-finite check runs after every call: bound the gap
        steps = min(steps, cfg.loop.divergence_check_steps - global_step % cfg.loop.divergence_check_steps)
    return faults.limit(global_step, steps)


def _evaluate(parts: EpochParts, tf: Any) -> dict[str, Any]:
    """Every validation image exactly once (padding rows weigh 0); the evaluation fields of the record."""
    backend, sums = parts.backend, parts.sums
    for name in ("val_loss", "val_top1", "val_top5", "val_count"):
        sums[name].reset_state()
    parts.eval_steps(iter(parts.val_ds), tf.constant(parts.val_steps))
    return {
        "val_loss": _ratio(backend, sums["val_loss"], sums["val_count"]),
        "val_top1": _ratio(backend, sums["val_top1"], sums["val_count"]),
        "val_top5": _ratio(backend, sums["val_top5"], sums["val_count"]),
        "val_images": int(round(backend.sum_across_workers(float(sums["val_count"].result())))),
        "eval_weights": parts.eval_weights,
    }


def _ratio(backend: Any, total: Any, count: Any) -> float:
    """Global ratio of two summed metrics (exact across workers: sums, not means of means)."""
    c = backend.sum_across_workers(float(count.result()))
    t = backend.sum_across_workers(float(total.result()))
    return round(t / c, 6) if c else float("nan")
