"""Where one worker's training rows come from: petastorm's batch reader or pyarrow, one row group at a time.

Why a module of its own: both sources give the training stream (``data/reader.py``) the same interface
(``stopped``, ``stop``, ``join``, ``next`` → a row group's ``image`` and ``label``), and everything that keeps a
reader from hanging a worker lives here: petastorm's thread pool must be stopped without stranding a consumer
(:func:`close_reader`) and the stream must end quietly when it is (:func:`row_group_source`).

Reading the dataset with petastorm unpickles the Unischema stored in ``_common_metadata`` (petastorm's own
behaviour; its codecs reference ``pyspark.sql.types``, which Spark executors always have), so a dataset from an
untrusted source can run code in the worker. :class:`ParquetRowGroups` reads the same shard with pyarrow by the
Parquet schema alone; the evaluation stream reads with :func:`iter_row_groups` too, so it never unpickles
anything. Petastorm and pyarrow are imported inside functions.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from imagenet_spark.data import fs
from imagenet_spark.data.metadata import RowGroup
from imagenet_spark.data.schema import DatasetError
from imagenet_spark.layout import COMMON_METADATA

log = logging.getLogger(__name__)

TRAIN_FIELDS = ("image", "label")


def petastorm_url(uri: str) -> str:
    """Petastorm wants a URL: local paths become ``file:///abs/path``; other schemes pass through."""
    normalized = fs.normalize(uri)
    return normalized if "://" in normalized else "file://" + normalized


class _ReaderClosed(Exception):
    """Put into petastorm's result queues on close, to wake a consumer blocked inside the reader."""


def close_reader(reader: Any) -> None:
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


def row_group_source(reader: Any) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
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
    ``close_reader`` use (``stopped``, ``stop``, ``join``, ``next``), and no threads: reading happens in
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
        return iter_row_groups(self._uri, [self._groups[i] for i in order], list(TRAIN_FIELDS))

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

    filesystem, path = fs.resolve(fs.join(uri, COMMON_METADATA))
    try:
        with filesystem.open_input_file(path) as f:
            schema = pq.read_schema(f)
    except FileNotFoundError:
        raise DatasetError(f"{uri}: no {COMMON_METADATA}. Fix: pass the --output of jobs/partition.py.") from None
    wanted = {"image": pa.types.is_binary, "label": pa.types.is_integer}
    for name, is_type in wanted.items():
        index = schema.get_field_index(name)
        if index < 0 or not is_type(schema.field(index).type):
            found = schema.field(index).type if index >= 0 else "missing"
            raise DatasetError(f"{uri}: column {name!r} is {found}; the trainer needs image (binary JPEG bytes) and "
                               "label (integer). Fix: rewrite the dataset with jobs/partition.py.")


def iter_row_groups(uri: str, groups: Sequence[RowGroup], columns: Sequence[str]) -> Iterator[Any]:
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
                                   f"{COMMON_METADATA} says {g.rows}. Fix: rewrite the dataset with jobs/partition.py.")
            yield table
    finally:
        if handle is not None:
            handle.close()


def petastorm_reader(uri: str, *, workers_count: int, seed: int, shard: dict[str, Any]) -> Any:
    """Petastorm's batch reader over this worker's shard (unpickles the dataset's Unischema: trusted data only).

    ``seed``: this worker's row-group order (non-zero: petastorm treats 0 as unseeded); ``shard``: petastorm's
    ``cur_shard``/``shard_count`` or ``filters`` arguments; ``workers_count``: its reader threads."""
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
            workers_count=workers_count,
            # Five row groups per reader thread: the reader outruns decoding by an order of magnitude (see
            # bench/input_pipeline.py), so a deeper queue would only hold memory (petastorm's default, 50 row
            # groups, is ~350 MB of full-size ImageNet JPEGs per worker process).
            results_queue_size=5 * workers_count,
            num_epochs=None,
            shuffle_row_groups=True,
            seed=seed,
            **shard,
        )
