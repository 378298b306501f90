"""The training loop one worker runs: the same code for every backend and for ``--workers 1``.

Why a custom loop over ``GradientTape`` rather than ``model.fit``: we need exact control of the things
distributed ImageNet training gets wrong: every worker runs the same number of steps per epoch (from the
shard plan), evaluation counts every validation image exactly once (weighted sums, not per-worker
means), a run resumes mid-epoch from the newest checkpoint, faults can be injected at a given step,
and progress reaches the Spark driver while training runs. Several steps run inside one ``tf.function``
(``steps_per_loop``) so the Python overhead per step stays negligible; ``bench/train_step.py`` measures
it against ``model.fit``.

The loop sees a :class:`WorkerContext` and a backend, never environment variables.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

from imagenet_spark import jsonio
from imagenet_spark.config import VAL_METRICS, TrainConfig
from imagenet_spark.data import fs
from imagenet_spark.data.augment import AugmentSpec
from imagenet_spark.data.sharding import ShardPlan
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.train.ema import WeightAverage, averaged_weights, make_swapper
from imagenet_spark.train.schedules import keras_schedule, make_schedule
from imagenet_spark.train.steps import make_step_functions

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS = "metrics.json"
TENSORBOARD = "tensorboard"
SAVED_MODEL = "saved_model"
LABELS = "labels.txt"
BEST = "best"  # checkpoints/best/: the best evaluated epoch's weights (export=best)
INJECTED_CRASH_EXIT = 13

Reporter = Callable[[dict[str, Any]], None]


class TrainingError(ImagenetSparkError, RuntimeError):
    """Training cannot continue as configured; the message names the setting and the fix."""


class DivergedError(TrainingError):
    """The loss or the gradients became NaN/inf (or the weights to export are not finite): the run stopped,
    nothing was exported. Never retried: a relaunch resumes from the same checkpoint with the same settings and
    diverges again. Crosses the Spark boundary as the structured failure ``{"kind": "diverged", ...}`` in the
    worker's result (:meth:`to_failure`, :func:`failure_error`), never by its message text."""

    kind = "diverged"

    def __init__(self, message: str, *, step: int, learning_rate: float | None) -> None:
        super().__init__(message)
        self.step, self.learning_rate = step, learning_rate

    def to_failure(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": str(self), "step": self.step, "learning_rate": self.learning_rate}


# Failure kinds a worker reports in its result instead of raising (so they survive the Spark boundary typed).
FAILURE_KINDS: dict[str, type[DivergedError]] = {DivergedError.kind: DivergedError}


def failure_error(failure: dict[str, Any]) -> TrainingError:
    """The typed error of a worker's structured failure (the inverse of ``to_failure``)."""
    cls = FAILURE_KINDS.get(str(failure.get("kind")))
    if cls is None:
        return TrainingError(f"training failed ({failure.get('kind')}): {failure.get('message', '')}")
    return cls(str(failure.get("message", "")), step=int(failure.get("step") or 0),
               learning_rate=failure.get("learning_rate"))


@dataclass(frozen=True)
class RunPlan:
    """Everything the driver resolved for the workers: plain values, picklable, JSON-able."""

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

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunPlan":
        val = d.get("validation")
        return cls(
            num_classes=d["num_classes"], image_size=d["image_size"], eval_resize=d["eval_resize"],
            mean=tuple(d["mean"]), std=tuple(d["std"]),  # type: ignore[arg-type]
            train=_shard_plan(d["train"]),
            validation=_shard_plan(val) if val else None,
            steps_per_epoch=d["steps_per_epoch"], total_steps=d["total_steps"], resize_short=d.get("resize_short"),
            augment=AugmentSpec.from_dict(d["augment"]) if d.get("augment") else None,
        )


def _shard_plan(d: dict[str, Any]) -> ShardPlan:
    """A ShardPlan from its JSON form (lists back to tuples)."""
    return ShardPlan(**{**d, "rows_per_worker": tuple(d["rows_per_worker"]),
                        "row_groups_per_worker": tuple(d["row_groups_per_worker"])})


def read_metrics(model_dir: str) -> list[dict[str, Any]]:
    uri = fs.join(model_dir, METRICS)
    return json.loads(fs.read_text(uri)) if fs.exists(uri) else []


def _steps_per_loop(cfg: TrainConfig, steps_per_epoch: int) -> int:
    return max(1, min(50, steps_per_epoch))


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


def _divergence_fix(cfg: TrainConfig) -> str:
    return (f"Fix: lower base_lr (now {cfg.base_lr:g}; e.g. --set base_lr={cfg.base_lr / 10:g}) or whatever raised "
            f"the rate (step_factor, schedule), lengthen warmup_epochs (now {cfg.warmup_epochs:g}), and check the "
            "data (labels, broken images); then rerun with --overwrite: the checkpoints hold these settings and "
            "a resumed run would diverge again.")


def _check_finite_training(cfg: TrainConfig, backend: Any, sums: dict[str, Any], running_loss: float, *,
                           global_step: int, steps: int, epoch: int, lr: float) -> None:
    """Raise DivergedError when a step of the last ``steps`` had a non-finite loss or gradient norm.

    No extra host sync per step: it runs where the loop already reads the running loss (after the first
    step, then at most ``divergence_check_steps`` apart, else every ``_steps_per_loop`` steps), from sums that
    are reduced across workers, so every rank decides alike."""
    bad_steps = backend.sum_across_workers(float(sums["nonfinite"].result()))
    if math.isfinite(running_loss) and not bad_steps:
        return
    what = "the loss" if not math.isfinite(running_loss) else "the gradient norm"
    raise DivergedError(
        f"training diverged: {what} is not finite (epoch {epoch} running loss {running_loss}) at global step "
        f"{global_step}, first bad step between {global_step - steps + 1} and {global_step} (checked every "
        f"{steps} step(s)); learning rate {lr:.4g} there (peak {cfg.learning_rate:.4g} = base_lr {cfg.base_lr:g} x "
        f"{cfg.global_batch_size}/256). Nothing was exported and this state was not checkpointed. "
        + _divergence_fix(cfg), step=global_step, learning_rate=lr)


def _check_finite_weights(cfg: TrainConfig, weights: list[Any], *, what: str, step: int, lr: float | None) -> None:
    """Refuse to checkpoint or export weights holding NaN/inf (a model that predicts ``nan``)."""
    import numpy as np

    bad = sum(1 for w in weights if not np.all(np.isfinite(w)))
    if bad:
        raise DivergedError(f"training diverged: {bad} of {len(weights)} weight tensors hold NaN/inf at global step "
                            f"{step}; {what} refused (learning rate {lr if lr is None else f'{lr:.4g}'}). "
                            + _divergence_fix(cfg), step=step, learning_rate=lr)


def _train(cfg: TrainConfig, ctx: WorkerContext, plan: RunPlan, *, report: Reporter | None = None) -> dict[str, Any]:
    """The loop behind :func:`train` (which turns a divergence into a structured failure)."""
    from imagenet_spark.distribute.backends import make_backend
    from imagenet_spark.distribute.threads import ThreadSizing, configure as configure_threads

    log.info("launch timing: rank %d worker started at %.3f", ctx.rank, time.time())  # read by bench/launch.py
    log.info("%s", ThreadSizing(ctx.cpus, ctx.cpus_source).describe(ctx.rank, ctx.task_cpus))  # type: ignore[arg-type]
    if not configure_threads(ctx.cpus):  # before TensorFlow's runtime starts (the backend starts it)
        log.warning("rank %d: TensorFlow had already started: its thread pools keep their default size", ctx.rank)
    backend = make_backend(cfg.backend, ctx,  # before any other TensorFlow op
                           horovod_fp16_allreduce=cfg.horovod_fp16_allreduce)
    import tensorflow as tf

    from imagenet_spark.data.reader import eval_dataset, train_dataset
    from imagenet_spark.models import build

    log.info("launch timing: rank %d backend ready at %.3f", ctx.rank, time.time())

    tf.keras.utils.set_random_seed(cfg.seed)
    per_worker = cfg.per_worker_batch
    if per_worker % backend.local_replicas:
        raise TrainingError(f"global_batch_size={cfg.global_batch_size}: the per-worker batch {per_worker} does not "
                            f"split over the {backend.local_replicas} devices of each worker. Fix: make it a multiple "
                            f"of {cfg.workers * backend.local_replicas}.")
    schedule = make_schedule(peak_lr=cfg.learning_rate, steps_per_epoch=plan.steps_per_epoch, epochs=cfg.epochs,
                             warmup_epochs=cfg.warmup_epochs, warmup_max_fraction=cfg.warmup_max_fraction,
                             kind=cfg.schedule, step_epochs=cfg.step_epochs,
                             step_factor=cfg.step_factor)
    with backend.scope():
        model = build(cfg.model, num_classes=plan.num_classes, image_size=plan.image_size, batch_norm=cfg.batch_norm,
                      dropout=cfg.dropout, bn_momentum=cfg.bn_momentum, dtype_policy=cfg.precision)
        optimizer: Any = tf.keras.optimizers.SGD(learning_rate=keras_schedule(schedule), momentum=cfg.momentum,
                                                 nesterov=cfg.nesterov)
        if cfg.precision == "mixed_float16":
            optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
        sums = {name: tf.keras.metrics.Sum(name=name) for name in
                ("loss", "top1", "top5", "count", "val_loss", "val_top1", "val_top5", "val_count", "nonfinite")}
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch",
                                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch",
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # The best evaluated epoch so far (score: the metric, negated when smaller is better), checkpointed with
        # the run so a resumed run keeps comparing against it.
        best_score = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best_score",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    log.info("launch timing: rank %d model built at %.3f", ctx.rank, time.time())
    average = WeightAverage(model, decay=cfg.ema_decay, warmup=cfg.ema_warmup,
                            strategy=backend.strategy) if cfg.ema_decay else None
    train_steps, eval_steps = make_step_functions(cfg, backend, model, optimizer, sums, num_classes=plan.num_classes,
                                                  average=average)
    # Evaluation, the best epoch's checkpoint and the export see the averaged weights when EMA is on.
    swap = make_swapper(backend, average) if average else None
    with_average = (lambda: averaged_weights(swap)) if swap else contextlib.nullcontext
    eval_weights = "ema" if average else "raw"

    # --- checkpoints and resume
    ckpt_dir = fs.join(cfg.model_dir, CHECKPOINTS)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, step_in_epoch=step_var,
                                     best_score=best_score, best_epoch=best_epoch,
                                     **({"ema": average.trackable} if average else {}))
    manager = tf.train.CheckpointManager(checkpoint, _local_or_uri(ckpt_dir), max_to_keep=cfg.keep_checkpoints)
    best_checkpoint = tf.train.Checkpoint(model=model)  # weights only: what the export needs
    best_manager = tf.train.CheckpointManager(best_checkpoint, _local_or_uri(fs.join(ckpt_dir, BEST)), max_to_keep=1)
    larger_is_better = VAL_METRICS[cfg.best_metric]
    latest = tf.train.latest_checkpoint(_local_or_uri(ckpt_dir))
    if latest:
        checkpoint.restore(latest).expect_partial()
        log.info("rank %d: resumed from %s (epoch %d, step %d)", ctx.rank, latest, int(epoch_var.numpy()),
                 int(step_var.numpy()))

    def save(mgr: Any, ckpt: Any, number: int) -> str | None:
        if ctx.is_chief:
            return str(mgr.save(checkpoint_number=number))
        if backend.save_on_all_ranks:  # every worker must take part (collectives); only the chief's copy is kept
            tmp = tempfile.mkdtemp(prefix=f"ckpt-rank{ctx.rank}-")
            ckpt.write(os.path.join(tmp, "ckpt"))
            shutil.rmtree(tmp, ignore_errors=True)
        return None

    def save_checkpoint(epoch: int, step_in_epoch: int) -> None:
        number = epoch * plan.steps_per_epoch + step_in_epoch
        # Every rank reads the weights (a collective under MWMS), so every rank refuses alike.
        _check_finite_weights(cfg, model.get_weights() + (average.values() if average else []),
                              what="the checkpoint", step=number, lr=schedule(max(0, number - 1)))
        epoch_var.assign(epoch)
        step_var.assign(step_in_epoch)
        path = save(manager, checkpoint, number)
        if path:
            log.info("checkpoint %s (epoch %d, step %d)", path, epoch, step_in_epoch)

    def keep_if_best(record: dict[str, Any]) -> None:
        """Every rank decides alike (the metric is already reduced across workers), so the save stays collective."""
        value = record.get(cfg.best_metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        score = value if larger_is_better else -value
        if score > float(best_score.numpy()):
            best_score.assign(score)
            best_epoch.assign(record["epoch"])
            save(best_manager, best_checkpoint, record["epoch"])
            if ctx.is_chief:
                log.info("best so far: epoch %d, %s=%.4f (checkpoints/%s)", record["epoch"], cfg.best_metric, value,
                         BEST)

    start_epoch, start_step = int(epoch_var.numpy()), int(step_var.numpy())
    total_steps = plan.total_steps
    global_step = start_epoch * plan.steps_per_epoch + start_step
    if global_step >= total_steps:
        log.info("rank %d: checkpoint already at the planned %d steps; nothing to train", ctx.rank, total_steps)
    history = read_metrics(cfg.model_dir)[:start_epoch] if ctx.is_chief else []

    # A relaunch (a retry, or the next segment of a paused run) reshuffles instead of replaying the first batches.
    seed = cfg.seed + 7919 * ctx.attempt + 104729 * global_step
    train_ds = backend.distribute(lambda: train_dataset(
        data=cfg.data, cfg=cfg, ctx=ctx, plan=plan.train, num_classes=plan.num_classes,
        image_size=plan.image_size, mean=plan.mean, std=plan.std, seed=seed, augment=plan.augment))
    iterator = iter(train_ds)
    log.info("launch timing: rank %d input ready at %.3f", ctx.rank, time.time())
    val_ds = None
    if plan.validation is not None:
        val_ds = backend.distribute(lambda: eval_dataset(
            data=cfg.data, ctx=ctx, plan=plan.validation, num_classes=plan.num_classes, image_size=plan.image_size,
            eval_resize=plan.eval_resize, mean=plan.mean, std=plan.std))
    writer = tf.summary.create_file_writer(_local_or_uri(fs.join(cfg.model_dir, TENSORBOARD))) if ctx.is_chief else None
    steps_per_loop = _steps_per_loop(cfg, plan.steps_per_epoch)
    epochs_total = math.ceil(total_steps / plan.steps_per_epoch)
    end_epoch = min(epochs_total, cfg.stop_at_epoch) if cfg.stop_at_epoch else epochs_total
    run_started = time.monotonic()
    last_report = 0.0
    first = True
    last: dict[str, Any] = history[-1] if history else {}

    for epoch in range(start_epoch, end_epoch):
        epoch_steps = min(plan.steps_per_epoch, total_steps - epoch * plan.steps_per_epoch)
        step = start_step if epoch == start_epoch else 0
        for name in ("loss", "top1", "top5", "count"):
            sums[name].reset_state()
        epoch_started = time.monotonic()
        steps_run = 0
        while step < epoch_steps:
            n = 1 if first else min(steps_per_loop, epoch_steps - step)  # report the first step at once
            if cfg.checkpoint_every_steps:
                n = min(n, cfg.checkpoint_every_steps - global_step % cfg.checkpoint_every_steps)
            if cfg.divergence_check_steps:  # the non-finite check runs after every call: bound the gap
                n = min(n, cfg.divergence_check_steps - global_step % cfg.divergence_check_steps)
            if cfg.fail_at_step is not None and ctx.attempt == 0 and global_step < cfg.fail_at_step:
                n = min(n, cfg.fail_at_step - global_step)
            train_steps(iterator, tf.constant(n))
            running_loss = _ratio(backend, sums["loss"], sums["count"])  # a collective: every rank reads it
            if first:
                backend.after_first_step(average.broadcast_group(model) if average else model, optimizer)
                log.info("launch timing: rank %d first step done at %.3f", ctx.rank, time.time())
                first = False
            step += n
            steps_run += n
            global_step += n
            _check_finite_training(cfg, backend, sums, running_loss, global_step=global_step, steps=n,
                                   epoch=epoch + 1, lr=schedule(global_step - 1))
            if cfg.fail_at_step is not None and ctx.attempt == 0 and global_step == cfg.fail_at_step \
                    and ctx.rank == cfg.fail_rank:
                log.error("fail_at_step=%d: rank %d exits on purpose (fault injection)", global_step, ctx.rank)
                os._exit(INJECTED_CRASH_EXIT)  # a crash, not an exception: nothing is flushed or saved
            if cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0 and step < epoch_steps:
                save_checkpoint(epoch, step)
            now = time.monotonic()
            if report and ctx.is_chief and now - last_report >= cfg.progress_every_s:
                last_report = now
                elapsed = now - epoch_started
                rate = steps_run * cfg.global_batch_size / max(elapsed, 1e-9)
                done = global_step / total_steps
                report({"event": "progress", "epoch": epoch + 1, "epochs": epochs_total, "step": step,
                        "steps": epoch_steps, "global_step": global_step, "total_steps": total_steps,
                        "loss": running_loss, "images_per_s": round(rate, 1),
                        "eta_s": round((now - run_started) / max(done, 1e-9) * (1 - done), 1) if done else None})
        train_time = time.monotonic() - epoch_started
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "global_step": global_step,
            "loss": _ratio(backend, sums["loss"], sums["count"]),
            "top1": _ratio(backend, sums["top1"], sums["count"]),
            "top5": _ratio(backend, sums["top5"], sums["count"]),
            "images_per_s": round(steps_run * cfg.global_batch_size / max(train_time, 1e-9), 1),
            "learning_rate": round(schedule(global_step - 1), 6),
            "train_time_s": round(train_time, 2),
            "attempt": ctx.attempt,
        }
        is_last = epoch == epochs_total - 1
        evaluate = val_ds is not None and ((epoch + 1) % cfg.eval_every_epochs == 0 or is_last)
        with with_average() if evaluate else contextlib.nullcontext():  # checkpoints/best/ keeps what was evaluated
            if evaluate:
                for name in ("val_loss", "val_top1", "val_top5", "val_count"):
                    sums[name].reset_state()
                eval_steps(iter(val_ds), tf.constant(plan.validation.steps_per_epoch))  # type: ignore[union-attr]
                record.update({
                    "val_loss": _ratio(backend, sums["val_loss"], sums["val_count"]),
                    "val_top1": _ratio(backend, sums["val_top1"], sums["val_count"]),
                    "val_top5": _ratio(backend, sums["val_top5"], sums["val_count"]),
                    "val_images": int(round(backend.sum_across_workers(float(sums["val_count"].result())))),
                    "eval_weights": eval_weights,
                })
            record["wall_time_s"] = round(time.monotonic() - epoch_started, 2)
            if cfg.export == "best":
                keep_if_best(record)
        save_checkpoint(epoch + 1, 0)
        last = record
        if ctx.is_chief:
            history.append(record)
            fs.write_text_atomic(fs.join(cfg.model_dir, METRICS), jsonio.dumps(history, indent=1))
            assert writer is not None
            with writer.as_default(step=global_step):
                for key, value in record.items():
                    if isinstance(value, float):
                        tf.summary.scalar(key, value)
            writer.flush()
            log.info("epoch %d/%d: %s", epoch + 1, epochs_total, json.dumps(record))
            if report:
                report({"event": "epoch", **record, "epochs": epochs_total})
        start_step = 0

    best = {"epoch": int(best_epoch.numpy()), "metric": cfg.best_metric,
            "value": float(best_score.numpy()) * (1 if larger_is_better else -1)} if int(best_epoch.numpy()) else None
    done = {"metrics": last, "epochs": len(history) if ctx.is_chief else None, "global_step": global_step,
            "best": best}
    if end_epoch < epochs_total:  # paused at stop_at_epoch: resumable, nothing exported (same on every rank)
        log.info("rank %d: stopped after epoch %d of %d (stop_at_epoch)", ctx.rank, end_epoch, epochs_total)
        return {**done, "stopped_at_epoch": end_epoch}
    # Reading the weights is a collective under MWMS (batch-norm statistics are sync-on-read): every rank
    # reads them, then only the chief exports, from a strategy-free copy.
    with with_average():  # the averaged weights when EMA is on (swapped back after: the checkpoint keeps both)
        weights = model.get_weights()
    consistency = backend.replica_consistency(weights)  # a collective under Horovod: every rank calls it
    # A resumed run whose newest checkpoint is already broken reaches here without training a step.
    _check_finite_weights(cfg, weights, what="the export", step=global_step, lr=None)
    if ctx.is_chief:
        best_path = tf.train.latest_checkpoint(_local_or_uri(fs.join(ckpt_dir, BEST))) if cfg.export == "best" else None
        if cfg.export == "best" and not best_path:
            log.warning("export=best but no evaluated epoch was kept (no validation metric %s): exporting the last "
                        "weights", cfg.best_metric)
        _export(cfg, plan, weights, best_checkpoint=best_path)
    return {**done, "exported": "best" if cfg.export == "best" and best else "last", "exported_weights": eval_weights,
            **consistency}


