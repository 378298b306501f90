"""A dataset written by ``jobs/partition.py`` → one worker's infinite training stream (``tf.data``). No pyspark.

The package's input pipeline, by concern: what a split holds and how workers share it (``data/metadata.py``,
:func:`~imagenet_spark.data.metadata.load_plan`), where rows come from (``data/sources.py``: petastorm or
pyarrow), this module's training stream, and the evaluation stream (``data/eval_stream.py``). Why the training
stream is shaped this way (each point is a failure seen or a contract the launcher relies on):

* **Equal steps, infinite stream.** Collective ops hang when one worker runs out of batches before the others,
  and petastorm 0.13.1's thread pool can end a ``num_epochs=1`` read early (even at 0 rows) when its consumer
  thread is preempted between its "all workers done" and "ventilator completed" checks. So the training stream
  reads with ``num_epochs=None`` and never ends; the trainer takes exactly ``plan.steps_per_epoch`` batches per
  epoch (``load_plan`` computes it from the row-group sizes in ``_common_metadata``, the same for every worker).
  Rows a larger shard has beyond that are seen in later epochs, never dropped for good.
* **Class-mixed shards by default.** Petastorm gives row group ``i`` (sorted file order) to worker ``i mod N``;
  the partition job writes files sorted by synset in small row groups, so each shard strides across all
  classes. ``shard_by="synset"`` (whole classes per worker, round-robin over sorted synsets) is the alternative.
* **Who reads.** ``TrainConfig.train_reader="parquet"`` reads with pyarrow by the Parquet schema alone (nothing
  unpickled: ``data/sources.py`` says why that matters); ``"auto"`` (the default) is petastorm where it can be
  imported (the legacy stack) and pyarrow elsewhere: petastorm 0.13.1 does not import with the current stack's
  pyarrow. TensorFlow and petastorm are imported inside functions.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from imagenet_spark.data.augment import AugmentSpec, augment_spec, augment_train
from imagenet_spark.data.metadata import RowGroup, check_plan, row_groups, split_uri, worker_row_groups, worker_synsets
from imagenet_spark.data.mix import MixSettings, mix_batches
from imagenet_spark.data.schema import PARTITION_COLUMN, DatasetError
from imagenet_spark.data.sharding import ShardPlan
from imagenet_spark.data.sources import ParquetRowGroups, close_reader, petastorm_reader, row_group_source
from imagenet_spark.distribute.stack import resolve_train_reader
from imagenet_spark.distribute.threads import data_options
from imagenet_spark.models import eval_resize_for

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tensorflow as tf

    from imagenet_spark.distribute.context import WorkerContext
    from imagenet_spark.train_config import TrainConfig

log = logging.getLogger(__name__)

# Salts that keep the seeds of different random streams of one worker independent of each other.
_SALT_PETASTORM = 1
_SALT_SHUFFLE = 2
_SALT_AUGMENT = 3
_SALT_MIX = 4  # mixup/cutmix draws (data/mix.py)


def _mix_seed(seed: int, rank: int, salt: int) -> int:
    """A positive 31-bit seed from (seed, rank, salt): workers and streams get independent but reproducible
    randomness. Never 0: petastorm treats seed 0 as "unseeded" and would shuffle non-reproducibly."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank), int(salt)]).generate_state(1)[0]
    return int(state % (2**31 - 2)) + 1



def shuffle_buffer_rows(setting: int, shard_rows: int) -> int:
    """The shuffle buffer a worker uses: ``input.shuffle_buffer``, at most the rows of its shard.

    Why the cap: the reader repeats the shard forever, so a buffer larger than the shard holds several copies of
    every image. It then shuffles no better, only blurs epochs (an image can come twice in one batch while
    another waits an epoch), and the first batch waits for the whole buffer to fill: the default 4,096 rows are
    51 passes over an 80-image shard, 0.5-0.9 s of a small run's launch (issue #13). ImageNet's shards are far
    larger than the default, so real runs keep it.
    """
    return max(1, min(setting, shard_rows))


