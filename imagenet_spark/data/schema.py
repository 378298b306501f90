"""The Unischema: the only definition of what the partition job writes and the trainer reads.

Why a Unischema and not just a Parquet schema: stock ``petastorm.make_reader`` needs it (it is pickled
into ``_common_metadata``), and keeping one definition means the Arrow schema we write, the Spark schema
and the reader's expectations cannot drift apart. ``synset`` is the Hive partition column
(``split/synset=<wnid>/part-*.parquet``): like Spark's ``partitionBy``, it lives in the directory name,
not inside the files.

Row-group rule (checked by the trainer): petastorm gives row group ``i`` (in sorted file order) to worker
``i mod N``. The job writes every Parquet file with row groups of exactly ``rows_per_row_group`` rows
(the last one of a file may be shorter), files sorted by synset. So a split with ``G`` row groups serves
``N`` workers when ``G >= N``; each worker's shard is class-mixed (its row groups stride across all
synsets) as long as ``G`` is several times ``N``; and every worker can run the same number of steps,
``floor(min_k rows(shard k) / per_worker_batch)``, computed from the row-group sizes in the metadata.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from petastorm.codecs import ScalarCodec
from petastorm.unischema import Unischema, UnischemaField

from imagenet_spark.data import fs
from imagenet_spark.errors import ImagenetSparkError


class DatasetError(ImagenetSparkError, ValueError):
    """A dataset is missing, not ours, or cannot serve the requested number of workers."""

# Keys petastorm's readers look up in _common_metadata (petastorm.etl.dataset_metadata).
UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"
ROW_GROUPS_PER_FILE_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"
ROW_GROUP_ROWS_KEY = b"imagenet_spark.row_group_rows.v1"
FORMAT_KEY = b"imagenet_spark.format_version"
PARTITION_COLUMN = "synset"
FORMAT_VERSION = 1


def _spark_types() -> Any:
    """ScalarCodec wants Spark SQL types; pyspark is imported here only on the write side.

    Readers never call this: they unpickle the Unischema petastorm stored, and never import imagenet_spark.
    """
    import pyspark.sql.types as T  # noqa: N812

    return T


def imagenet_schema() -> Unischema:
    """The dataset's Unischema. Built on call (not a module global) so that importing this module on the
    read path does not need pyspark."""
    T = _spark_types()  # noqa: N806
    return Unischema(
        "ImagenetSparkSchema",
        [
            UnischemaField("image", np.bytes_, (), ScalarCodec(T.BinaryType()), False),
            UnischemaField("label", np.int32, (), ScalarCodec(T.IntegerType()), False),
            UnischemaField(PARTITION_COLUMN, np.str_, (), ScalarCodec(T.StringType()), False),
            UnischemaField("filename", np.str_, (), ScalarCodec(T.StringType()), False),
            UnischemaField("height", np.int32, (), ScalarCodec(T.IntegerType()), False),
            UnischemaField("width", np.int32, (), ScalarCodec(T.IntegerType()), False),
        ],
    )


_ARROW_TYPES = {
    np.bytes_: pa.binary(),
    np.str_: pa.string(),
    np.int32: pa.int32(),
    np.int64: pa.int64(),
    np.float32: pa.float32(),
    np.float64: pa.float64(),
    np.bool_: pa.bool_(),
}


def arrow_file_schema(schema: Unischema) -> pa.Schema:
    """Arrow schema of each Parquet file: the Unischema's fields minus the partition column."""
    fields = []
    for name, field in schema.fields.items():
        if name == PARTITION_COLUMN:
            continue
        fields.append(pa.field(name, _ARROW_TYPES[field.numpy_dtype], nullable=field.nullable))
    return pa.schema(fields)


def write_petastorm_metadata(dataset_uri: str, schema: Unischema, row_group_rows: dict[str, list[int]]) -> None:
    """Write ``_common_metadata`` as ``petastorm.etl.dataset_metadata.materialize_dataset`` does (pickled
    Unischema + row groups per file), without its second Spark job: the partition tasks already reported
    their row groups. We add the rows of every row group, so a trainer can plan equal steps per worker
    from this one small file instead of opening every Parquet footer."""
    metadata = {
        UNISCHEMA_KEY: pickle.dumps(schema),
        ROW_GROUPS_PER_FILE_KEY: json.dumps({k: len(v) for k, v in sorted(row_group_rows.items())}).encode(),
        ROW_GROUP_ROWS_KEY: json.dumps(dict(sorted(row_group_rows.items()))).encode(),
        FORMAT_KEY: str(FORMAT_VERSION).encode(),
    }
    arrow = arrow_file_schema(schema).with_metadata(metadata)
    filesystem, path = fs.resolve(fs.join(dataset_uri, "_common_metadata"))
    with filesystem.open_output_stream(path) as f:
        pq.write_metadata(arrow, f)


def _read_common_metadata(dataset_uri: str) -> dict[bytes, bytes]:
    filesystem, path = fs.resolve(fs.join(dataset_uri, "_common_metadata"))
    try:
        with filesystem.open_input_file(path) as f:
            return pq.read_schema(f).metadata or {}
    except FileNotFoundError:
        raise DatasetError(
            f"{dataset_uri}: no _common_metadata; not a Petastorm dataset written by jobs/partition.py. "
            "Fix: run jobs/partition.py on the raw images first (or point --data at its --output)."
        ) from None


def read_row_groups_per_file(dataset_uri: str) -> dict[str, int]:
    """Row groups per file, as petastorm indexes them."""
    meta = _read_common_metadata(dataset_uri)
    if ROW_GROUPS_PER_FILE_KEY not in meta:
        raise DatasetError(f"{dataset_uri}/_common_metadata lacks petastorm's row-group index; not a Petastorm dataset.")
    return json.loads(meta[ROW_GROUPS_PER_FILE_KEY])


def read_row_group_rows(dataset_uri: str) -> list[int]:
    """Rows of every row group, in petastorm's order (files sorted by path, then row-group index)."""
    meta = _read_common_metadata(dataset_uri)
    if ROW_GROUP_ROWS_KEY not in meta:
        raise DatasetError(f"{dataset_uri}: not written by imagenet-spark's partition job (no row-group sizes in "
                           "_common_metadata). Fix: rewrite it with jobs/partition.py.")
    per_file = json.loads(meta[ROW_GROUP_ROWS_KEY])
    return [rows for rel in sorted(per_file) for rows in per_file[rel]]
