"""The training loop one worker runs: the same code for every backend and for ``--workers 1``.

Why a custom loop over ``GradientTape`` rather than ``model.fit``: we need exact control of the things
distributed ImageNet training gets wrong: every worker runs the same number of steps per epoch (from the
shard plan), evaluation counts every validation image exactly once (weighted sums, not per-worker
means), a run resumes mid-epoch from the newest checkpoint, faults can be injected at a given step,
and progress reaches the Spark driver while training runs. Several steps run inside one ``tf.function``
(``steps_per_loop``) so the Python overhead per step stays negligible; ``bench/train_step.py`` measures
it against ``model.fit``.

The loop sees a :class:`WorkerContext` and a backend, never environment variables. This module is the wiring:
the step functions (train/steps.py), one epoch and its record (train/epochs.py), checkpoints (train/checkpoints.py),
metrics.json/TensorBoard/progress (train/reporting.py), fault injection (train/faults.py) and divergence
(train/divergence.py) are each in their own module.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from imagenet_spark.data import fs
from imagenet_spark.data.augment import AugmentSpec
from imagenet_spark.data.sharding import ShardPlan
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.layout import ModelDir
from imagenet_spark.train.checkpoints import CheckpointKeeper, RunCounters, tf_path
from imagenet_spark.train.divergence import DivergedError, TrainingError, check_finite_weights
from imagenet_spark.train.ema import WeightAverage, averaged_weights, make_swapper
from imagenet_spark.train.epochs import EpochParts, run_epoch
from imagenet_spark.train.faults import FaultInjector
from imagenet_spark.train.reporting import EpochLog, ProgressReporter, Reporter
from imagenet_spark.train.schedules import Schedule, keras_schedule, make_schedule
from imagenet_spark.train.steps import make_step_functions
from imagenet_spark.train_config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """Everything the driver resolved for the workers: plain values, picklable, JSON-able. It crosses to the
    workers inside ``train.spec.WorkerSpec`` (``config.to_dict`` / ``from_dict``, the one idiom)."""

    num_classes: int
    image_size: int
    eval_resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: ShardPlan
    validation: ShardPlan | None
    steps_per_epoch: int
    total_steps: int
    # The dataset's short side (manifest config.resize_short; None: original sizes): the export's signature
    # resizes original images to it before the eval crop, as the partition job did (train/serve parity).
    resize_short: int | None = None
    # The train transform (data/augment.py), resolved from the config on the driver; None: the default preset.
    augment: AugmentSpec | None = None


def train(cfg: TrainConfig, ctx: WorkerContext, plan: RunPlan, *, report: Reporter | None = None) -> dict[str, Any]:
    """Train (or resume) to ``cfg.epochs``; the chief writes checkpoints, metrics, TensorBoard and the export.

    Returns the final metrics (on every rank; only the chief's is used), or ``{"failure": {...}}`` when the run
    diverged: a structured failure the driver turns back into :class:`DivergedError` and does not retry. Every
    rank reaches that decision at the same step (it is made from values reduced across workers), so no rank is
    left waiting in a collective.
    """
    try:
        return _train(cfg, ctx, plan, report=report)
    except DivergedError as exc:
        log.error("rank %d: %s", ctx.rank, exc)
        return {"failure": exc.to_failure()}


def _train(cfg: TrainConfig, ctx: WorkerContext, plan: RunPlan, *, report: Reporter | None = None) -> dict[str, Any]:
    """The loop behind :func:`train` (which turns a divergence into a structured failure)."""
    backend = _start_backend(cfg, ctx)
    schedule = make_schedule(peak_lr=cfg.learning_rate, steps_per_epoch=plan.steps_per_epoch, epochs=cfg.epochs,
                             warmup_epochs=cfg.recipe.warmup_epochs, warmup_max_fraction=cfg.recipe.warmup_max_fraction,
                             kind=cfg.recipe.schedule, step_epochs=cfg.recipe.step_epochs,
                             step_factor=cfg.recipe.step_factor)
    model, optimizer, sums, counters = _build(cfg, plan, backend, schedule)
    log.info("launch timing: rank %d model built at %.3f", ctx.rank, time.time())
    average = WeightAverage(model, decay=cfg.recipe.ema_decay, warmup=cfg.recipe.ema_warmup,
                            strategy=backend.strategy) if cfg.recipe.ema_decay else None
    train_steps, eval_steps = make_step_functions(cfg, backend, model, optimizer, sums, num_classes=plan.num_classes,
                                                  mean=plan.mean, std=plan.std, average=average)
    # Evaluation, the best epoch's checkpoint and the export see the averaged weights when EMA is on.
    swap = make_swapper(backend, average) if average else None
    with_average = (lambda: averaged_weights(swap)) if swap else contextlib.nullcontext
    keeper = CheckpointKeeper(cfg, ctx, backend, model=model, optimizer=optimizer, counters=counters,
                              average=average, steps_per_epoch=plan.steps_per_epoch, learning_rate=schedule)
    start_epoch, start_step = keeper.restore()
    global_step = start_epoch * plan.steps_per_epoch + start_step
    if global_step >= plan.total_steps:
        log.info("rank %d: checkpoint already at the planned %d steps; nothing to train", ctx.rank, plan.total_steps)
    iterator, val_ds = _datasets(cfg, ctx, plan, backend, global_step)
    if global_step < plan.total_steps:  # traced apart from its first call, so bench/launch.py can time both
        import tensorflow as tf

        train_steps.get_concrete_function(iterator, tf.constant(1))
        log.info("launch timing: rank %d traced at %.3f", ctx.rank, time.time())
    epochs_total = math.ceil(plan.total_steps / plan.steps_per_epoch)
    end_epoch = min(epochs_total, cfg.output.stop_at_epoch) if cfg.output.stop_at_epoch else epochs_total
    epoch_log = EpochLog(cfg.model_dir, ctx, start_epoch=start_epoch, epochs_total=epochs_total, report=report)

    def after_first_call() -> None:
        backend.after_first_step(average.broadcast_group(model) if average else model, optimizer)
        log.info("launch timing: rank %d first step done at %.3f", ctx.rank, time.time())

    parts = EpochParts(
        cfg=cfg, ctx=ctx, backend=backend, sums=sums, train_steps=train_steps, eval_steps=eval_steps,
        iterator=iterator, val_ds=val_ds, val_steps=plan.validation.steps_per_epoch if plan.validation else 0,
        steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps, epochs_total=epochs_total,
        schedule=schedule, keeper=keeper, faults=FaultInjector.from_config(cfg, ctx),
        progress=ProgressReporter(report, ctx, every_s=cfg.loop.progress_every_s,
                                  global_batch_size=cfg.global_batch_size, total_steps=plan.total_steps,
                                  epochs_total=epochs_total),
        after_first_call=after_first_call, with_average=with_average, eval_weights="ema" if average else "raw")
    last: dict[str, Any] = epoch_log.history[-1] if epoch_log.history else {}
    for epoch in range(start_epoch, end_epoch):
        record = run_epoch(parts, epoch, start_step=start_step if epoch == start_epoch else 0,
                           global_step=global_step, first_call=epoch == start_epoch)
        keeper.save(epoch + 1, 0)
        last, global_step = record.to_dict(), record.global_step
        epoch_log.write(record)
    done = {"metrics": last, "epochs": epoch_log.epochs_written, "global_step": global_step, "best": keeper.best()}
    if end_epoch < epochs_total:  # paused at stop_at_epoch: resumable, nothing exported (same on every rank)
        log.info("rank %d: stopped after epoch %d of %d (stop_at_epoch)", ctx.rank, end_epoch, epochs_total)
        return {**done, "stopped_at_epoch": end_epoch}
    return {**done, **_finish(cfg, ctx, plan, backend, model, keeper, with_average, global_step=global_step),
            "exported_weights": parts.eval_weights}


def _start_backend(cfg: TrainConfig, ctx: WorkerContext) -> Any:
    """Size TensorFlow's thread pools, then start the backend (before any other TensorFlow op)."""
    from imagenet_spark.distribute.backends import make_backend
    from imagenet_spark.distribute.threads import ThreadSizing
    from imagenet_spark.distribute.threads import configure as configure_threads

    log.info("launch timing: rank %d worker started at %.3f", ctx.rank, time.time())  # read by bench/launch.py
    log.info("%s", ThreadSizing(ctx.cpus, ctx.cpus_source).describe(ctx.rank, ctx.task_cpus))  # type: ignore[arg-type]
    if not configure_threads(ctx.cpus):  # before TensorFlow's runtime starts (the backend starts it)
        log.warning("rank %d: TensorFlow had already started: its thread pools keep their default size", ctx.rank)
    backend = make_backend(cfg.backend, ctx,  # before any other TensorFlow op
                           horovod_fp16_allreduce=cfg.recipe.horovod_fp16_allreduce)
    import tensorflow as tf

    log.info("launch timing: rank %d backend ready at %.3f", ctx.rank, time.time())
    tf.keras.utils.set_random_seed(cfg.input.seed)
    per_worker = cfg.per_worker_batch
    if per_worker % backend.local_replicas:
        raise TrainingError(f"global_batch_size={cfg.global_batch_size}: the per-worker batch {per_worker} does not "
                            f"split over the {backend.local_replicas} devices of each worker. Fix: make it a multiple "
                            f"of {cfg.workers * backend.local_replicas}.")
    return backend


def _build(cfg: TrainConfig, plan: RunPlan, backend: Any, schedule: Schedule) -> tuple[Any, Any, dict[str, Any],
                                                                                         RunCounters]:
    """The model, optimizer, metric sums and checkpointed counters, in the strategy's scope (in this order)."""
    import tensorflow as tf

    from imagenet_spark.models import build

    with backend.scope():
        model = build(cfg.model, num_classes=plan.num_classes, image_size=plan.image_size,
                      batch_norm=cfg.recipe.batch_norm, dropout=cfg.recipe.dropout,
                      bn_momentum=cfg.recipe.bn_momentum, dtype_policy=cfg.recipe.precision)
        optimizer: Any = tf.keras.optimizers.SGD(learning_rate=keras_schedule(schedule), momentum=cfg.recipe.momentum,
                                                 nesterov=cfg.recipe.nesterov)
        if cfg.recipe.precision == "mixed_float16":
            optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
        # Its slots now, not while the first step is traced: MWMS then makes them with the model's variables.
        optimizer.build(model.trainable_variables)
        sums = {name: tf.keras.metrics.Sum(name=name) for name in
                ("loss", "top1", "top5", "count", "val_loss", "val_top1", "val_top5", "val_count", "nonfinite")}
        counters = RunCounters.create()
    return model, optimizer, sums, counters


def _datasets(cfg: TrainConfig, ctx: WorkerContext, plan: RunPlan, backend: Any, global_step: int) -> tuple[Any, Any]:
    """The distributed training iterator and validation dataset (None without a validation split)."""
    from imagenet_spark.data.eval_stream import eval_dataset
    from imagenet_spark.data.reader import train_dataset

    # A relaunch (a retry, or the next segment of a paused run) reshuffles instead of replaying the first batches.
    seed = cfg.input.seed + 7919 * ctx.attempt + 104729 * global_step
    train_ds = backend.distribute(lambda: train_dataset(
        data=cfg.data, cfg=cfg, ctx=ctx, plan=plan.train, num_classes=plan.num_classes,
        image_size=plan.image_size, seed=seed, augment=plan.augment))
    iterator = iter(train_ds)
    log.info("launch timing: rank %d input ready at %.3f", ctx.rank, time.time())
    val_ds = None
    if plan.validation is not None:
        val_ds = backend.distribute(lambda: eval_dataset(
            data=cfg.data, ctx=ctx, plan=plan.validation, num_classes=plan.num_classes, image_size=plan.image_size,
            eval_resize=plan.eval_resize))
    return iterator, val_ds


def _finish(cfg: TrainConfig, ctx: WorkerContext, plan: RunPlan, backend: Any, model: Any, keeper: CheckpointKeeper,
            with_average: Any, *, global_step: int) -> dict[str, Any]:
    """The export decision at the planned end: every rank reads the weights, only the chief exports."""
    # Reading the weights is a collective under MWMS (batch-norm statistics are sync-on-read): every rank
    # reads them, then only the chief exports, from a strategy-free copy.
    with with_average():  # the averaged weights when EMA is on (swapped back after: the checkpoint keeps both)
        weights = model.get_weights()
    consistency = backend.replica_consistency(weights)  # a collective under Horovod: every rank calls it
    # A resumed run whose newest checkpoint is already broken reaches here without training a step.
    check_finite_weights(cfg, weights, what="the export", step=global_step, lr=None)
    if ctx.is_chief:
        best_path = keeper.best_weights_path() if cfg.output.export == "best" else None
        if cfg.output.export == "best" and not best_path:
            log.warning("export=best but no evaluated epoch was kept (no validation metric %s): exporting the last "
                        "weights", cfg.output.best_metric)
        _export(cfg, plan, weights, best_checkpoint=best_path)
    backend.end_together()  # every rank waits for the export: none ends while the chief still works
    return {"exported": "best" if cfg.output.export == "best" and keeper.best() else "last", **consistency}


def _export(cfg: TrainConfig, plan: RunPlan, weights: list[Any], *, best_checkpoint: str | None = None) -> None:
    """Export the serving SavedModel from a strategy-free copy of the trained model (no collectives needed):
    the final ``weights``, or the weights kept in ``best_checkpoint`` (restored into the plain copy)."""
    import tensorflow as tf

    from imagenet_spark.models import build
    from imagenet_spark.serving.export import export_saved_model

    with tf.distribute.get_strategy().scope():
        plain = build(cfg.model, num_classes=plan.num_classes, image_size=plan.image_size,
                      batch_norm=cfg.recipe.batch_norm, dropout=cfg.recipe.dropout,
                      bn_momentum=cfg.recipe.bn_momentum, dtype_policy=cfg.recipe.precision)
    if best_checkpoint:
        tf.train.Checkpoint(model=plain).restore(best_checkpoint).expect_partial()
        log.info("exporting the best epoch's weights from %s", best_checkpoint)
        check_finite_weights(cfg, plain.get_weights(), what=f"the export of {best_checkpoint}", step=0, lr=None)
    else:
        plain.set_weights(weights)
    model_dir = ModelDir(cfg.model_dir)
    labels = fs.read_text(model_dir.labels) if fs.exists(model_dir.labels) else None
    export_saved_model(plain, tf_path(model_dir.saved_model), model_name=cfg.model,
                       image_size=plan.image_size, eval_resize=plan.eval_resize, mean=plan.mean, std=plan.std,
                       labels_txt=labels, resize_short=plan.resize_short)
    log.info("exported %s", model_dir.saved_model)
