"""How a split is shared among N workers, computed from row-group sizes alone (no Spark, no TensorFlow).

Petastorm gives row group ``i`` (files sorted by path) to worker ``i mod N``. Shards are therefore unequal
whenever row groups are (the last one of every file is short), and collective ops hang at the end of an
epoch if one worker runs out of batches before the others. So every worker runs exactly
``steps_per_epoch = floor(min_k rows_k / per_worker_batch)`` steps over a repeated stream: the surplus rows
of the larger shards are seen in later epochs, never dropped for good.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from imagenet_spark.data.schema import DatasetError


@dataclass(frozen=True)
class ShardPlan:
    split: str
    workers: int
    rows_per_worker: tuple[int, ...]
    row_groups_per_worker: tuple[int, ...]
    per_worker_batch: int
    steps_per_epoch: int

    @property
    def total_rows(self) -> int:
        return sum(self.rows_per_worker)


def _equal_steps(rows: Sequence[int], *, per_worker_batch: int, split: str, drop_remainder: bool,
                 how: str = "") -> int:
    """Steps every worker runs: floor(smallest shard / batch) for training, ceil(largest / batch) for eval."""
    if not drop_remainder:
        return -(-max(rows) // per_worker_batch)
    steps = min(rows) // per_worker_batch
    if steps == 0:
        raise DatasetError(
            f"{split}:{how} the smallest worker shard has {min(rows)} images, fewer than one per-worker batch of "
            f"{per_worker_batch}. Fix: lower --global-batch-size to at most {min(rows) * len(rows)}, or use "
            "fewer workers."
        )
    return steps


def plan_shards(row_group_rows: Sequence[int], *, workers: int, per_worker_batch: int, split: str,
                drop_remainder: bool = True) -> ShardPlan:
    """Plan worker shards for one split; raises DatasetError with the fix when it cannot serve ``workers``.

    ``drop_remainder=False`` (evaluation) counts the last partial batch, so steps cover the largest shard.
    """
    groups = len(row_group_rows)
    total = sum(row_group_rows)
    if groups < workers:
        suggestion = max(1, total // (workers * 4))
        raise DatasetError(
            f"{split}: {groups} row groups for {workers} workers; petastorm shards by row group, so each worker "
            f"needs at least one. Fix: use at most {groups} workers, or rewrite the dataset with "
            f"--set rows_per_row_group={suggestion} (4 row groups per worker)."
        )
    rows = tuple(sum(row_group_rows[k::workers]) for k in range(workers))
    counts = tuple(len(row_group_rows[k::workers]) for k in range(workers))
    steps = _equal_steps(rows, per_worker_batch=per_worker_batch, split=split, drop_remainder=drop_remainder)
    return ShardPlan(split, workers, rows, counts, per_worker_batch, steps)


def assign_synsets(synsets: Sequence[str], *, workers: int) -> tuple[tuple[str, ...], ...]:
    """Synsets of each worker for ``shard_by=synset``: sorted synset ``j`` goes to worker ``j mod workers``.

    Round-robin over the sorted names (rather than contiguous blocks) so that the workers' image counts stay
    close when class sizes drift with the synset order; and it is a pure function of the names, so every
    worker derives its own list without talking to the others.
    """
    ordered = sorted(set(synsets))
    return tuple(tuple(ordered[k::workers]) for k in range(workers))


def plan_synset_shards(rows_per_synset: Mapping[str, int], row_groups_per_synset: Mapping[str, int], *,
                       workers: int, per_worker_batch: int, split: str, drop_remainder: bool = True) -> ShardPlan:
    """Plan ``shard_by=synset`` shards (whole classes per worker, see :func:`assign_synsets`).

    Same step rule as :func:`plan_shards`: every worker runs ``floor(min rows / per_worker_batch)`` steps (or
    covers the largest shard with ``drop_remainder=False``), so collectives never wait on a finished worker.
    ``row_groups_per_worker`` counts the row groups of each worker's synsets.
    """
    synsets = sorted(rows_per_synset)
    if len(synsets) < workers:
        raise DatasetError(
            f"{split}: {len(synsets)} synsets for {workers} workers with shard_by=synset; each worker needs at "
            f"least one whole class. Fix: use at most {len(synsets)} workers, or --set input.shard_by=row_group "
            "(class-mixed shards by row group)."
        )
    assignment = assign_synsets(synsets, workers=workers)
    rows = tuple(sum(rows_per_synset[s] for s in mine) for mine in assignment)
    counts = tuple(sum(row_groups_per_synset.get(s, 0) for s in mine) for mine in assignment)
    steps = _equal_steps(rows, per_worker_batch=per_worker_batch, split=split, drop_remainder=drop_remainder,
                         how=" with shard_by=synset")
    return ShardPlan(split, workers, rows, counts, per_worker_batch, steps)
