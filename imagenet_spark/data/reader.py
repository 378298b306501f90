"""A dataset written by ``jobs/partition.py`` → ``tf.data`` for one training worker. No pyspark on this path.

Why it is shaped this way (each point is a failure seen or a contract the launcher relies on):

* **Equal steps, infinite training stream.** Collective ops hang when one worker runs out of batches before
  the others, and petastorm 0.13.1's thread pool can end a ``num_epochs=1`` read early (even at 0 rows) when
  its consumer thread is preempted between its "all workers done" and "ventilator completed" checks. So the
  training stream reads with ``num_epochs=None`` and never ends; the trainer takes exactly
  ``plan.steps_per_epoch`` batches per epoch (``load_plan`` computes it from the row-group sizes in
  ``_common_metadata``, the same for every worker). Rows a larger shard has beyond that are seen in later
  epochs, never dropped for good.
* **Evaluation does not use petastorm at all.** It must count every validation image exactly once, which an
  end-of-epoch signal that can fire early cannot promise. Worker ``k`` of ``N`` reads row groups ``k::N`` of the
  sorted split with pyarrow, one row group at a time (bounded memory), then pads with zero-weight rows so that
  every worker yields the same number of batches. Weighted metrics then count each image once across workers.
* **Class-mixed shards by default.** Petastorm gives row group ``i`` (sorted file order) to worker ``i mod N``;
  the partition job writes files sorted by synset in small row groups, so each shard strides across all
  classes. ``shard_by="synset"`` (whole classes per worker, round-robin over sorted synsets) is the option the
  sparklyr seed used; evaluation keeps the row-group split whatever the training sharding.
* **TensorFlow and petastorm are imported inside functions:** the driver plans shards (``load_plan``) without
  loading either.

Reading the dataset with petastorm unpickles the Unischema stored in ``_common_metadata`` (petastorm's own
behaviour; its codecs reference ``pyspark.sql.types``, which Spark executors always have), so a dataset from
an untrusted source can run code in the worker. ``TrainConfig.train_reader="parquet"`` reads the training
stream with pyarrow by the Parquet schema alone (:class:`ParquetRowGroups`); planning and evaluation never
unpickle anything. ``"auto"`` (the default) is petastorm where it can be imported (the legacy stack) and
the pyarrow reader elsewhere: petastorm 0.13.1 does not import with the current stack's pyarrow.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from imagenet_spark.data import fs
from imagenet_spark.data.augment import AugmentSpec, augment_spec, augment_train, crop_eval
from imagenet_spark.data.mix import MixSettings, mix_batches
from imagenet_spark.data.schema import PARTITION_COLUMN, DatasetError, read_row_group_rows, read_row_groups_per_file
from imagenet_spark.data.sharding import ShardPlan, assign_synsets, plan_shards, plan_synset_shards
from imagenet_spark.distribute.stack import resolve_train_reader
from imagenet_spark.distribute.threads import data_options
from imagenet_spark.models import eval_resize_for

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tensorflow as tf

    from imagenet_spark.config import TrainConfig
    from imagenet_spark.distribute.context import WorkerContext

log = logging.getLogger(__name__)

SHARD_BY = ("row_group", "synset")
TRAIN_FIELDS = ("image", "label")
# Salts that keep the seeds of different random streams of one worker independent of each other.
_SALT_PETASTORM = 1
_SALT_SHUFFLE = 2
_SALT_AUGMENT = 3
_SALT_MIX = 4  # mixup/cutmix draws (data/mix.py)


# --------------------------------------------------------------------------------------------------
# Metadata: row groups in petastorm's order


@dataclass(frozen=True)
class RowGroup:
    """One row group of a split, in petastorm's order (files sorted by relative path, then index in file)."""

    relpath: str  # "synset=<wnid>/part-NNNNN.parquet", relative to the split directory
    index: int  # row group index inside the file
    rows: int

    @property
    def synset(self) -> str:
        return synset_of(self.relpath)


