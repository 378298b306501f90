"""The training/eval input pipeline on a real dataset written by the real partition job (Spark local[2]),
read with real petastorm and TensorFlow on CPU, as two simulated workers of one job."""

from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from imagenet_spark.config import PartitionConfig, resolve
from imagenet_spark.data import eval_stream, metadata, reader, sources
from imagenet_spark.data.fake import FakeSpec, write_ilsvrc
from imagenet_spark.data.schema import DatasetError
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.jobs.partition import run_partition
from imagenet_spark.train_config import TrainConfig

CLASSES = 4
TRAIN_PER_CLASS = 24
VAL_PER_CLASS = 6
SIZE = 32
BATCH = 8  # per worker
EVAL_BATCH = 4
WORKERS = 2


@pytest.fixture(scope="module")
def dataset(spark, tmp_path_factory) -> Path:
    """4 classes x 24 train / 6 validation. Files of 10 images in row groups of 4 give uneven row groups
    (4, 4, 2 per file), so shards and padding are exercised for real."""
    raw = tmp_path_factory.mktemp("raw") / "ilsvrc"
    write_ilsvrc(raw, FakeSpec(num_classes=CLASSES, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS,
                               image_size=(48, 40)))
    dst = tmp_path_factory.mktemp("ds") / "dataset"
    cfg = resolve(PartitionConfig, explicit=dict(input=str(raw), output=str(dst), resize_short=40,
                                                 images_per_task=10, rows_per_row_group=4))
    manifest = run_partition(spark, cfg)
    assert manifest["split_sizes"] == {"train": CLASSES * TRAIN_PER_CLASS, "validation": CLASSES * VAL_PER_CLASS}
    return dst


def _ctx(rank: int) -> WorkerContext:
    return WorkerContext(rank=rank, size=WORKERS)


def _cfg(data: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), model_dir="/tmp/unused", model="resnet18", workers=WORKERS,
                global_batch_size=BATCH * WORKERS, shuffle_buffer=32, epochs=2, warmup_epochs=0)
    base.update(kw)
    return resolve(TrainConfig, explicit=base)


def _train(data, cfg, rank, plan, seed=0):
    return reader.open_train_dataset(data=str(data), cfg=cfg, ctx=_ctx(rank), plan=plan, num_classes=CLASSES,
                                     image_size=SIZE, seed=seed)


def _take(inp: reader.TrainInput, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in inp.dataset.take(n)]


def _eval_plan(data):
    return metadata.load_plan(str(data), "validation", workers=WORKERS, per_worker_batch=EVAL_BATCH,
                            drop_remainder=False)


def test_row_groups_are_uneven_and_shards_equal_steps(dataset):
    groups = metadata.row_groups(str(dataset), "train")
    assert sorted({g.rows for g in groups}) == [2, 4]
    plan = metadata.load_plan(str(dataset), "train", workers=WORKERS, per_worker_batch=BATCH)
    assert plan.total_rows == CLASSES * TRAIN_PER_CLASS
    assert plan.steps_per_epoch == min(plan.rows_per_worker) // BATCH > 0


def test_both_workers_stream_two_epochs_of_full_one_hot_batches(dataset):
    cfg = _cfg(dataset)
    plan = metadata.load_plan(str(dataset), "train", workers=WORKERS, per_worker_batch=BATCH)
    for rank in range(WORKERS):
        with _train(dataset, cfg, rank, plan) as inp:
            batches = _take(inp, 2 * plan.steps_per_epoch)  # past one epoch: the stream must not end
        assert len(batches) == 2 * plan.steps_per_epoch
        for x, y in batches:
            assert x.shape == (BATCH, SIZE, SIZE, 3) and x.dtype == np.uint8  # the step normalises
            assert y.shape == (BATCH, CLASSES) and y.dtype == np.float32
            assert x.std() > 1, "real crops, not a constant"
            assert set(np.unique(y)) <= {0.0, 1.0} and np.all(y.sum(axis=1) == 1.0)
        assert inp.reader.stopped