@dataclass
class TrainInput:
    """The training stream and the petastorm reader feeding it.

    Use as a context manager (``with open_train_dataset(...) as inp: model.fit(inp.dataset, ...)``) to stop the
    reader's threads deterministically. Without ``close()``, the reader is stopped when ``dataset`` is garbage
    collected or when the interpreter exits (its threads are daemons, and ``weakref.finalize`` stops them first
    so no read is torn down half-way at exit).
    """

    dataset: Any  # tf.data.Dataset
    reader: Any  # petastorm.reader.Reader, or ParquetRowGroups (train_reader "parquet", or "auto" without petastorm)
    plan: ShardPlan
    _finalizer: Callable[[], Any] = field(repr=False, default=lambda: None)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> TrainInput:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _worker_shard(data: str, cfg: TrainConfig, ctx: WorkerContext,
                  plan: ShardPlan) -> tuple[list[RowGroup], dict[str, Any], str]:
    """This worker's training row groups, the same shard as petastorm arguments, and a description for the log;
    checked against the plan (a mismatch would give workers unequal epochs)."""
    groups = row_groups(data, plan.split)
    shard: dict[str, Any]
    if cfg.input.shard_by == "synset":
        mine = worker_synsets(data, plan.split, rank=ctx.rank, workers=ctx.size)
        wanted = set(mine)
        shard = {"filters": [(PARTITION_COLUMN, "in", list(mine))]}
        shard_desc = f"{len(mine)} synsets ({mine[0]}..{mine[-1]})"
        my_groups = [g for g in groups if g.synset in wanted]
    else:
        my_groups = worker_row_groups(groups, rank=ctx.rank, workers=ctx.size)
        shard = {"cur_shard": ctx.rank, "shard_count": ctx.size}
        shard_desc = f"row groups {ctx.rank}::{ctx.size}"
    my_rows = sum(g.rows for g in my_groups)
    if my_rows != plan.rows_per_worker[ctx.rank]:
        raise DatasetError(
            f"{split_uri(data, plan.split)}: worker {ctx.rank}'s shard ({shard_desc}) holds {my_rows} images but the "
            f"plan says {plan.rows_per_worker[ctx.rank]}. Fix: build the plan with load_plan(..., "
            f"shard_by={cfg.input.shard_by!r}) on the same dataset."
        )
    return my_groups, shard, shard_desc


