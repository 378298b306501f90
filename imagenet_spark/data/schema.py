"""The Unischema: the only definition of what the partition job writes and the trainer reads.

Why a Unischema and not just a Parquet schema: stock ``petastorm.make_reader`` needs it (it is pickled
into ``_common_metadata``), and keeping one definition means the Arrow schema we write, the Spark schema
and the reader's expectations cannot drift apart. Petastorm itself is needed only to produce the pickle,
once, on the legacy stack: the bytes ship as package data, so both stacks write identical metadata. ``synset``
is the Hive partition column (``split/synset=<wnid>/part-*.parquet``): like Spark's ``partitionBy``, it lives in
the directory name, not inside the files.

Row-group rule (checked by the trainer): petastorm gives row group ``i`` (in sorted file order) to worker
``i mod N``. The job writes every Parquet file with row groups of exactly ``rows_per_row_group`` rows
(the last one of a file may be shorter), files sorted by synset. So a split with ``G`` row groups serves
``N`` workers when ``G >= N``; each worker's shard is class-mixed (its row groups stride across all
synsets) as long as ``G`` is several times ``N``; and every worker can run the same number of steps,
``floor(min_k rows(shard k) / per_worker_batch)``, computed from the row-group sizes in the metadata.
"""

from __future__ import annotations

import importlib.resources
import json
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imagenet_spark.data import fs
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.layout import COMMON_METADATA


class DatasetError(ImagenetSparkError, ValueError):
    """A dataset is missing, not ours, or cannot serve the requested number of workers."""

# Keys petastorm's readers look up in _common_metadata (petastorm.etl.dataset_metadata).
UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"
ROW_GROUPS_PER_FILE_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"
ROW_GROUP_ROWS_KEY = b"imagenet_spark.row_group_rows.v1"
FORMAT_KEY = b"imagenet_spark.format_version"
PARTITION_COLUMN = "synset"
FORMAT_VERSION = 1
SCHEMA_NAME = "ImagenetSparkSchema"
# The pickled petastorm Unischema, shipped as package data (tools/make_unischema_pickle.py writes it on the
# legacy stack; tests/test_crossing.py checks it unpickles to imagenet_unischema()).
UNISCHEMA_RESOURCE = "unischema.pkl"


@dataclass(frozen=True)
class Field:
    """One column: its name, numpy type (what petastorm's Unischema declares), Arrow type, nullability."""

    name: str
    numpy_dtype: Any
    arrow_type: pa.DataType
    nullable: bool = False


@dataclass(frozen=True)
class DatasetSchema:
    """What is on disk, without petastorm: the fields in order, and the pickled Unischema that stock
    petastorm readers need in ``_common_metadata``.

    Why not petastorm's Unischema itself: petastorm cannot be imported on the current stack (0.13.1 needs
    pyarrow < 15), yet datasets written there must stay readable by stock ``petastorm.make_reader`` on the
    legacy stack. The Unischema is a fixed value, so its pickle is shipped as bytes and written as is.
    """

    name: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def unischema_pickle(self) -> bytes:
        """The pickled petastorm Unischema for ``_common_metadata`` (package data, no petastorm needed)."""
        return importlib.resources.files("imagenet_spark").joinpath(f"resources/{UNISCHEMA_RESOURCE}").read_bytes()


def imagenet_schema() -> DatasetSchema:
    """The dataset's fields, in the order petastorm's Unischema declares them (``synset`` is the Hive
    partition column: in the directory name, not inside the files)."""
    return DatasetSchema(SCHEMA_NAME, (
        Field("image", np.bytes_, pa.binary()),
        Field("label", np.int32, pa.int32()),
        Field(PARTITION_COLUMN, np.str_, pa.string()),
        Field("filename", np.str_, pa.string()),
        Field("height", np.int32, pa.int32()),
        Field("width", np.int32, pa.int32()),
    ))


def imagenet_unischema() -> Any:
    """The same schema as petastorm's Unischema (legacy stack only: needs petastorm and pyspark). The source
    of the shipped pickle (``tools/make_unischema_pickle.py``), and what tests compare it with."""
    import pyspark.sql.types as T  # noqa: N812
    from petastorm.codecs import ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField

    spark_types = {pa.binary(): T.BinaryType(), pa.int32(): T.IntegerType(), pa.string(): T.StringType()}
    schema = imagenet_schema()
    return Unischema(schema.name, [
        UnischemaField(f.name, f.numpy_dtype, (), ScalarCodec(spark_types[f.arrow_type]), f.nullable)
        for f in schema.fields
    ])


def arrow_file_schema(schema: DatasetSchema) -> pa.Schema:
    """Arrow schema of each Parquet file: the fields minus the partition column."""
    return pa.schema([pa.field(f.name, f.arrow_type, nullable=f.nullable)
                      for f in schema.fields if f.name != PARTITION_COLUMN])


def write_petastorm_metadata(dataset_uri: str, schema: DatasetSchema, row_group_rows: dict[str, list[int]]) -> None:
    """Write ``_common_metadata`` as ``petastorm.etl.dataset_metadata.materialize_dataset`` does (pickled
    Unischema + row groups per file), without its second Spark job: the partition tasks already reported
    their row groups. We add the rows of every row group, so a trainer can plan equal steps per worker
    from this one small file instead of opening every Parquet footer. The same bytes on both stacks."""
    metadata = {
        UNISCHEMA_KEY: schema.unischema_pickle(),
        ROW_GROUPS_PER_FILE_KEY: json.dumps({k: len(v) for k, v in sorted(row_group_rows.items())}).encode(),
        ROW_GROUP_ROWS_KEY: json.dumps(dict(sorted(row_group_rows.items()))).encode(),
        FORMAT_KEY: str(FORMAT_VERSION).encode(),
    }
    arrow = arrow_file_schema(schema).with_metadata(metadata)
    filesystem, path = fs.resolve(fs.join(dataset_uri, COMMON_METADATA))
    with filesystem.open_output_stream(path) as f:
        pq.write_metadata(arrow, f)


def unischema_pickle_bytes() -> bytes:
    """``pickle`` of :func:`imagenet_unischema` as shipped (protocol 4: readable by every Python >= 3.4)."""
    return pickle.dumps(imagenet_unischema(), protocol=4)


def _read_common_metadata(dataset_uri: str) -> dict[bytes, bytes]:
    filesystem, path = fs.resolve(fs.join(dataset_uri, COMMON_METADATA))
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
        raise DatasetError(f"{dataset_uri}/_common_metadata lacks petastorm's row-group index; "
                           "not a Petastorm dataset.")
    return json.loads(meta[ROW_GROUPS_PER_FILE_KEY])


def read_row_group_rows(dataset_uri: str) -> list[int]:
    """Rows of every row group, in petastorm's order (files sorted by path, then row-group index)."""
    meta = _read_common_metadata(dataset_uri)
    if ROW_GROUP_ROWS_KEY not in meta:
        raise DatasetError(f"{dataset_uri}: not written by imagenet-spark's partition job (no row-group sizes in "
                           "_common_metadata). Fix: rewrite it with jobs/partition.py.")
    per_file = json.loads(meta[ROW_GROUP_ROWS_KEY])
    return [rows for rel in sorted(per_file) for rows in per_file[rel]]