def test_same_seed_same_first_batch_other_seed_differs(dataset):
    cfg = _cfg(dataset)
    plan = metadata.load_plan(str(dataset), "train", workers=WORKERS, per_worker_batch=BATCH)
    firsts = []
    for seed in (7, 7, 8):
        with _train(dataset, cfg, 0, plan, seed=seed) as inp:
            firsts.append(_take(inp, 1)[0])
    np.testing.assert_array_equal(firsts[0][0], firsts[1][0])
    np.testing.assert_array_equal(firsts[0][1], firsts[1][1])
    assert not np.array_equal(firsts[0][0], firsts[2][0])



def test_a_shuffle_buffer_larger_than_the_shard_is_capped_at_it(dataset, caplog):
    """The reader repeats a worker's shard forever, so a buffer of 4,096 rows on a 48-row shard would hold ~85
    copies of each image: an epoch's batches would repeat images three or more times (and the first batch wait
    for the whole buffer). Capped at the shard, the buffer spans at most two epochs: no image more than twice."""
    cfg = _cfg(dataset, shuffle_buffer=4096, augment="none")  # the eval crop: one image, one crop
    plan = metadata.load_plan(str(dataset), "train", workers=WORKERS, per_worker_batch=BATCH)
    rows = plan.rows_per_worker[0]
    with caplog.at_level(logging.INFO, logger=reader.__name__), _train(dataset, cfg, 0, plan, seed=5) as inp:
        images = np.concatenate([x for x, _ in _take(inp, plan.steps_per_epoch)])
    counts = collections.Counter(image.tobytes() for image in images)
    assert len(images) >= rows - BATCH and max(counts.values()) <= 2, sorted(counts.values())[-5:]
    assert f"shuffle buffer {rows} (input.shuffle_buffer=4096, capped at the shard)" in caplog.text


def test_the_map_runs_unconverted_by_autograph_with_randaugment_and_crops_the_same(dataset):
    """The training map is traced without autograph (a launch-time saving, issue #13): its branches must all be
    graph ops or Python on Python values, RandAugment's included, and the stream stays reproducible."""
    cfg = _cfg(dataset, randaugment_layers=2)
    plan = metadata.load_plan(str(dataset), "train", workers=WORKERS, per_worker_batch=BATCH)
    batches = []
    for _ in range(2):
        with _train(dataset, cfg, 1, plan, seed=3) as inp:
            batches.append(_take(inp, 2))
    for (x, y), (x2, y2) in zip(*batches):
        assert x.dtype == np.uint8 and x.shape == (BATCH, SIZE, SIZE, 3) and x.std() > 1
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)

def test_train_dataset_alone_and_a_file_uri(dataset):
    cfg = _cfg(dataset)
    plan = metadata.load_plan("file://" + str(dataset), "train", workers=WORKERS, per_worker_batch=BATCH)
    ds = reader.train_dataset(data="file://" + str(dataset), cfg=cfg, ctx=_ctx(1), plan=plan, num_classes=CLASSES,
                              image_size=SIZE, seed=1)
    x, y = next(iter(ds))
    assert x.shape == (BATCH, SIZE, SIZE, 3) and y.shape == (BATCH, CLASSES)
    del ds  # the reader is stopped by the dataset's finalizer (or at exit): nothing to assert but no hang


def test_shard_by_synset_gives_disjoint_classes_and_equal_steps(dataset):
    cfg = _cfg(dataset, shard_by="synset")
    plan = metadata.load_plan(str(dataset), "train", workers=WORKERS, per_worker_batch=BATCH, shard_by="synset")
    assert plan.rows_per_worker == (TRAIN_PER_CLASS * 2, TRAIN_PER_CLASS * 2)
    assert plan.steps_per_epoch == TRAIN_PER_CLASS * 2 // BATCH
    synsets = [metadata.worker_synsets(str(dataset), "train", rank=r, workers=WORKERS) for r in range(WORKERS)]
    assert not set(synsets[0]) & set(synsets[1]) and len(synsets[0] + synsets[1]) == CLASSES
    labels = []
    for rank in range(WORKERS):
        with _train(dataset, cfg, rank, plan) as inp:
            batches = _take(inp, plan.steps_per_epoch + 1)
        assert len(batches) == plan.steps_per_epoch + 1
        labels.append(set(np.concatenate([y.argmax(axis=1) for _, y in batches]).tolist()))
    # sorted synset j -> worker j mod 2; labels are indexes into the sorted synsets
    assert labels[0] <= {0, 2} and labels[1] <= {1, 3}


