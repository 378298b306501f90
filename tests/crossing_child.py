"""The other stack's half of tests/test_crossing.py, run as ``OTHER_VENV/bin/python tests/crossing_child.py``.

``write OUT``: fake ImageNet and the real partition job (Spark local[2]) into ``OUT/ds`` on this stack.
``read DATASET MODEL_DIR``: read the dataset every way the contract promises on this stack (pyarrow,
spark.read.parquet, and stock petastorm make_reader / make_batch_reader where petastorm is installed), then
train resnet_tiny one epoch on it with the trainer's default reader (petastorm on the legacy stack, pyarrow on
the current one). Prints one JSON line with what it saw; the parent asserts on it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

import imagenet_spark  # noqa: F401 - first: selects Keras 2 (tf-keras) before TensorFlow is imported

log = logging.getLogger("crossing_child")


def _stack() -> dict[str, Any]:
    import pyarrow
    import tensorflow as tf

    from imagenet_spark.distribute import stack

    return {"stack": stack.stack_name(), "python": platform.python_version(), "pyarrow": pyarrow.__version__,
            "tensorflow": tf.__version__, "keras": _keras_version(tf)}


def _keras_version(tf: Any) -> str:
    """The version of the package behind ``tf.keras`` (keras 2.15 on legacy, tf_keras on current)."""
    import importlib

    return importlib.import_module(tf.keras.Model.__module__.split(".")[0]).__version__


def write(out: Path) -> dict[str, Any]:
    from imagenet_spark.config import PartitionConfig, resolve
    from imagenet_spark.data.fake import FakeSpec, write_ilsvrc
    from imagenet_spark.jobs.partition import run_partition
    from imagenet_spark.spark.session import build_session

    write_ilsvrc(out / "raw", FakeSpec(num_classes=4, train_per_class=60, val_per_class=15, image_size=(48, 40),
                                       size_jitter=0.1, seed=3))
    spark = build_session("crossing-write", master="local[2]", conf={"spark.ui.enabled": "false"})
    try:
        manifest = run_partition(spark, resolve(PartitionConfig, explicit=dict(
            input=str(out / "raw"), output=str(out / "ds"), resize_short=40, images_per_task=16,
            rows_per_row_group=8)))
    finally:
        spark.stop()
    return {**_stack(), "split_sizes": manifest["split_sizes"]}


def _stock_petastorm(url: str, n_train: int, n_val: int) -> dict[str, Any]:
    """Stock readers, num_epochs=None and exactly the rows expected (see tests/test_partition.py: STOCK_READERS)."""
    from petastorm import make_batch_reader, make_reader

    with make_reader(url + "/train", num_epochs=None, workers_count=1, shuffle_row_groups=False) as r:
        rows = list(itertools.islice(r, n_train))
    names: set[str] = set()
    with make_batch_reader(url + "/validation", num_epochs=None, workers_count=1, shuffle_row_groups=False) as r:
        for batch in r:
            names.update(batch.filename)
            if len(names) >= n_val:
                break
    return {"make_reader": len({row.filename for row in rows}), "make_reader_fields": sorted(rows[0]._fields),
            "make_batch_reader": len(names), "image_is_bytes": isinstance(rows[0].image, bytes)}


def read(data: Path, model_dir: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from imagenet_spark.config import resolve
    from imagenet_spark.data.schema import UNISCHEMA_KEY
    from imagenet_spark.distribute import stack
    from imagenet_spark.jobs.train import run_training
    from imagenet_spark.spark.session import build_session
    from imagenet_spark.train_config import TrainConfig

    manifest = json.loads((data / "manifest.json").read_text())
    sizes = manifest["split_sizes"]
    out: dict[str, Any] = {**_stack(), "written_by": manifest["versions"]}
    out["pyarrow_rows"] = {s: pq.read_table(str(data / s)).num_rows for s in ("train", "validation")}
    out["unischema_pickle"] = pq.read_schema(str(data / "train" / "_common_metadata")).metadata[UNISCHEMA_KEY].hex()
    if stack.has_module("petastorm"):
        out["petastorm"] = _stock_petastorm(f"file://{data}", sizes["train"], sizes["validation"])
    spark = build_session("crossing-read", master="local[2]", conf={"spark.ui.enabled": "false"})
    try:
        df = spark.read.parquet(str(data / "train"))
        out["spark_rows"], out["spark_columns"] = df.count(), sorted(df.columns)
        cfg = resolve(TrainConfig, explicit=dict(data=str(data), model_dir=str(model_dir), model="resnet_tiny",
                                                 workers=1, backend="off", epochs=1, global_batch_size=16,
                                                 warmup_epochs=0, seed=1, track=False))
        out["train_reader"] = stack.resolve_train_reader(cfg.input.train_reader)
        out["metrics"] = run_training(spark, cfg).get("metrics", {})
    finally:
        spark.stop()
    out["history"] = json.loads((model_dir / "metrics.json").read_text())
    return out


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    result = write(Path(argv[2])) if argv[1] == "write" else read(Path(argv[2]), Path(argv[3]))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
