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

import math
import posixpath
import time
from dataclasses import dataclass
from typing import Any

from imagenet_spark.config import from_dict, to_dict
from imagenet_spark.data import fs
from imagenet_spark.layout import Split

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


@dataclass(frozen=True)
class RowGroupRef:
    """Row group ``index`` of the Parquet file ``file`` (``synset=X/part-N.parquet``, relative to the split)."""

    file: str
    index: int


@dataclass(frozen=True)
class ShardTask:
    """One shard to write (driver → executor): the split's folder, its row groups, the shard's final URI."""

    split_dir: str
    row_groups: tuple[RowGroupRef, ...]
    out: str


@dataclass(frozen=True)
class ShardResult:
    """What a shard task wrote (executor → driver)."""

    shard: str
    records: int
    seconds: float

    @property
    def split(self) -> str:
        return self.shard.split("-", 1)[0]


def write_shard_task(task: dict[str, Any]) -> dict[str, Any]:
    """The Spark-side entry: :func:`write_shard` between the plain dicts Spark carries."""
    return to_dict(write_shard(from_dict(ShardTask, task)))


def write_shard(task: ShardTask) -> ShardResult:
    """Executor: write one shard from its (file, row group) list. TensorFlow is imported here only."""
    started = time.monotonic()
    import pyarrow.parquet as pq
    import tensorflow as tf

    def _bytes(v: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def _int(v: int) -> Any:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    out_uri = task.out
    tmp = posixpath.join(posixpath.dirname(out_uri), "." + posixpath.basename(out_uri) + ".tmp")
    fs.make_dirs(posixpath.dirname(out_uri))
    records = 0
    with tf.io.TFRecordWriter(fs.normalize(tmp) if "://" not in out_uri else tmp) as writer:
        for ref in task.row_groups:
            synset = ref.file.split("/", 1)[0].split("=", 1)[1]
            filesystem, path = fs.resolve(fs.join(task.split_dir, ref.file))
            with filesystem.open_input_file(path) as f:
                table = pq.ParquetFile(f).read_row_group(ref.index)
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
    return ShardResult(posixpath.basename(out_uri), records, round(time.monotonic() - started, 3))
