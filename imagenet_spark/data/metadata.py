"""What a split of a dataset holds, from its ``_common_metadata`` alone: row groups, synsets, the shard plan.

Why a module of its own: the driver plans every worker's shard (:func:`load_plan`) to fail before the barrier
stage starts, and every worker plans again to get the same numbers; both need only this small file, never a
Parquet footer, TensorFlow or petastorm (none is imported here). Row groups are listed in petastorm's order
(files sorted by relative path, then index in file), which both the training sources (``data/sources.py``) and
the evaluation stream (``data/eval_stream.py``) follow, so the plan's row counts are exactly what they read.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagenet_spark.config import ConfigError, ShardBy
from imagenet_spark.data import fs
from imagenet_spark.data.schema import PARTITION_COLUMN, DatasetError, read_row_group_rows, read_row_groups_per_file
from imagenet_spark.data.sharding import ShardPlan, assign_synsets, plan_shards, plan_synset_shards
from imagenet_spark.layout import COMMON_METADATA

if TYPE_CHECKING:  # pragma: no cover - typing only
    from imagenet_spark.distribute.context import WorkerContext

SHARD_BY: tuple[ShardBy, ...] = typing.get_args(ShardBy)


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
        raise DatasetError(f"{uri}/{COMMON_METADATA}: petastorm's row-group index ({position} row groups) and the "
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


def load_plan(data: str, split: str, *, workers: int, per_worker_batch: int, shard_by: ShardBy = "row_group",
              drop_remainder: bool = True) -> ShardPlan:
    """Plan how ``workers`` share ``DATA/split``, from the row-group sizes in its ``_common_metadata``.

    Cheap (one small file, no TensorFlow): the driver calls it to fail before the barrier stage starts, and
    every worker calls it again to get the same numbers. ``drop_remainder=False`` is for evaluation (steps
    cover the largest shard; ``eval_dataset`` pads the others with zero-weight rows).
    """
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
                           f"most {len(rows)} workers, or --set input.shard_by=row_group.")
    return assign_synsets(list(rows), workers=workers)[rank]


def check_plan(plan: ShardPlan, ctx: WorkerContext) -> None:
    """Refuse a plan made for another number of workers: its row counts would give workers unequal epochs."""
    if plan.workers != ctx.size or not 0 <= ctx.rank < ctx.size:
        raise DatasetError(f"{plan.split}: the shard plan is for {plan.workers} workers but this is worker {ctx.rank} "
                           f"of {ctx.size}. Fix: build the plan with load_plan(..., workers={ctx.size}).")
