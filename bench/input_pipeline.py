"""Training input throughput: our petastorm pipeline beside TFRecord, on the same 256-short-side JPEGs.

    .venv/bin/python bench/input_pipeline.py [--classes 8 --per-class 100] [--batches 40] [--workdir DIR] [--reuse]

Generates ~500x375 ~110 KB JPEGs, partitions them with the real job (Spark local[2], resize_short 256,
quality 90, TFRecord shards too), so the Parquet dataset and the TFRecord shards hold the same bytes. Then, in
one process, with TensorFlow's thread pools limited to the machine's cores, it prints images/s of:

  * floor:    preprocess_train (decode-and-crop, resize to 224, flip, normalise) over in-memory bytes, 1 thread;
  * reader:   our petastorm stream alone (row groups → rows, no decode), to see what the reader costs;
  * ours:     the whole training pipeline (reader.open_train_dataset: petastorm → shuffle → augment → batch);
  * tfrecord: the same preprocess_train over tf.data.TFRecordDataset of the shards (parse ``image/encoded``);

and ours / tfrecord. Figures are measured after a warm-up, over a fixed number of batches, and are printed
per core so they compare across machines; the ratio is the figure to watch.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger("bench.input_pipeline")

IMAGE_SIZE = 224
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _prepare(work: Path, classes: int, per_class: int, reuse: bool) -> Path:
    """Generate realistic JPEGs and partition them with the real job; returns the dataset directory."""
    out = work / "dataset"
    if reuse and (out / "manifest.json").exists():
        return out
    shutil.rmtree(work, ignore_errors=True)
    from imagenet_spark.config import PartitionConfig, resolve
    from imagenet_spark.data.fake import FakeSpec, write_ilsvrc

    t0 = time.perf_counter()
    write_ilsvrc(work / "raw", FakeSpec(num_classes=classes, train_per_class=per_class, val_per_class=0,
                                        realistic=True, size_jitter=0.1))
    blobs = list((work / "raw" / "train").rglob("*.JPEG"))
    mean_kb = sum(p.stat().st_size for p in blobs) / len(blobs) / 1000
    print(f"generated {len(blobs)} JPEGs ({mean_kb:.0f} KB mean) in {time.perf_counter() - t0:.1f} s")

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from imagenet_spark.jobs.partition import run_partition
    from imagenet_spark.spark.session import build_session

    spark = build_session("bench-input", master="local[2]",
                          conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    try:
        cfg = resolve(PartitionConfig, explicit=dict(input=str(work / "raw"), output=str(out), resize_short=256,
                                                     quality=90, tfrecord=True, tfrecord_train_shards=8,
                                                     tfrecord_validation_shards=1))
        manifest = run_partition(spark, cfg)
    finally:
        spark.stop()
    print(f"partitioned: {manifest['split_sizes']}, {manifest['bytes']['per_image'] / 1000:.1f} KB/image, "
          f"{manifest['row_groups']['train']} row groups of {manifest['rows_per_row_group']}")
    return out


@dataclass(frozen=True)
class Rate:
    """Images per wall-clock second, and per CPU-second of this process (all its threads).

    Both, because a shared machine makes wall-clock figures depend on the neighbours: images per CPU-second
    is what one core delivers when it is ours, and is the fair "per core" figure under load."""

    wall: float
    cpu: float

    def __str__(self) -> str:
        return f"{self.wall:6.0f} images/s, {self.cpu:6.0f} per CPU-second"


def _rate(batches: Iterable[Any], *, warmup: int, count: int, per_batch: Callable[[Any], int]) -> Rate:
    """Rates over ``count`` batches after ``warmup`` batches (pipelines fill their buffers during warm-up)."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    images = 0
    for _ in range(count):
        images += per_batch(next(it))
    return Rate(images / (time.perf_counter() - wall), images / (time.process_time() - cpu))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40, help="measured batches per pipeline")
    parser.add_argument("--warmup", type=int, default=8, help="batches before measuring")
    parser.add_argument("--reader-workers", type=int, default=2, help="petastorm reader threads")
    parser.add_argument("--shuffle-buffer", type=int, default=1024)
    parser.add_argument("--workdir", default="/tmp/bench-input")
    parser.add_argument("--reuse", action="store_true", help="reuse a dataset left in --workdir by a previous run")
    args = parser.parse_args()
    from imagenet_spark import logs

    logs.configure("WARNING")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data = _prepare(Path(args.workdir), args.classes, args.per_class, args.reuse)

    import tensorflow as tf

    cores = _cores()
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    tf.config.threading.set_intra_op_parallelism_threads(cores)

    from imagenet_spark.config import TrainConfig, resolve
    from imagenet_spark.data import reader
    from imagenet_spark.data.augment import preprocess_train
    from imagenet_spark.distribute.context import WorkerContext

    def limit(ds: Any, threads: int) -> Any:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        return ds.with_options(options)

    n = args.batch
    steps = dict(warmup=args.warmup, count=args.batches)
    print(f"machine: {cores} cores; batch {n}, {args.batches} batches after {args.warmup} of warm-up, "
          f"{IMAGE_SIZE}x{IMAGE_SIZE} random-resized crops")
    images_of = lambda b: int(b[0].shape[0])  # noqa: E731

    # floors: the per-image work alone, one thread, over bytes already in memory
    tfrecords = sorted(str(p) for p in (data / "tfrecord").glob("train-*"))
    blobs = [r.numpy() for r in tf.data.TFRecordDataset(tfrecords).map(
        lambda r: tf.io.parse_single_example(r, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})[
            "image/encoded"]).take(512)]
    key = tf.constant(1, tf.int64)

    def one_thread(fn: Callable[[Any, Any], Any]) -> Rate:
        ds = tf.data.Dataset.from_tensor_slices(blobs).repeat().enumerate().map(fn).batch(n)
        return _rate(limit(ds, 1), per_batch=lambda b: int(b.shape[0]), **steps)

    decode = one_thread(lambda i, b: tf.shape(tf.image.decode_jpeg(b, channels=3)))
    print(f"floor     full JPEG decode only, 1 thread:       {decode}")
    floor = one_thread(lambda i, b: preprocess_train(b, image_size=IMAGE_SIZE, mean=MEAN, std=STD,
                                                     seed=tf.stack([key, 2 * i])))
    print(f"floor     preprocess_train, 1 thread:            {floor}")

    cfg = resolve(TrainConfig, explicit=dict(data=str(data), model_dir="/tmp/unused", model="resnet50", workers=1,
                                             global_batch_size=n, shuffle_buffer=args.shuffle_buffer,
                                             reader_workers=args.reader_workers, epochs=2, warmup_epochs=0))
    ctx = WorkerContext(rank=0, size=1)
    plan = reader.load_plan(str(data), "train", workers=1, per_worker_batch=n)

    # reader alone: the same petastorm reader, consumed in Python with no TensorFlow and no decode
    from petastorm import make_batch_reader

    def rows(r: Any) -> Iterable[int]:
        pending = 0
        for group in r:
            pending += len(group.label)
            while pending >= n:
                pending -= n
                yield n

    petastorm_reader = make_batch_reader(reader.petastorm_url(reader.split_uri(str(data), "train")),
                                         schema_fields=["image", "label"], workers_count=args.reader_workers,
                                         num_epochs=None, seed=1)
    try:
        raw = _rate(rows(petastorm_reader), per_batch=lambda k: k, **steps)
    finally:
        petastorm_reader.stop()
        petastorm_reader.join()
    print(f"reader    petastorm rows only, no decode:        {raw}")

    with reader.open_train_dataset(data=str(data), cfg=cfg, ctx=ctx, plan=plan, num_classes=args.classes,
                                   image_size=IMAGE_SIZE, mean=MEAN, std=STD, seed=1) as inp:
        ours = _rate(limit(inp.dataset, cores), per_batch=images_of, **steps)
    print(f"ours      petastorm pipeline, {cores} cores:          {ours}; {ours.wall / cores:6.0f} images/s per core")

    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/class/label": tf.io.FixedLenFeature([], tf.int64)}

    def tf_transform(i: Any, record: Any) -> tuple[Any, Any]:
        parsed = tf.io.parse_single_example(record, features)
        image = preprocess_train(parsed["image/encoded"], image_size=IMAGE_SIZE, mean=MEAN, std=STD,
                                 seed=tf.stack([key, i * 2]))
        return image, tf.one_hot(parsed["image/class/label"] - 1, args.classes)

    tfr = tf.data.TFRecordDataset(tf.data.Dataset.from_tensor_slices(tfrecords).repeat(),
                                  num_parallel_reads=len(tfrecords))
    tfr = tfr.shuffle(args.shuffle_buffer, seed=1).enumerate()
    tfr = tfr.map(tf_transform, num_parallel_calls=tf.data.AUTOTUNE).batch(n, drop_remainder=True)
    tfrecord = _rate(limit(tfr.prefetch(tf.data.AUTOTUNE), cores), per_batch=images_of, **steps)
    print(f"tfrecord  TFRecordDataset pipeline, {cores} cores:    {tfrecord}; {tfrecord.wall / cores:6.0f} images/s "
          "per core")
    print(f"ratio     ours / tfrecord: {ours.wall / tfrecord.wall:.2f} (wall), {ours.cpu / tfrecord.cpu:.2f} (per "
          f"CPU-second); ours per CPU-second / preprocess floor: {ours.cpu / floor.cpu:.2f}")
    print(f"target    1000 images/s per core: {'met' if ours.wall / cores >= 1000 else 'NOT met'} "
          f"({ours.wall / cores:.0f} per core wall, {ours.cpu:.0f} per CPU-second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