def open_train_dataset(*, data: str, cfg: TrainConfig, ctx: WorkerContext, plan: ShardPlan, num_classes: int,
                       image_size: int, seed: int, augment: AugmentSpec | None = None) -> TrainInput:
    """Worker ``ctx.rank``'s infinite training stream, with its reader (see :class:`TrainInput`).

    Elements: ``(images uint8 [b, S, S, 3], labels one-hot float32 [b, num_classes])``, ``b =
    plan.per_worker_batch``, full batches only; with mixup/cutmix on, images are float32 in the same 0..255
    units. Not normalised: the training step does that on the device (``train/steps.py``,
    ``augment.normalize``), so the CPUs neither cast nor normalise and the pipeline moves a quarter of the bytes.
    The stream never ends: take ``plan.steps_per_epoch`` batches per epoch (``model.fit(...,
    steps_per_epoch=plan.steps_per_epoch)``). All iterators of the dataset share one reader: a new iterator
    continues the stream where the last one left it, and two iterators alive at once would split its rows
    between them (build a second stream instead).

    Reproducible for a given ``seed``: petastorm's row-group order, the shuffle buffer and every image's crop
    and flip (stateless ops keyed by ``(seed, rank)`` and the element's position in the stream) are all derived
    from it, and workers mix in their rank so their augmentations differ. Petastorm shuffles the row-group
    order once per reader (later epochs repeat it); the shuffle buffer mixes rows across row groups. Pass a
    different seed on a restart (e.g. ``cfg.input.seed + attempt``) to avoid replaying the first epoch's order.

    ``augment``: the train transform the driver resolved (``RunPlan.augment``); None resolves it here from
    ``cfg`` with the eval short side :func:`~imagenet_spark.models.eval_resize_for` gives (for callers without a run
    plan).
    """
    import tensorflow as tf

    check_plan(plan, ctx)
    if augment is None:
        augment = augment_spec(cfg, eval_resize=eval_resize_for(image_size))
    uri = split_uri(data, plan.split)
    my_groups, shard, shard_desc = _worker_shard(data, cfg, ctx, plan)
    my_rows = sum(g.rows for g in my_groups)
    batch = plan.per_worker_batch
    reader: Any
    if resolve_train_reader(cfg.input.train_reader) == "parquet":
        reader = ParquetRowGroups(uri, my_groups, seed=_mix_seed(seed, ctx.rank, _SALT_PETASTORM))
    else:
        reader = petastorm_reader(uri, workers_count=cfg.input.reader_workers,
                                  seed=_mix_seed(seed, ctx.rank, _SALT_PETASTORM), shard=shard)
    try:
        shuffle_seed = _mix_seed(seed, ctx.rank, _SALT_SHUFFLE)
        augment_key = tf.constant(_mix_seed(seed, ctx.rank, _SALT_AUGMENT), tf.int64)
        # ctx.cpus: the task's (distribute/threads.py)
        parallel = cfg.input.decode_threads or ctx.cpus or tf.data.AUTOTUNE

        def transform(index: Any, row: Any) -> tuple[Any, Any]:
            # Two seeds per element ([key, 2i] for the crop, [key, 2i+1] for the flip inside preprocess_train),
            # so no element's flip shares a seed with its neighbour's crop; RandAugment's are split from the first.
            element_seed = tf.stack([augment_key, index * 2])
            image = augment_train(row[0], image_size=image_size, seed=element_seed, spec=augment)
            return image, tf.one_hot(row[1], num_classes, dtype=tf.float32)

        ds = tf.data.Dataset.from_generator(row_group_source(reader), output_signature=(
            tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32)))  # one element per row group
        # Two row groups read ahead on a thread of their own: without it the map's input thread stops to run the
        # Python reader (GIL included) whenever the shuffle buffer wants rows, and the decoders wait (issue #13:
        # +10-13% images/s on 2 shared cores, same CPU per image). Same rows in the same order.
        ds = ds.prefetch(2).unbatch()
        buffer = shuffle_buffer_rows(cfg.input.shuffle_buffer, my_rows)
        if buffer > 1:
            ds = ds.shuffle(buffer, seed=shuffle_seed)
        ds = ds.enumerate()
        # No autograph: the transform's branches are tf.cond/switch_case and Python ifs on Python values, so its
        # conversion (~0.3-0.5 s of source rewriting per worker process at launch) would change nothing.
        ds = ds.map(tf.autograph.experimental.do_not_convert(transform), num_parallel_calls=parallel,
                    deterministic=True)
        ds = ds.batch(batch, drop_remainder=True)
        ds = mix_batches(ds, MixSettings.of(cfg), key=_mix_seed(seed, ctx.rank, _SALT_MIX))  # no-op when off
        ds = ds.prefetch(tf.data.AUTOTUNE).with_options(data_options(ctx.cpus))
    except BaseException:
        close_reader(reader)
        raise
    finalizer = weakref.finalize(ds, close_reader, reader)
    log.info("worker %d/%d trains on %s of %s: %d images, %d steps of %d per epoch, shuffle buffer %d%s; %s",
             ctx.rank, ctx.size, shard_desc, uri, my_rows, plan.steps_per_epoch, batch, buffer,
             f" (input.shuffle_buffer={cfg.input.shuffle_buffer}, capped at the shard)"
             if buffer < cfg.input.shuffle_buffer else "", augment.describe())
    return TrainInput(dataset=ds, reader=reader, plan=plan, _finalizer=finalizer)


def train_dataset(*, data: str, cfg: TrainConfig, ctx: WorkerContext, plan: ShardPlan, num_classes: int,
                  image_size: int, seed: int, augment: AugmentSpec | None = None) -> tf.data.Dataset:
    """The infinite training stream alone (see :func:`open_train_dataset` for elements and reproducibility).

    Lifetime: the petastorm reader lives as long as the returned dataset; it is stopped when the dataset is
    garbage collected, or at interpreter exit. Use :func:`open_train_dataset` to stop it at a point you choose.
    """
    return open_train_dataset(data=data, cfg=cfg, ctx=ctx, plan=plan, num_classes=num_classes,
                              image_size=image_size, seed=seed, augment=augment).dataset