def test_eval_filenames_cover_validation_exactly_once(dataset):
    plan = _eval_plan(dataset)
    names = [eval_stream.eval_filenames(data=str(dataset), ctx=_ctx(r), plan=plan) for r in range(WORKERS)]
    every = pq.read_table(dataset / "validation", columns=["filename"]).column("filename").to_pylist()
    assert sorted(names[0] + names[1]) == sorted(every)
    assert len(set(names[0] + names[1])) == len(every) == CLASSES * VAL_PER_CLASS
    assert [len(n) for n in names] == list(plan.rows_per_worker)
    assert names[1] == eval_stream.eval_filenames(data="file://" + str(dataset), ctx=_ctx(1), plan=plan)


def test_eval_equal_batches_weights_count_each_image_once_and_repeat(dataset):
    plan = _eval_plan(dataset)
    assert plan.rows_per_worker[0] != plan.rows_per_worker[1]  # padding is really exercised
    table = pq.read_table(dataset / "validation", columns=["filename", "label"]).to_pylist()
    label_of = {r["filename"]: r["label"] for r in table}
    total_weight = 0.0
    for rank in range(WORKERS):
        ds = eval_stream.eval_dataset(data=str(dataset), ctx=_ctx(rank), plan=plan, num_classes=CLASSES,
                                      image_size=SIZE, eval_resize=40)
        assert int(ds.cardinality()) == plan.steps_per_epoch
        runs = []
        for _ in range(2):
            batches = [(x.numpy(), y.numpy(), w.numpy()) for x, y, w in ds]
            assert len(batches) == plan.steps_per_epoch
            for x, y, w in batches:
                assert x.shape == (EVAL_BATCH, SIZE, SIZE, 3) and y.shape == (EVAL_BATCH, CLASSES)
                assert x.dtype == np.uint8
                assert w.shape == (EVAL_BATCH,) and set(np.unique(w)) <= {0.0, 1.0}
            runs.append((np.concatenate([y.argmax(1) for _, y, _ in batches]),
                         np.concatenate([w for _, _, w in batches])))
        np.testing.assert_array_equal(runs[0][0], runs[1][0])
        np.testing.assert_array_equal(runs[0][1], runs[1][1])
        labels, weights = runs[0]
        real = int(weights.sum())
        assert real == plan.rows_per_worker[rank] and np.all(weights[:real] == 1) and np.all(weights[real:] == 0)
        names = eval_stream.eval_filenames(data=str(dataset), ctx=_ctx(rank), plan=plan)
        assert labels[:real].tolist() == [label_of[n] for n in names]
        total_weight += weights.sum()
    assert total_weight == CLASSES * VAL_PER_CLASS


def test_too_few_row_groups_and_too_large_batches_name_the_fix(dataset):
    groups = len(metadata.row_groups(str(dataset), "validation"))
    with pytest.raises(DatasetError, match=rf"validation: {groups} row groups for {groups + 1} workers.*Fix: use at "
                                           rf"most {groups} workers"):
        metadata.load_plan(str(dataset), "validation", workers=groups + 1, per_worker_batch=1)
    plan = metadata.load_plan(str(dataset), "train", workers=WORKERS, per_worker_batch=1)
    smallest = min(plan.rows_per_worker)
    with pytest.raises(DatasetError, match=rf"smallest worker shard has {smallest} images.*Fix: lower "
                                           rf"--global-batch-size to at most {smallest * WORKERS}"):
        metadata.load_plan(str(dataset), "train", workers=WORKERS, per_worker_batch=smallest + 1)
    with pytest.raises(DatasetError, match=r"4 synsets for 5 workers.*Fix: use at most 4 workers"):
        metadata.load_plan(str(dataset), "train", workers=5, per_worker_batch=1, shard_by="synset")


