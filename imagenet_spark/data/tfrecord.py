"""Optional TFRecord shards in the format Google's Cloud TPU ImageNet tooling reads (``imagenet_to_gcs``):
``train-00000-of-01024`` / ``validation-00000-of-00128`` holding ``tf.train.Example`` records with the keys
below and 1-based labels (0 is that tooling's background class).

Why from the staged Parquet and not from the raw images: the images are already cleaned and resized, so the
two outputs hold the same pixels, and this pass costs a read of ~the output size, not a second decode.
Row group ``j`` of a split goes to shard ``j mod S``; row groups are sorted by synset, so every shard is
class-mixed as soon as a split has several row groups per shard.

Shard counts are sized from the data (:func:`shard_count`) unless set: imagenet_to_gcs's fixed 1024 + 128 are
its records per shard for ImageNet (1,252 train, 391 validation), and 1,152 Spark tasks for a few dozen
images is nothing but overhead. The record format does not depend on the count.
"""

from __future__ import annotations

import logging
import math
import posixpath
import time
from typing import Any, Literal

from imagenet_spark.data import fs

log = logging.getLogger(__name__)

TFRECORD_DIR = "tfrecord"
Split = Literal["train", "validation"]
# imagenet_to_gcs's records per shard on ImageNet: ceil(1,281,167 / 1024) and ceil(50,000 / 128); the same
# rule gives ImageNet its 1024 + 128 shards and a small dataset one shard per ~1,252 (~391) images.
RECORDS_PER_SHARD: dict[str, int] = {"train": 1252, "validation": 391}
MAX_SHARD_BYTES = 128 << 20  # a shard stays a comfortable unit to copy and to read in parallel


def shard_count(split: Split, records: int, data_bytes: int, row_groups: int, override: int | None = None) -> int:
    """How many shards a split gets: ``override`` when set; else enough that none holds more than
    imagenet_to_gcs's records per shard or ``MAX_SHARD_BYTES``, at least 1, and no more than the split has
    row groups (the unit a shard is built from: more shards would be empty files)."""
    if override is not None:
        return override
    wanted = max(1, math.ceil(records / RECORDS_PER_SHARD[split]), math.ceil(data_bytes / MAX_SHARD_BYTES))
    return max(1, min(wanted, row_groups))


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}"


def _write_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Executor: write one shard from its (file, row group) list. TensorFlow is imported here only."""
    started = time.monotonic()
    import pyarrow.parquet as pq
    import tensorflow as tf

    def _bytes(v: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def _int(v: int) -> Any:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    out_uri = task["out"]
    tmp = posixpath.join(posixpath.dirname(out_uri), "." + posixpath.basename(out_uri) + ".tmp")
    fs.make_dirs(posixpath.dirname(out_uri))
    records = 0
    with tf.io.TFRecordWriter(fs.normalize(tmp) if "://" not in out_uri else tmp) as writer:
        for rel, row_group in task["row_groups"]:
            synset = rel.split("/", 1)[0].split("=", 1)[1]
            filesystem, path = fs.resolve(fs.join(task["split_dir"], rel))
            with filesystem.open_input_file(path) as f:
                table = pq.ParquetFile(f).read_row_group(row_group)
            for row in table.to_pylist():
                example = tf.train.Example(features=tf.train.Features(feature={
                    "image/encoded": _bytes(row["image"]),
                    "image/format": _bytes(b"JPEG"),
                    "image/colorspace": _bytes(b"RGB"),
                    "image/channels": _int(3),
                    "image/height": _int(row["height"]),
                    "image/width": _int(row["width"]),
                    "image/class/label": _int(row["label"] + 1),
                    "image/class/synset": _bytes(synset.encode()),
                    "image/filename": _bytes(posixpath.basename(row["filename"]).encode()),
                }))
                writer.write(example.SerializeToString())
                records += 1
    fs.move(tmp, out_uri)
    return {"shard": posixpath.basename(out_uri), "records": records, "seconds": round(time.monotonic() - started, 3)}


def write_tfrecords(spark: Any, staging: str, manifest: dict[str, Any], cfg: Any) -> dict[str, int]:
    """Write every split's shards under ``staging/tfrecord``; returns records per split. The manifest gets
    ``tfrecord``: shards and records per split, and the seconds the shard tasks worked."""
    from imagenet_spark.spark.jobs import run_tasks

    overrides = {"train": cfg.tfrecord_train_shards, "validation": cfg.tfrecord_validation_shards}
    counts: dict[str, int] = {}
    tasks = []
    total_rows = sum(manifest["split_sizes"].values()) or 1
    for split, files in manifest["_row_group_rows"].items():
        groups = [(rel, g) for rel, rows in sorted(files.items()) for g in range(len(rows))]
        records = sum(sum(rows) for rows in files.values())
        split_bytes = manifest["bytes"]["written"] * records // total_rows  # the split's share of the JPEG bytes
        shards = counts[split] = shard_count(split, records, split_bytes, len(groups), overrides[split])
        for index in range(shards):
            tasks.append({
                "split_dir": fs.join(staging, split),
                "row_groups": groups[index::shards],
                "out": fs.join(staging, TFRECORD_DIR, shard_name(split, index, shards)),
            })
    results = run_tasks(spark, tasks, _write_shard, description="imagenet-spark tfrecord shards")
    per_split: dict[str, int] = {}
    for r in results:
        split = r["shard"].split("-", 1)[0]
        per_split[split] = per_split.get(split, 0) + r["records"]
    manifest["tfrecord"] = {"shards": {s: counts[s] for s in per_split}, "records": per_split,
                            "seconds": round(sum(r["seconds"] for r in results), 2)}
    log.info("wrote TFRecord shards: %s", manifest["tfrecord"])
    return per_split