def synset_of(relpath: str) -> str:
    """The synset of a file from its Hive partition directory (``synset=<wnid>/part-NNNNN.parquet``)."""
    head, sep, _ = relpath.partition("/")
    key, eq, value = head.partition("=")
    if not sep or not eq or key != PARTITION_COLUMN or not value:
        raise DatasetError(f"{relpath}: not under a '{PARTITION_COLUMN}=<wnid>/' directory, so its synset is unknown. "
                           "Fix: rewrite the dataset with jobs/partition.py.")
    return value


def split_uri(data: str, split: str) -> str:
    """``DATA/split`` as a path or URI pyarrow reads (``data`` may be a local path or any ``fs`` URI)."""
    return fs.join(fs.normalize(data), split)


def petastorm_url(uri: str) -> str:
    """Petastorm wants a URL: local paths become ``file:///abs/path``; other schemes pass through."""
    normalized = fs.normalize(uri)
    return normalized if "://" in normalized else "file://" + normalized


def _check_split(data: str, split: str) -> str:
    """Fail early, naming the path, when ``data`` is not a dataset of ours (rather than deep inside a reader)."""
    uri = split_uri(data, split)
    try:
        data_is_dir = fs.is_dir(data)
    except OSError as exc:
        raise DatasetError(f"data={data!r}: cannot be read ({exc}). Fix: pass --data DIR, the --output of "
                           "jobs/partition.py, on a filesystem this worker can reach.") from None
    if not data_is_dir:
        raise DatasetError(f"data={data!r}: no such directory. Fix: pass --data DIR, the --output of "
                           "jobs/partition.py (it holds train/, validation/ and manifest.json).")
    if not fs.is_dir(uri):
        raise DatasetError(f"{uri}: missing; {data} is not a dataset written by jobs/partition.py (expected "
                           "train/, validation/ and manifest.json). Fix: run jobs/partition.py and pass its --output "
                           "as --data.")
    return uri


def row_groups(data: str, split: str) -> list[RowGroup]:
    """Every row group of a split in petastorm's order, from ``_common_metadata`` alone (no Parquet footers)."""
    uri = _check_split(data, split)
    per_file = read_row_groups_per_file(uri)
    rows = read_row_group_rows(uri)
    out: list[RowGroup] = []
    position = 0
    for relpath in sorted(per_file):
        for index in range(per_file[relpath]):
            out.append(RowGroup(relpath, index, rows[position] if position < len(rows) else -1))
            position += 1
    if position != len(rows) or any(g.rows < 0 for g in out):
        raise DatasetError(f"{uri}/_common_metadata: petastorm's row-group index ({position} row groups) and the "
                           f"row-group sizes ({len(rows)}) disagree. Fix: rewrite the dataset with jobs/partition.py.")
    if not out:
        raise DatasetError(f"{uri}: the split holds no row groups. Fix: check the partition job's manifest.json.")
    return out


def worker_row_groups(groups: Sequence[RowGroup], *, rank: int, workers: int) -> list[RowGroup]:
    """Worker ``rank``'s row groups under petastorm's rule (row group ``i`` → worker ``i mod N``), in order."""
    return list(groups[rank::workers])


def _synset_tables(groups: Sequence[RowGroup]) -> tuple[dict[str, int], dict[str, int]]:
    rows: dict[str, int] = {}
    counts: dict[str, int] = {}
    for g in groups:
        rows[g.synset] = rows.get(g.synset, 0) + g.rows
        counts[g.synset] = counts.get(g.synset, 0) + 1
    return rows, counts


