"""Path/URI normalisation: what users pass (Hadoop and Databricks spellings) → what pyarrow opens."""

import pytest

from imagenet_spark.data import fs


@pytest.mark.parametrize("given,expected", [
    ("dbfs:/mnt/imagenet", "/dbfs/mnt/imagenet"),
    ("s3a://bucket/imagenet/", "s3://bucket/imagenet"),
    ("s3n://bucket/x", "s3://bucket/x"),
    ("file:///data/imagenet", "/data/imagenet"),
    ("file:/data/imagenet", "/data/imagenet"),
    ("hdfs://nn:8020/data/imagenet", "hdfs://nn:8020/data/imagenet"),
    ("/data/./imagenet/", "/data/imagenet"),
])
def test_normalize(given, expected):
    assert fs.normalize(given) == expected


def test_local_round_trip(tmp_path):
    uri = f"file://{tmp_path}/a/b.txt"
    fs.write_text_atomic(uri, "hello")
    assert fs.read_text(uri) == "hello" and fs.is_file(uri) and not fs.exists(uri + ".tmp")
    assert [e.relpath for e in fs.list_files(f"file://{tmp_path}")] == ["a/b.txt"]
    assert fs.read_bytes(str(tmp_path / "a/b.txt"), 1, 3) == b"ell"
