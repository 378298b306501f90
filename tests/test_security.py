"""What a training run trusts and what it exposes, checked on the real code paths (loopback, no cluster).

* A dataset's ``_common_metadata`` holds a pickled Unischema. Stock petastorm unpickles it (code execution
  for whoever wrote the dataset); ``train_reader="parquet"``, planning and evaluation must not.
* The sockets we open ourselves bind the address they are given, never a wildcard, and close with their owner.
  (TensorFlow's gRPC server and Gloo across hosts are measured in tests/test_netns.py.)
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagenet_spark.config import resolve
from imagenet_spark.data import eval_stream, metadata, reader, schema, sources
from imagenet_spark.data.schema import UNISCHEMA_KEY, arrow_file_schema, imagenet_schema, write_petastorm_metadata
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.distribute.horovod_env import check_gloo_hostname, gloo_hostname_address
from imagenet_spark.train_config import TrainConfig

from .netns import listening_sockets

SYNSETS = ("n01440764", "n01443537", "n01484850")
PER_SYNSET = 12
ROWS_PER_GROUP = 4
WILDCARDS = {"0.0.0.0", "::"}


class _Payload:
    """Unpickling this runs Python code that creates a directory: harmless, and visible to the test.

    Petastorm 0.13.1 unpickles with an allow-list of modules (petastorm, numpy, pyspark, collections, decimal,
    builtins: petastorm/etl/legacy.py); ``builtins.exec`` is on it, so the list does not stop code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"import os; os.mkdir({str(self.marker)!r})",)


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _write_split(split_dir: Path, seed: int) -> None:
    """A split laid out as the partition job writes it (Hive directories by synset, row groups of 4, our
    ``_common_metadata``), written with pyarrow so the test needs no Spark."""
    schema = imagenet_schema()
    file_schema = arrow_file_schema(schema)
    row_groups: dict[str, list[int]] = {}
    for label, synset in enumerate(SYNSETS):
        rel = f"synset={synset}/part-00000.parquet"
        (split_dir / rel).parent.mkdir(parents=True)
        table = pa.table({"image": [_jpeg(seed * 1000 + label * 100 + i) for i in range(PER_SYNSET)],
                          "label": pa.array([label] * PER_SYNSET, pa.int32()),
                          "filename": [f"{synset}/{i}.JPEG" for i in range(PER_SYNSET)],
                          "height": pa.array([24] * PER_SYNSET, pa.int32()),
                          "width": pa.array([24] * PER_SYNSET, pa.int32())}, schema=file_schema)
        pq.write_table(table, split_dir / rel, row_group_size=ROWS_PER_GROUP)
        row_groups[rel] = [ROWS_PER_GROUP] * (PER_SYNSET // ROWS_PER_GROUP)
    write_petastorm_metadata(str(split_dir), schema, row_groups)


def _poison(split_dir: Path, marker: Path) -> None:
    """Replace the pickled Unischema with one that runs code when unpickled; everything else stays valid."""
    path = split_dir / "_common_metadata"
    schema = pq.read_schema(path)
    metadata = dict(schema.metadata)
    metadata[UNISCHEMA_KEY] = pickle.dumps(_Payload(marker))
    pq.write_metadata(schema.with_metadata(metadata), path)


@pytest.fixture()
def poisoned(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "ds"
    marker = tmp_path / "payload-ran"
    for i, split in enumerate(("train", "validation")):
        _write_split(data / split, seed=i)
        _poison(data / split, marker)
    return data, marker


def _cfg(data: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), model_dir="/tmp/unused", model="resnet_tiny", workers=2, global_batch_size=8,
                shuffle_buffer=8, epochs=1, warmup_epochs=0, train_reader="parquet")
    return resolve(TrainConfig, explicit={**base, **kw})


@pytest.mark.legacy_only
def test_stock_petastorm_runs_the_pickled_payload(poisoned):
    """The threat is real: petastorm's reader unpickles ``_common_metadata`` before reading a row."""
    from petastorm import make_batch_reader

    data, marker = poisoned
    with pytest.raises(Exception):  # noqa: B017 - the payload returns None, which petastorm then rejects
        make_batch_reader(sources.petastorm_url(str(data / "train")), schema_fields=["label"])
    assert marker.exists(), "the poisoned metadata did not run: this test no longer proves anything"


@pytest.mark.parametrize("shard_by", ["row_group", "synset"])
def test_parquet_reader_trains_and_evaluates_without_unpickling(poisoned, shard_by):
    data, marker = poisoned
    cfg = _cfg(data, shard_by=shard_by)
    seen: list[bytes] = []
    for rank in range(2):
        ctx = WorkerContext(rank=rank, size=2)
        plan = metadata.load_plan(str(data), "train", workers=2, per_worker_batch=4, shard_by=shard_by)
        with reader.open_train_dataset(data=str(data), cfg=cfg, ctx=ctx, plan=plan, num_classes=len(SYNSETS),
                                       image_size=16, seed=1) as inp:
            assert isinstance(inp.reader, sources.ParquetRowGroups)
            batches = list(inp.dataset.take(plan.steps_per_epoch + 2))  # the stream goes on past an epoch
            assert len(batches) == plan.steps_per_epoch + 2
            assert batches[0][0].shape == (4, 16, 16, 3) and batches[0][1].shape == (4, len(SYNSETS))
        # One pass of the raw source is exactly this worker's shard.
        groups = metadata.row_groups(str(data), "train")
        mine = ([g for g in groups if g.synset in metadata.worker_synsets(str(data), "train", rank=rank, workers=2)]
                if shard_by == "synset" else metadata.worker_row_groups(groups, rank=rank, workers=2))
        source = sources.ParquetRowGroups(str(data / "train"), mine, seed=3)
        for _ in mine:
            seen.extend(next(source).image)
        eval_plan = metadata.load_plan(str(data), "validation", workers=2, per_worker_batch=4, drop_remainder=False)
        ev = eval_stream.eval_dataset(data=str(data), ctx=ctx, plan=eval_plan, num_classes=len(SYNSETS),
                                      image_size=16, eval_resize=20)
        assert len(list(ev)) == eval_plan.steps_per_epoch
    assert len(seen) == len(set(seen)) == len(SYNSETS) * PER_SYNSET, "every training image once across workers"
    assert not marker.exists(), "the pickled payload ran"


def test_parquet_reader_refuses_a_wrong_schema(tmp_path):
    split = tmp_path / "ds" / "train"
    split.mkdir(parents=True)
    pq.write_metadata(pa.schema([("image", pa.string()), ("label", pa.int32())]), split / "_common_metadata")
    with pytest.raises(schema.DatasetError, match="column 'image' is string"):
        sources.ParquetRowGroups(str(split), [metadata.RowGroup("x.parquet", 0, 4)], seed=1)


def test_train_reader_setting_is_validated(tmp_path):
    from imagenet_spark.config import ConfigError

    with pytest.raises(ConfigError, match="train_reader"):
        _cfg(tmp_path, train_reader="pickle")


def test_progress_server_binds_its_address_and_closes():
    from imagenet_spark.distribute.progress import ProgressClient, ProgressServer

    got = []
    with ProgressServer("127.0.0.1", got.append) as server:
        mine = [s for s in listening_sockets(os.getpid()) if s[1] == server.port]
        assert mine == [("127.0.0.1", server.port)], mine
        client = ProgressClient(**server.endpoint())
        client({"event": "step", "step": 1})
        client.close()
    assert not [s for s in listening_sockets(os.getpid()) if s[1] == server.port], "still listening after exit"


@pytest.mark.legacy_only
def test_gloo_rendezvous_binds_its_address_and_stops():
    pytest.importorskip("horovod.runner.http.http_server")
    from imagenet_spark.distribute.horovod_env import host_alloc_plan, start_rendezvous

    server = start_rendezvous(host="127.0.0.1", plan=host_alloc_plan(["127.0.0.1"]))
    try:
        assert [s for s in listening_sockets(os.getpid()) if s[1] == server.port] == [("127.0.0.1", server.port)]
    finally:
        server.stop()
    assert not [s for s in listening_sockets(os.getpid()) if s[1] == server.port]


def test_gloo_hostname_check():
    assert check_gloo_hostname("10.0.0.2", ["10.0.0.2", "10.0.0.2"], "127.0.0.1") == ""  # one host: loopback ok
    assert check_gloo_hostname("10.0.0.2", ["10.0.0.2", "10.0.0.3"], "10.0.0.2") == ""
    problem = check_gloo_hostname("10.0.0.2", ["10.0.0.2", "10.0.0.3"], "127.0.1.1")
    assert "127.0.1.1" in problem and "/etc/hosts" in problem and "10.0.0.3" in problem
    assert "resolve" in check_gloo_hostname("10.0.0.2", ["10.0.0.2", "10.0.0.3"], None)
    assert gloo_hostname_address("localhost") in ("127.0.0.1", "::1")