def load_plan(data: str, split: str, *, workers: int, per_worker_batch: int, shard_by: str = "row_group",
              drop_remainder: bool = True) -> ShardPlan:
    """Plan how ``workers`` share ``DATA/split``, from the row-group sizes in its ``_common_metadata``.

    Cheap (one small file, no TensorFlow): the driver calls it to fail before the barrier stage starts, and
    every worker calls it again to get the same numbers. ``drop_remainder=False`` is for evaluation (steps
    cover the largest shard; ``eval_dataset`` pads the others with zero-weight rows).
    """
    from imagenet_spark.config import ConfigError

    if shard_by not in SHARD_BY:
        raise ConfigError("shard_by", shard_by, f"must be one of {', '.join(SHARD_BY)}.")
    if workers < 1:
        raise ConfigError("workers", workers, "must be at least 1.")
    if per_worker_batch < 1:
        raise ConfigError("global_batch_size", per_worker_batch * workers, "each worker needs at least one image "
                          "per step.", f"use at least {workers}.")
    groups = row_groups(data, split)
    if shard_by == "synset":
        rows, counts = _synset_tables(groups)
        return plan_synset_shards(rows, counts, workers=workers, per_worker_batch=per_worker_batch, split=split,
                                  drop_remainder=drop_remainder)
    return plan_shards([g.rows for g in groups], workers=workers, per_worker_batch=per_worker_batch, split=split,
                       drop_remainder=drop_remainder)


def worker_synsets(data: str, split: str, *, rank: int, workers: int) -> tuple[str, ...]:
    """The synsets worker ``rank`` trains on with ``shard_by=synset`` (sorted synset ``j`` → worker ``j mod N``)."""
    rows, _ = _synset_tables(row_groups(data, split))
    if len(rows) < workers:
        raise DatasetError(f"{split}: {len(rows)} synsets for {workers} workers with shard_by=synset. Fix: use at "
                           f"most {len(rows)} workers, or --set shard_by=row_group.")
    return assign_synsets(list(rows), workers=workers)[rank]


def _check_plan(plan: ShardPlan, ctx: WorkerContext) -> None:
    if plan.workers != ctx.size or not 0 <= ctx.rank < ctx.size:
        raise DatasetError(f"{plan.split}: the shard plan is for {plan.workers} workers but this is worker {ctx.rank} "
                           f"of {ctx.size}. Fix: build the plan with load_plan(..., workers={ctx.size}).")


def _mix_seed(seed: int, rank: int, salt: int) -> int:
    """A positive 31-bit seed from (seed, rank, salt): workers and streams get independent but reproducible
    randomness. Never 0: petastorm treats seed 0 as "unseeded" and would shuffle non-reproducibly."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank), int(salt)]).generate_state(1)[0]
    return int(state % (2**31 - 2)) + 1


# --------------------------------------------------------------------------------------------------
# Training: petastorm stream


class _ReaderClosed(Exception):
    """Put into petastorm's result queues on close, to wake a consumer blocked inside the reader."""


def _close_reader(reader: Any) -> None:
    """Stop and join petastorm's worker and ventilator threads (idempotent). Called on close, on garbage
    collection of the dataset, or at interpreter exit (``weakref.finalize``), whichever comes first.

    Petastorm 0.13.1's thread pool, once stopped, leaves a consumer that is already waiting for a row group
    polling forever (the items still queued for the stopped workers are never "done"): that consumer is a
    TensorFlow prefetch thread, and the iterator owning it would hang on destruction. A ``_ReaderClosed``
    in every result queue makes the pool raise it to that consumer, which ends the stream.
    """
    try:
        if not getattr(reader, "stopped", False):
            reader.stop()
        for results in getattr(getattr(reader, "_workers_pool", None), "_results_queues", ()):
            with contextlib.suppress(queue.Full):
                results.put_nowait(_ReaderClosed())
        reader.join()
    except Exception:  # closing must never raise at exit; log what went wrong instead
        log.warning("closing the petastorm reader failed", exc_info=True)


