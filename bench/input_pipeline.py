"""Training input throughput: the uint8 pipeline against the old float one and TFRecord, same JPEGs, same run.

    .venv/bin/python bench/input_pipeline.py [--classes 8 --per-class 100] [--batches 40] [--rounds 3]
                                             [--source photos|synthetic] [--workdir DIR] [--reuse] [--quick]

The source images (``--source``), ~500x375 JPEGs either way, partitioned with the real job (Spark local[2],
resize_short 256, quality 90, TFRecord shards too), so the Parquet dataset and the TFRecord shards hold the
same bytes:

  * ``photos`` (the default): real photographs, bench/photo_tree.py's pool (seeded crops of scikit-learn's two
    sample photographs, q85-95; 48 KB mean), stored at 29.4 KB per image, as our partition of real ImageNet
    photos is (29-32 KB). Why the default: decoding is most of the per-image work and its cost follows the
    stored bytes.
  * ``synthetic``: ``imagenet_spark.data.fake``'s realistic generator (what this bench used before), 110 KB
    sources stored at 48.3 KB per image: a harder, less realistic case, kept for comparison with earlier
    figures (the crop decode alone is ~1.1-1.3x slower per image than on the photos).

The partition manifest's bytes per stored image is printed, and named in the emitted figures' data shape. Then, in
one process, with TensorFlow's pools and the pipelines sized to the machine's cores (as a worker is sized to its
task's CPUs), it prints images/s of:

  * build: ``open_train_dataset`` to its first batch, first thing in the process (autograph's conversion and
    tracing of the map function included: what a fresh worker pays at launch, issue #13 goal 3);
  * floors, 1 thread over bytes in memory: full JPEG decode; the random crop window decoded alone (what
    ``augment_train`` decodes: the rest of its time is the resize, the rounding and the flip);
    ``preprocess_train`` (the old per-image work: decode-and-crop, resize to 224, flip, cast and normalise to
    float32); ``augment_train`` (the new: the same crop, rounded to uint8, flip on uint8);
  * reader: the training reader alone (pyarrow row groups, or petastorm on the legacy stack), no decode;
  * old:   the training stream as it was: ``preprocess_train`` in the map, float32 batches normalised on the CPU;
  * ours:  ``reader.open_train_dataset`` as the jobs run it: uint8 batches (the step normalises on the device);
  * ours + normalise: ours with the step's ``normalize`` applied to each batch on the CPU as well, what a
    CPU-only worker pays in total (an accelerator does it in the step for free);
  * tfrecord: the same ``augment_train`` over ``tf.data.TFRecordDataset`` of the shards.

Old, ours, ours + normalise and tfrecord run in alternation, ``--rounds`` times, and the medians are reported:
on a shared machine the neighbours' load then falls on all of them alike. Figures are per core (wall images/s
divided by the cores) and per CPU-second of this process; the ratios are the figures to watch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from figures import Figure, emit, parse_sized

log = logging.getLogger("bench.input_pipeline")

IMAGE_SIZE = 224
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
PIPELINES = ("old", "ours", "ours + normalise", "tfrecord")
Source = Literal["photos", "synthetic"]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _write_sources(raw: Path, source: Source, classes: int, per_class: int) -> None:
    """The source tree under ``raw``: real photographs (a ``folders`` tree of hard links into a pool of distinct
    photos kept beside it, so a second run with another shape reuses the pool) or the fake generator's."""
    if source == "photos":
        from photo_tree import make_pool, make_tree

        make_tree(raw, make_pool(raw.parent.parent / "photo-pool", classes * per_class), classes, per_class)
        return
    from imagenet_spark.data.fake import FakeSpec, write_ilsvrc

    write_ilsvrc(raw, FakeSpec(num_classes=classes, train_per_class=per_class, val_per_class=0,
                               realistic=True, size_jitter=0.1))


def _prepare(work: Path, source: Source, classes: int, per_class: int, reuse: bool) -> tuple[Path, float]:
    """Make the source JPEGs and partition them with the real job; returns the dataset directory and its stored
    bytes per image (the manifest's)."""
    out = work / "dataset"
    if reuse and (out / "manifest.json").exists():
        return out, json.loads((out / "manifest.json").read_text())["bytes"]["per_image"]
    shutil.rmtree(work, ignore_errors=True)
    from imagenet_spark.config import PartitionConfig, resolve

    t0 = time.perf_counter()
    _write_sources(work / "raw", source, classes, per_class)
    blobs = list((work / "raw" / "train").rglob("*.JPEG"))
    mean_kb = sum(p.stat().st_size for p in blobs) / len(blobs) / 1000
    print(f"{source}: {len(blobs)} source JPEGs ({mean_kb:.0f} KB mean) in {time.perf_counter() - t0:.1f} s")

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
    return out, float(manifest["bytes"]["per_image"])


