"""A dataset written by ``jobs/partition.py`` → one worker's validation ``tf.data`` stream, every image once.

Why it does not use petastorm: evaluation must count every validation image exactly once, which an end-of-epoch
signal that can fire early (petastorm 0.13.1's thread pool can end a ``num_epochs=1`` read before its last row)
cannot promise. Worker ``k`` of ``N`` reads row groups ``k::N`` of the sorted split with pyarrow, one row group at
a time (bounded memory, nothing unpickled), then pads with zero-weight rows so that every worker yields the same
number of batches (collective ops hang when one worker stops early). Weighted metrics then count each image once
across workers. The row-group split holds whatever the training ``shard_by``. TensorFlow is imported inside the
functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from imagenet_spark.data.augment import crop_eval
from imagenet_spark.data.metadata import RowGroup, check_plan, row_groups, split_uri, worker_row_groups
from imagenet_spark.data.schema import DatasetError
from imagenet_spark.data.sharding import ShardPlan
from imagenet_spark.data.sources import iter_row_groups
from imagenet_spark.distribute.threads import data_options

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tensorflow as tf

    from imagenet_spark.distribute.context import WorkerContext


def _eval_groups(data: str, ctx: WorkerContext, plan: ShardPlan) -> tuple[str, list[RowGroup]]:
    """This worker's validation row groups (``k::N``), checked against a plan that covers them all."""
    check_plan(plan, ctx)
    uri = split_uri(data, plan.split)
    groups = worker_row_groups(row_groups(data, plan.split), rank=ctx.rank, workers=ctx.size)
    rows = sum(g.rows for g in groups)
    if rows != plan.rows_per_worker[ctx.rank]:
        raise DatasetError(f"{uri}: worker {ctx.rank} evaluates {rows} images but the plan says "
                           f"{plan.rows_per_worker[ctx.rank]}. Fix: build the evaluation plan with "
                           "load_plan(..., shard_by='row_group', drop_remainder=False) on the same dataset.")
    if rows > plan.steps_per_epoch * plan.per_worker_batch:
        raise DatasetError(f"{uri}: worker {ctx.rank} has {rows} images but the plan covers only "
                           f"{plan.steps_per_epoch} batches of {plan.per_worker_batch}. Fix: build the evaluation "
                           "plan with load_plan(..., drop_remainder=False).")
    return uri, groups


def eval_filenames(*, data: str, ctx: WorkerContext, plan: ShardPlan) -> list[str]:
    """The filenames worker ``ctx.rank`` evaluates, in the order ``eval_dataset`` yields them (no padding)."""
    uri, groups = _eval_groups(data, ctx, plan)
    names: list[str] = []
    for table in iter_row_groups(uri, groups, ["filename"]):
        names.extend(table.column("filename").to_pylist())
    return names


def eval_dataset(*, data: str, ctx: WorkerContext, plan: ShardPlan, num_classes: int, image_size: int,
                 eval_resize: int) -> tf.data.Dataset:
    """Worker ``ctx.rank``'s validation shard: exactly ``plan.steps_per_epoch`` batches of
    ``(images uint8 [b, S, S, 3], one-hot labels float32 [b, num_classes], sample_weight float32 [b])``; images
    not normalised, as the training stream's (the evaluation step normalises them).

    ``plan`` must come from ``load_plan(data, "validation", workers=ctx.size, ..., drop_remainder=False)``
    (whatever the training ``shard_by``: evaluation sharding is independent of training's). Worker ``k``
    yields its rows (row groups ``k::N`` of the sorted split, read with pyarrow one row group at a time), then
    zero-weight padding rows (copies of its last image, label 0) up to ``steps * b``: every worker runs the
    same number of steps and padded rows do not count in weighted metrics, so summed over workers each
    validation image counts exactly once. The dataset can be iterated any number of times (once per
    evaluation); each iteration re-reads the same rows in the same order. Its cardinality is set, so Keras
    needs no ``steps``.
    """
    import tensorflow as tf

    uri, groups = _eval_groups(data, ctx, plan)
    batch = plan.per_worker_batch
    total = plan.steps_per_epoch * batch

    def rows() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        count = 0
        last: bytes | None = None
        for table in iter_row_groups(uri, groups, ["image", "label"]):
            images = table.column("image").combine_chunks().to_numpy(zero_copy_only=False)
            labels = table.column("label").to_numpy().astype(np.int32)
            count += len(images)
            if len(images):
                last = images[-1]
            yield images, labels, np.ones(len(images), np.float32)
        pad = total - count
        if pad > 0:
            if last is None:  # _eval_groups guarantees rows; keep the invariant explicit
                raise DatasetError(f"{uri}: worker {ctx.rank} read no images to pad with.")
            yield (np.array([last] * pad, dtype=object), np.zeros(pad, np.int32), np.zeros(pad, np.float32))

    def transform(image: Any, label: Any, weight: Any) -> tuple[Any, Any, Any]:
        pixels = crop_eval(image, image_size=image_size, eval_resize=eval_resize)
        return pixels, tf.one_hot(label, num_classes, dtype=tf.float32), weight

    ds = tf.data.Dataset.from_generator(rows, output_signature=(
        tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.float32)))
    ds = ds.unbatch()
    # No autograph (as the training map): the eval transform has no Python branch on a tensor.
    ds = ds.map(tf.autograph.experimental.do_not_convert(transform), num_parallel_calls=ctx.cpus or tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(batch, drop_remainder=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(plan.steps_per_epoch))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(data_options(ctx.cpus))
