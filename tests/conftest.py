"""Shared fixtures: one real Spark local[2] session for the module tests, tiny generated datasets."""

from __future__ import annotations

import os
import sys

import pytest

import imagenet_spark  # noqa: F401 - sets TF_USE_LEGACY_KERAS (tf-keras stacks) before any test imports TF
from imagenet_spark.distribute import stack

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def spark():
    """Real Spark, local[2] with up to 2 attempts per task (so an injected task failure is retried)."""
    from imagenet_spark.spark.session import build_session

    session = build_session("imagenet-spark-tests", master="local[2,2]",
                            conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def dataset(spark, tmp_path_factory):
    """A small learnable dataset written by the real partition job: 4 classes, 240 train / 60 validation
    images, short side 40, row groups of 8 (uneven: 16-image tasks split into 8+8, last groups shorter).
    Shared by the training tests (modules with their own ``dataset`` fixture override it)."""
    from imagenet_spark.config import PartitionConfig, resolve
    from imagenet_spark.data.fake import FakeSpec, write_ilsvrc
    from imagenet_spark.jobs.partition import run_partition

    root = tmp_path_factory.mktemp("small")
    write_ilsvrc(root / "raw", FakeSpec(num_classes=4, train_per_class=60, val_per_class=15, image_size=(48, 40),
                                        size_jitter=0.1, seed=3))
    run_partition(spark, resolve(PartitionConfig, explicit=dict(input=str(root / "raw"), output=str(root / "ds"),
                                                                resize_short=40, images_per_task=16,
                                                                rows_per_row_group=8)))
    return root / "ds"


def pytest_collection_modifyitems(config, items):
    """``legacy_only`` tests (Horovod, stock petastorm) are skipped on a stack without them, with the reason;
    ``make test STACK=legacy`` selects them by the marker."""
    missing = [name for name in ("horovod", "petastorm") if not stack.has_module(name)]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"legacy stack only: {' and '.join(missing)} not installed on the "
                                   f"{stack.describe()}; run `make test STACK=legacy`")
    for item in items:
        if item.get_closest_marker("legacy_only"):
            item.add_marker(skip)