@dataclass(frozen=True)
class Rate:
    """Images per wall-clock second, and per CPU-second of this process (all its threads).

    Both, because a shared machine makes wall-clock figures depend on the neighbours: images per CPU-second
    is what one core delivers when it is ours, and is the fair "per core" figure under load."""

    wall: float
    cpu: float

    def __str__(self) -> str:
        return f"{self.wall:6.0f} images/s, {self.cpu:6.0f} per CPU-second"


def _rate(batches: Iterable[Any], *, warmup: int, count: int) -> Rate:
    """Rates over ``count`` batches after ``warmup`` batches (pipelines fill their buffers during warm-up)."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    images = 0
    for _ in range(count):
        batch = next(it)
        images += int(batch[0].shape[0]) if isinstance(batch, tuple) else int(batch)
    return Rate(images / (time.perf_counter() - wall), images / (time.process_time() - cpu))


def _median(rates: list[Rate]) -> Rate:
    return Rate(statistics.median(r.wall for r in rates), statistics.median(r.cpu for r in rates))


def _floors(blobs: list[bytes], *, batch: int, steps: dict[str, int]) -> dict[str, Rate]:
    """The per-image work alone, one thread, over bytes already in memory."""
    import tensorflow as tf

    from imagenet_spark.data.augment import augment_train, preprocess_train, random_crop_window

    key = tf.constant(1, tf.int64)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1

    def one_thread(fn: Callable[[Any, Any], Any]) -> Rate:
        ds = tf.data.Dataset.from_tensor_slices(blobs).repeat().enumerate().map(fn).batch(batch)
        return _rate(((b,) for b in ds.with_options(options)), **steps)

    return {
        "full JPEG decode only": one_thread(lambda i, b: tf.shape(tf.image.decode_jpeg(b, channels=3))),
        "random crop window decoded only (augment_train's decode)": one_thread(lambda i, b: tf.shape(
            tf.image.decode_and_crop_jpeg(b, random_crop_window(b, tf.stack([key, 2 * i])), channels=3,
                                          dct_method="INTEGER_FAST"))),
        "preprocess_train (old, float32)": one_thread(lambda i, b: preprocess_train(
            b, image_size=IMAGE_SIZE, mean=MEAN, std=STD, seed=tf.stack([key, 2 * i]))),
        "augment_train (new, uint8)": one_thread(lambda i, b: augment_train(
            b, image_size=IMAGE_SIZE, seed=tf.stack([key, 2 * i]))),
    }


def _reader_only(data: Path, cfg: Any, *, batch: int, steps: dict[str, int]) -> tuple[str, Rate]:
    """The training reader the pipeline uses on this stack, consumed in Python: no TensorFlow, no decode."""
    from imagenet_spark.data import metadata, sources
    from imagenet_spark.distribute.stack import resolve_train_reader

    kind = resolve_train_reader(cfg.input.train_reader)
    uri = metadata.split_uri(str(data), "train")
    if kind == "parquet":
        source: Any = sources.ParquetRowGroups(uri, metadata.row_groups(str(data), "train"), seed=1)
    else:
        from petastorm import make_batch_reader

        source = make_batch_reader(sources.petastorm_url(uri), schema_fields=["image", "label"],
                                   workers_count=cfg.input.reader_workers, num_epochs=None, seed=1)

    def batches() -> Iterable[int]:
        pending = 0
        for group in source:
            pending += len(group.label)
            while pending >= batch:
                pending -= batch
                yield batch

    try:
        return kind, _rate(batches(), **steps)
    finally:
        source.stop()
        source.join()


def _first_batch_seconds(data: Path, cfg: Any, ctx: Any, plan: Any, *, classes: int) -> float:
    """Seconds from calling ``open_train_dataset`` to its first batch: tracing (and autograph's conversion of)
    the map function, opening the reader, filling the first batch. Cold only in a process that has not
    traced the transform yet (autograph caches its conversions): what each fresh worker pays at launch."""
    from imagenet_spark.data import reader

    started = time.perf_counter()
    with reader.open_train_dataset(data=str(data), cfg=cfg, ctx=ctx, plan=plan, num_classes=classes,
                                   image_size=IMAGE_SIZE, seed=1) as inp:
        next(iter(inp.dataset))
        return time.perf_counter() - started


def _old_stream(data: Path, cfg: Any, ctx: Any, plan: Any, *, classes: int, seed: int) -> tuple[Any, Any]:
    """The training stream before uint8: ``open_train_dataset``'s pipeline with ``preprocess_train`` in the map,
    float32 images normalised on the CPU; same reader, shuffle, seeds, parallelism and options."""
    import tensorflow as tf

    from imagenet_spark.data import metadata, reader, sources
    from imagenet_spark.data.augment import preprocess_train
    from imagenet_spark.distribute.threads import data_options

    source = sources.ParquetRowGroups(metadata.split_uri(str(data), "train"), metadata.row_groups(str(data), "train"),
                                      seed=reader._mix_seed(seed, 0, reader._SALT_PETASTORM))
    key = tf.constant(reader._mix_seed(seed, ctx.rank, reader._SALT_AUGMENT), tf.int64)

    def transform(index: Any, row: Any) -> tuple[Any, Any]:
        image = preprocess_train(row[0], image_size=IMAGE_SIZE, mean=MEAN, std=STD, seed=tf.stack([key, index * 2]))
        return image, tf.one_hot(row[1], classes, dtype=tf.float32)

    ds = tf.data.Dataset.from_generator(sources.row_group_source(source), output_signature=(
        tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32))).unbatch()
    ds = ds.shuffle(cfg.input.shuffle_buffer, seed=reader._mix_seed(seed, ctx.rank, reader._SALT_SHUFFLE)).enumerate()
    ds = ds.map(transform, num_parallel_calls=ctx.cpus, deterministic=True)
    ds = ds.batch(plan.per_worker_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(data_options(ctx.cpus)), source


def _tfrecord_stream(tfrecords: list[str], *, classes: int, batch: int, shuffle: int, cpus: int) -> Any:
    """``augment_train`` over the TFRecord shards (parse ``image/encoded``), sized like ours."""
    import tensorflow as tf

    from imagenet_spark.data.augment import augment_train
    from imagenet_spark.distribute.threads import data_options

    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/class/label": tf.io.FixedLenFeature([], tf.int64)}
    key = tf.constant(1, tf.int64)

    def transform(i: Any, record: Any) -> tuple[Any, Any]:
        parsed = tf.io.parse_single_example(record, features)
        image = augment_train(parsed["image/encoded"], image_size=IMAGE_SIZE, seed=tf.stack([key, i * 2]))
        return image, tf.one_hot(parsed["image/class/label"] - 1, classes)

    ds = tf.data.TFRecordDataset(tf.data.Dataset.from_tensor_slices(tfrecords).repeat(),
                                 num_parallel_reads=len(tfrecords))
    ds = ds.shuffle(shuffle, seed=1).enumerate()
    ds = ds.map(transform, num_parallel_calls=cpus, deterministic=True).batch(batch, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(data_options(cpus))


def _one_round(data: Path, cfg: Any, ctx: Any, plan: Any, tfrecords: list[str], *, classes: int,
               steps: dict[str, int]) -> dict[str, Rate]:
    """Each pipeline once, in order, over the same dataset."""
    from imagenet_spark.data import reader
    from imagenet_spark.data.augment import normalize

    rates: dict[str, Rate] = {}
    old, source = _old_stream(data, cfg, ctx, plan, classes=classes, seed=1)
    try:
        rates["old"] = _rate(old, **steps)
    finally:
        source.stop()
    with reader.open_train_dataset(data=str(data), cfg=cfg, ctx=ctx, plan=plan, num_classes=classes,
                                   image_size=IMAGE_SIZE, seed=1) as inp:
        rates["ours"] = _rate(inp.dataset, **steps)
    with reader.open_train_dataset(data=str(data), cfg=cfg, ctx=ctx, plan=plan, num_classes=classes,
                                   image_size=IMAGE_SIZE, seed=1) as inp:
        rates["ours + normalise"] = _rate(inp.dataset.map(lambda x, y: (normalize(x, MEAN, STD), y)), **steps)
    rates["tfrecord"] = _rate(_tfrecord_stream(tfrecords, classes=classes, batch=plan.per_worker_batch,
                                               shuffle=cfg.input.shuffle_buffer, cpus=ctx.cpus), **steps)
    return rates


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=40, help="measured batches per pipeline and round")
    parser.add_argument("--warmup", type=int, default=8, help="batches before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the four pipelines (medians)")
    parser.add_argument("--reader-workers", type=int, default=2, help="petastorm reader threads (legacy stack)")
    parser.add_argument("--shuffle-buffer", type=int, default=1024)
    parser.add_argument("--source", choices=get_args(Source), default="photos",
                        help="real photographs (stored ~30 KB per image, as real ImageNet) or the fake generator's "
                             "synthetic images (stored ~48 KB)")
    parser.add_argument("--workdir", default="/tmp/bench-input", help="a folder per --source is made under it")
    parser.add_argument("--reuse", action="store_true", help="reuse a dataset left in --workdir by a previous run")
    return parse_sized(parser, {"per_class": 50, "batches": 20, "warmup": 4, "rounds": 2}, argv)


def _report(rates: dict[str, Rate], cores: int, shape: str) -> None:
    """Print the medians and ratios, and emit them as figures for make bench."""
    for name in PIPELINES:
        print(f"{name:17s} {cores} cores: {rates[name]}; {rates[name].wall / cores:6.0f} images/s per core")
    ours, old, tfr = rates["ours"], rates["old"], rates["tfrecord"]
    print(f"ratio     ours / old: {ours.wall / old.wall:.2f} (wall), {ours.cpu / old.cpu:.2f} (per CPU-second); "
          f"ours / tfrecord: {ours.wall / tfr.wall:.2f} (wall), {ours.cpu / tfr.cpu:.2f} (per CPU-second); "
          f"ours + normalise / old: {rates['ours + normalise'].wall / old.wall:.2f} (wall)")
    print(f"target    1000 images/s per core: {'met' if ours.wall / cores >= 1000 else 'NOT met'} "
          f"({ours.wall / cores:.0f} per core wall, {ours.cpu:.0f} per CPU-second)")
    for baseline in ("old", "tfrecord"):
        emit(Figure(script="input_pipeline", figure="training input pipeline, uint8 224 crops",
                    value=ours.wall / cores, baseline_name=f"{baseline} pipeline",
                    baseline=rates[baseline].wall / cores,
                    unit="images/s per core", shape=shape))
    emit(Figure(script="input_pipeline", figure="training input pipeline, uint8 224 crops", value=ours.wall / cores,
                baseline_name="issue #13 goal 2", baseline=1000.0, unit="images/s per core", shape=shape))


def main() -> int:
    args = _parse()
    from imagenet_spark import logs

    logs.configure("WARNING")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data, stored = _prepare(Path(args.workdir) / args.source, args.source, args.classes, args.per_class, args.reuse)

    import tensorflow as tf

    cores = _cores()
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    tf.config.threading.set_intra_op_parallelism_threads(cores)

    from imagenet_spark.config import resolve
    from imagenet_spark.data import metadata
    from imagenet_spark.distribute.context import WorkerContext
    from imagenet_spark.train_config import TrainConfig

    n = args.batch
    steps = dict(warmup=args.warmup, count=args.batches)
    print(f"machine: {cores} cores; batch {n}, {args.batches} batches after {args.warmup} of warm-up, "
          f"{IMAGE_SIZE}x{IMAGE_SIZE} random-resized crops, medians of {args.rounds} alternating rounds")
    cfg = resolve(TrainConfig, explicit={"data": str(data), "model_dir": "/tmp/unused", "model": "resnet50",
                                         "workers": 1, "global_batch_size": n, "epochs": 2,
                                         "input.shuffle_buffer": args.shuffle_buffer,
                                         "input.reader_workers": args.reader_workers, "recipe.warmup_epochs": 0})
    ctx = WorkerContext(rank=0, size=1, cpus=cores)  # sized as a worker is to its task's CPUs
    plan = metadata.load_plan(str(data), "train", workers=1, per_worker_batch=n)
    # first, before anything else traces the transform in this process: what a fresh worker pays
    print(f"build     open_train_dataset -> first batch, cold: "
          f"{_first_batch_seconds(data, cfg, ctx, plan, classes=args.classes):.2f} s")
    tfrecords = sorted(str(p) for p in (data / "tfrecord").glob("train-*"))
    blobs = [r.numpy() for r in tf.data.TFRecordDataset(tfrecords).map(
        lambda r: tf.io.parse_single_example(r, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})[
            "image/encoded"]).take(512)]
    for name, rate in _floors(blobs, batch=n, steps=steps).items():
        print(f"floor     {name}, 1 thread: {rate}")

    kind, raw = _reader_only(data, cfg, batch=n, steps=steps)
    print(f"reader    {kind} rows only, no decode: {raw}")
    rounds = [_one_round(data, cfg, ctx, plan, tfrecords, classes=args.classes, steps=steps)
              for _ in range(args.rounds)]
    for i, r in enumerate(rounds):
        print(f"round {i}: " + ", ".join(f"{k} {v.wall / cores:.0f}/core" for k, v in r.items()))
    _report({k: _median([r[k] for r in rounds]) for k in PIPELINES}, cores,
            f"{args.classes} classes x {args.per_class} {args.source} JPEGs (~500x375 -> 256 short side, q90, "
            f"{stored / 1000:.0f} KB stored), batch {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