def _row_group_source(reader: Any) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
    """A generator function over the reader's row groups, as ``(images object[n], labels int32[n])``.

    What ``petastorm.tf_utils.make_petastorm_dataset`` does for a batch reader, minus two things we must not
    have: it ends the stream with an error when the reader is stopped while TensorFlow's prefetch threads are
    still pulling (the normal state at exit or after ``close()``), where this one ends it quietly; and its
    ``reset()`` path for a re-created iterator, which does not apply to an infinite stream (a new iterator
    simply continues the same stream).
    """

    def rows() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while not reader.stopped:
            try:
                group = next(reader)
            except (StopIteration, _ReaderClosed):
                return
            except RuntimeError:
                if reader.stopped:  # closed under us: end the stream, nobody is reading it any more
                    return
                raise
            yield group.image, np.asarray(group.label, np.int32)

    return rows


class _Group:
    """One row group as the training source consumes it (the two fields petastorm's batch reader would give)."""

    __slots__ = ("image", "label")

    def __init__(self, image: np.ndarray, label: np.ndarray) -> None:
        self.image = image
        self.label = label


class ParquetRowGroups:
    """An endless stream of one worker's row groups read with pyarrow: petastorm's batch reader without pickle.

    Why: ``make_batch_reader`` unpickles the Unischema in ``_common_metadata`` before reading a row. This reads
    the same shard (the ``groups`` the plan assigns) by the Parquet schema alone, checks the two columns it
    needs have the types the partition job writes, and repeats forever, each pass in a new order drawn from
    ``seed`` (reproducible; petastorm repeats its first order). It has the reader interface the stream and
    ``_close_reader`` use (``stopped``, ``stop``, ``join``, ``next``), and no threads: reading happens in
    TensorFlow's generator thread, one row group at a time, the rest of the pipeline prefetches.
    """

    def __init__(self, uri: str, groups: Sequence[RowGroup], *, seed: int, shuffle: bool = True) -> None:
        if not groups:
            raise DatasetError(f"{uri}: this worker's shard holds no row groups.")
        self._uri = uri
        self._groups = list(groups)
        self._rng = np.random.default_rng(seed)
        self._shuffle = shuffle
        self._pending: Iterator[Any] = iter(())
        self.stopped = False
        _check_parquet_schema(uri)

    def _next_pass(self) -> Iterator[Any]:
        order = self._rng.permutation(len(self._groups)) if self._shuffle else range(len(self._groups))
        return _iter_row_groups(self._uri, [self._groups[i] for i in order], list(TRAIN_FIELDS))

    def __iter__(self) -> ParquetRowGroups:
        return self

    def __next__(self) -> _Group:
        if self.stopped:
            raise StopIteration
        table = next(self._pending, None)
        if table is None:
            self._pending = self._next_pass()
            table = next(self._pending)
        return _Group(table.column("image").combine_chunks().to_numpy(zero_copy_only=False),
                      table.column("label").to_numpy().astype(np.int32))

    def stop(self) -> None:
        self.stopped = True
        close = getattr(self._pending, "close", None)
        if close is not None:
            with contextlib.suppress(ValueError):  # "generator already executing": it ends at its next step
                close()

    def join(self) -> None:
        """Nothing to wait for: no threads."""


