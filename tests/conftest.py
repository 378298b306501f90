"""Shared fixtures: one real Spark local[2] session for the module tests, tiny generated datasets."""

from __future__ import annotations

import os
import sys

import pytest

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