def test_plans_must_match_the_worker_and_the_use(dataset):
    train_plan = metadata.load_plan(str(dataset), "validation", workers=WORKERS, per_worker_batch=EVAL_BATCH)
    if min(train_plan.rows_per_worker) != max(train_plan.rows_per_worker):
        with pytest.raises(DatasetError, match="drop_remainder=False"):
            eval_stream.eval_filenames(data=str(dataset), ctx=_ctx(0), plan=train_plan)
    with pytest.raises(DatasetError, match="plan is for 2 workers but this is worker 0 of 3"):
        eval_stream.eval_filenames(data=str(dataset), ctx=WorkerContext(rank=0, size=3), plan=_eval_plan(dataset))
    synset_plan = metadata.load_plan(str(dataset), "train", workers=WORKERS, per_worker_batch=BATCH, shard_by="synset")
    bad = dataclasses.replace(synset_plan, rows_per_worker=(1, 1))
    with pytest.raises(DatasetError, match="the plan says 1"):
        _train(dataset, _cfg(dataset), 0, bad)


def test_not_a_dataset_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path}/nowhere.*no such directory"):
        metadata.load_plan(str(tmp_path / "nowhere"), "train", workers=1, per_worker_batch=1)
    with pytest.raises(DatasetError, match=rf"{tmp_path}/train: missing"):
        metadata.load_plan(str(tmp_path), "train", workers=1, per_worker_batch=1)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "part-0.parquet").write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match=rf"{tmp_path}/train: no _common_metadata"):
        metadata.load_plan(str(tmp_path), "train", workers=1, per_worker_batch=1)


def test_synset_plans_round_robin_sorted_synsets():
    from imagenet_spark.data.sharding import assign_synsets, plan_synset_shards

    assert assign_synsets(["n3", "n1", "n2", "n4", "n5"], workers=2) == (("n1", "n3", "n5"), ("n2", "n4"))
    plan = plan_synset_shards({"n1": 10, "n2": 7, "n3": 5}, {"n1": 3, "n2": 2, "n3": 2}, workers=2,
                              per_worker_batch=4, split="train")
    assert plan.rows_per_worker == (15, 7) and plan.row_groups_per_worker == (5, 2) and plan.steps_per_epoch == 1
    with pytest.raises(DatasetError, match=r"smallest worker shard has 7 images.*at most 14"):
        plan_synset_shards({"n1": 10, "n2": 7}, {}, workers=2, per_worker_batch=8, split="train")
    assert metadata.synset_of("synset=n01440764/part-00000.parquet") == "n01440764"
    with pytest.raises(DatasetError, match="not under a 'synset=<wnid>/' directory"):
        metadata.synset_of("part-00000.parquet")


@pytest.mark.legacy_only  # petastorm's thread pool (train_reader=auto is the pyarrow reader elsewhere)
def test_close_wakes_a_consumer_blocked_inside_the_reader(dataset):
    """petastorm 0.13.1: once stopped, a consumer already waiting in get_results polls forever; the TF prefetch
    thread would be that consumer and its iterator would hang on destruction. close() must end it."""
    import queue
    import threading

    plan = metadata.load_plan(str(dataset), "train", workers=WORKERS, per_worker_batch=BATCH)
    inp = _train(dataset, _cfg(dataset), 0, plan)
    pool = inp.reader._workers_pool
    pool._stop_event.set()  # workers stop producing while the reader still counts as running
    for worker in pool._workers:
        worker.join()
    for results in pool._results_queues:
        while True:
            try:
                results.get_nowait()
            except queue.Empty:
                break
    consumer = threading.Thread(target=lambda: list(sources.row_group_source(inp.reader)()), daemon=True)
    consumer.start()
    consumer.join(0.5)
    assert consumer.is_alive()  # blocked inside the reader
    inp.close()
    consumer.join(5)
    assert not consumer.is_alive()