def _check_parquet_schema(uri: str) -> None:
    """The Arrow schema in ``_common_metadata`` (read as Parquet, no pickle) has ``image`` binary, ``label`` int."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    filesystem, path = fs.resolve(fs.join(uri, "_common_metadata"))
    try:
        with filesystem.open_input_file(path) as f:
            schema = pq.read_schema(f)
    except FileNotFoundError:
        raise DatasetError(f"{uri}: no _common_metadata. Fix: pass the --output of jobs/partition.py.") from None
    wanted = {"image": pa.types.is_binary, "label": pa.types.is_integer}
    for name, is_type in wanted.items():
        index = schema.get_field_index(name)
        if index < 0 or not is_type(schema.field(index).type):
            found = schema.field(index).type if index >= 0 else "missing"
            raise DatasetError(f"{uri}: column {name!r} is {found}; the trainer needs image (binary JPEG bytes) and "
                               "label (integer). Fix: rewrite the dataset with jobs/partition.py.")


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


def _petastorm_reader(uri: str, cfg: TrainConfig, ctx: WorkerContext, seed: int, shard: dict[str, Any]) -> Any:
    """Petastorm's batch reader over this worker's shard (unpickles the dataset's Unischema: trusted data only)."""
    from petastorm import make_batch_reader

    with warnings.catch_warnings():
        # make_batch_reader warns on any dataset with a stored Unischema ("please use make_reader"): ours holds
        # only ScalarCodec fields, plain Parquet types that need no petastorm decoding, which is the case the
        # batch reader is for (it returns whole row groups: far less Python per image than make_reader).
        warnings.filterwarnings("ignore", message="Please use make_reader", category=UserWarning)
        return make_batch_reader(
            petastorm_url(uri),
            schema_fields=list(TRAIN_FIELDS),
            reader_pool_type="thread",
            workers_count=cfg.reader_workers,
            # Five row groups per reader thread: the reader outruns decoding by an order of magnitude (see
            # bench/input_pipeline.py), so a deeper queue would only hold memory (petastorm's default, 50 row
            # groups, is ~350 MB of full-size ImageNet JPEGs per worker process).
            results_queue_size=5 * cfg.reader_workers,
            num_epochs=None,
            shuffle_row_groups=True,
            seed=_mix_seed(seed, ctx.rank, _SALT_PETASTORM),
            **shard,
        )


def _worker_shard(data: str, cfg: TrainConfig, ctx: WorkerContext,
                  plan: ShardPlan) -> tuple[list[RowGroup], dict[str, Any], str]:
    """This worker's training row groups, the same shard as petastorm arguments, and a description for the log;
    checked against the plan (a mismatch would give workers unequal epochs)."""
    groups = row_groups(data, plan.split)
    shard: dict[str, Any]
    if cfg.shard_by == "synset":
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
            f"shard_by={cfg.shard_by!r}) on the same dataset."
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
    different seed on a restart (e.g. ``cfg.seed + attempt``) to avoid replaying the first epoch's order.

    ``augment``: the train transform the driver resolved (``RunPlan.augment``); None resolves it here from
    ``cfg`` with the eval short side :func:`~imagenet_spark.models.eval_resize_for` gives (for callers without a run
    plan).
    """
    import tensorflow as tf

    _check_plan(plan, ctx)
    if augment is None:
        augment = augment_spec(cfg, eval_resize=eval_resize_for(image_size))
    uri = split_uri(data, plan.split)
    my_groups, shard, shard_desc = _worker_shard(data, cfg, ctx, plan)
    my_rows = sum(g.rows for g in my_groups)
    batch = plan.per_worker_batch
    reader: Any
    if resolve_train_reader(cfg.train_reader) == "parquet":
        reader = ParquetRowGroups(uri, my_groups, seed=_mix_seed(seed, ctx.rank, _SALT_PETASTORM))
    else:
        reader = _petastorm_reader(uri, cfg, ctx, seed, shard)
    try:
        shuffle_seed = _mix_seed(seed, ctx.rank, _SALT_SHUFFLE)
        augment_key = tf.constant(_mix_seed(seed, ctx.rank, _SALT_AUGMENT), tf.int64)
        parallel = cfg.decode_threads or ctx.cpus or tf.data.AUTOTUNE  # ctx.cpus: the task's (distribute/threads.py)

        def transform(index: Any, row: Any) -> tuple[Any, Any]:
            # Two seeds per element ([key, 2i] for the crop, [key, 2i+1] for the flip inside preprocess_train),
            # so no element's flip shares a seed with its neighbour's crop; RandAugment's are split from the first.
            element_seed = tf.stack([augment_key, index * 2])
            image = augment_train(row[0], image_size=image_size, seed=element_seed, spec=augment)
            return image, tf.one_hot(row[1], num_classes, dtype=tf.float32)

        ds = tf.data.Dataset.from_generator(_row_group_source(reader), output_signature=(
            tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32)))  # one element per row group
        ds = ds.unbatch()
        if cfg.shuffle_buffer > 1:
            ds = ds.shuffle(cfg.shuffle_buffer, seed=shuffle_seed)
        ds = ds.enumerate()
        ds = ds.map(transform, num_parallel_calls=parallel, deterministic=True)
        ds = ds.batch(batch, drop_remainder=True)
        ds = mix_batches(ds, MixSettings.of(cfg), key=_mix_seed(seed, ctx.rank, _SALT_MIX))  # no-op when off
        ds = ds.prefetch(tf.data.AUTOTUNE).with_options(data_options(ctx.cpus))
    except BaseException:
        _close_reader(reader)
        raise
    finalizer = weakref.finalize(ds, _close_reader, reader)
    log.info("worker %d/%d trains on %s of %s: %d images, %d steps of %d per epoch; %s", ctx.rank, ctx.size,
             shard_desc, uri, my_rows, plan.steps_per_epoch, batch, augment.describe())
    return TrainInput(dataset=ds, reader=reader, plan=plan, _finalizer=finalizer)


def train_dataset(*, data: str, cfg: TrainConfig, ctx: WorkerContext, plan: ShardPlan, num_classes: int,
                  image_size: int, seed: int, augment: AugmentSpec | None = None) -> tf.data.Dataset:
    """The infinite training stream alone (see :func:`open_train_dataset` for elements and reproducibility).

    Lifetime: the petastorm reader lives as long as the returned dataset; it is stopped when the dataset is
    garbage collected, or at interpreter exit. Use :func:`open_train_dataset` to stop it at a point you choose.
    """
    return open_train_dataset(data=data, cfg=cfg, ctx=ctx, plan=plan, num_classes=num_classes,
                              image_size=image_size, seed=seed, augment=augment).dataset


# --------------------------------------------------------------------------------------------------
# Evaluation: pyarrow, exactly once, padded to equal batches


def _iter_row_groups(uri: str, groups: Sequence[RowGroup], columns: Sequence[str]) -> Iterator[Any]:
    """pyarrow Tables of ``groups``, one row group at a time, each file opened once per run of its groups.

    Checks every row group's size against the metadata: the padding (and so the number of batches every
    worker yields) is computed from it, and a mismatch would hang the other workers' collectives.
    """
    import pyarrow.parquet as pq

    filesystem, base = fs.resolve(uri)
    current: str | None = None
    handle: Any = None
    parquet: Any = None
    try:
        for g in groups:
            if g.relpath != current:
                if handle is not None:
                    handle.close()
                current = g.relpath
                handle = filesystem.open_input_file(f"{base}/{g.relpath}")
                parquet = pq.ParquetFile(handle)
            table = parquet.read_row_group(g.index, columns=list(columns))
            if table.num_rows != g.rows:
                raise DatasetError(f"{uri}/{g.relpath}: row group {g.index} holds {table.num_rows} rows but "
                                   f"_common_metadata says {g.rows}. Fix: rewrite the dataset with jobs/partition.py.")
            yield table
    finally:
        if handle is not None:
            handle.close()


def _eval_groups(data: str, ctx: WorkerContext, plan: ShardPlan) -> tuple[str, list[RowGroup]]:
    _check_plan(plan, ctx)
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
    for table in _iter_row_groups(uri, groups, ["filename"]):
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
        for table in _iter_row_groups(uri, groups, ["image", "label"]):
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
    ds = ds.map(transform, num_parallel_calls=ctx.cpus or tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(plan.steps_per_epoch))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(data_options(ctx.cpus))
