"""The partition job's optional TFRecord pass, driver side: one Spark task per shard, from the staged Parquet.

The record format, the shard counts and the executor's writer are in :mod:`imagenet_spark.data.tfrecord`; here
the shards are cut from the staged row groups (row group ``j`` of a split goes to shard ``j mod S``) and run.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from imagenet_spark.config import PartitionConfig, from_dict, to_dict
from imagenet_spark.data import fs
from imagenet_spark.data.manifest import Manifest, RowGroupRows
from imagenet_spark.data.tfrecord import RowGroupRef, ShardResult, ShardTask, shard_count, shard_name, write_shard_task
from imagenet_spark.layout import DatasetDir, Split
from imagenet_spark.spark.jobs import run_tasks

log = logging.getLogger(__name__)


def plan_shards(staging: DatasetDir, manifest: Manifest, rows: RowGroupRows,
                cfg: PartitionConfig) -> tuple[list[ShardTask], dict[str, int]]:
    """(the shard tasks, shards per split): counts from the data (``shard_count``) unless set."""
    overrides = {"train": cfg.tfrecord_train_shards, "validation": cfg.tfrecord_validation_shards}
    counts: dict[str, int] = {}
    tasks = []
    total_rows = sum(manifest.split_sizes.values()) or 1
    for split, files in rows.items():
        groups = tuple(RowGroupRef(rel, g) for rel, group_rows in sorted(files.items()) for g in range(len(group_rows)))
        records = sum(sum(group_rows) for group_rows in files.values())
        split_bytes = manifest.bytes.written * records // total_rows  # the split's share of the JPEG bytes
        shards = counts[split] = shard_count(cast(Split, split), records, split_bytes, len(groups), overrides[split])
        for index in range(shards):
            tasks.append(ShardTask(staging.split(split), groups[index::shards],
                                   fs.join(staging.tfrecord, shard_name(split, index, shards))))
    return tasks, counts


def write_tfrecords(spark: Any, staging: DatasetDir, manifest: Manifest, rows: RowGroupRows,
                    cfg: PartitionConfig) -> dict[str, Any]:
    """Write every split's shards under ``staging/tfrecord``; returns the manifest's ``tfrecord`` value:
    shards and records per split, and the seconds the shard tasks worked."""
    tasks, counts = plan_shards(staging, manifest, rows, cfg)
    results = [from_dict(ShardResult, r) for r in run_tasks(
        spark, [to_dict(t) for t in tasks], write_shard_task, description="imagenet-spark tfrecord shards")]
    per_split: dict[str, int] = {}
    for r in results:
        per_split[r.split] = per_split.get(r.split, 0) + r.records
    summary = {"shards": {s: counts[s] for s in per_split}, "records": per_split,
               "seconds": round(sum(r.seconds for r in results), 2)}
    log.info("wrote TFRecord shards: %s", summary)
    return summary