def _ratio(backend: Any, total: Any, count: Any) -> float:
    """Global ratio of two summed metrics (exact across workers: sums, not means of means)."""
    c = backend.sum_across_workers(float(count.result()))
    t = backend.sum_across_workers(float(total.result()))
    return round(t / c, 6) if c else float("nan")


def _local_or_uri(uri: str) -> str:
    """TensorFlow's file APIs take local paths or their own URIs (hdfs://, gs://); strip our ``file:``."""
    return fs.normalize(uri) if "://" not in fs.normalize(uri) else uri


def _export(cfg: TrainConfig, plan: RunPlan, weights: list[Any], *, best_checkpoint: str | None = None) -> None:
    """Export the serving SavedModel from a strategy-free copy of the trained model (no collectives needed):
    the final ``weights``, or the weights kept in ``best_checkpoint`` (restored into the plain copy)."""
    import tensorflow as tf

    from imagenet_spark.models import build
    from imagenet_spark.serving.export import export_saved_model

    with tf.distribute.get_strategy().scope():
        plain = build(cfg.model, num_classes=plan.num_classes, image_size=plan.image_size, batch_norm=cfg.batch_norm,
                      dropout=cfg.dropout, bn_momentum=cfg.bn_momentum, dtype_policy=cfg.precision)
    if best_checkpoint:
        tf.train.Checkpoint(model=plain).restore(best_checkpoint).expect_partial()
        log.info("exporting the best epoch's weights from %s", best_checkpoint)
        _check_finite_weights(cfg, plain.get_weights(), what=f"the export of {best_checkpoint}", step=0, lr=None)
    else:
        plain.set_weights(weights)
    labels_uri = fs.join(cfg.model_dir, LABELS)
    labels = fs.read_text(labels_uri) if fs.exists(labels_uri) else None
    export_saved_model(plain, _local_or_uri(fs.join(cfg.model_dir, SAVED_MODEL)), model_name=cfg.model,
                       image_size=plan.image_size, eval_resize=plan.eval_resize, mean=plan.mean, std=plan.std,
                       labels_txt=labels, resize_short=plan.resize_short)
    log.info("exported %s", fs.join(cfg.model_dir, SAVED_MODEL))
