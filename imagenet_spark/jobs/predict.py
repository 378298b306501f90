"""The batch-inference job: classify a folder of images or a dataset split on the executors into Parquet.

The driver checks everything it can without TensorFlow (options, the model dir, labels against the export, the
output), turns the source into an RDD, and writes one row per image; each partition loads the SavedModel once
with :class:`imagenet_spark.serving.predict.Predictor` (TensorFlow is imported on the executor) and streams its
images through in batches, so executor memory holds one batch whatever the partition size. ``imagenet-spark
predict`` runs it with ``--output``, and locally (:func:`imagenet_spark.serving.predict.predict_files`) without.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import math
import posixpath
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from imagenet_spark.data import fs
from imagenet_spark.layout import COMMON_METADATA, DatasetDir
from imagenet_spark.serving.labels import check_labels_match_export, load_labels, parse_labels, saved_model_dir
from imagenet_spark.serving.predict import (
    IMAGE_EXTENSIONS,
    ImageInput,
    PredictError,
    Predictor,
    check_predict_options,
    format_predictions,
    list_images,
    log_conversions,
    predict_files,
    read_input,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Source:
    """What the executors classify: ``rdd`` of ``(uri, relpath)`` for a folder, of dataset Rows otherwise."""

    rdd: Any
    dataset: bool
    true_synsets: tuple[str, ...] | None
    described: str


def _output_schema(T: Any, *, with_truth: bool) -> Any:  # noqa: N803 - pyspark.sql.types, imported by the caller
    fields = [
        T.StructField("key", T.StringType(), False),
        T.StructField("filename", T.StringType(), True),
        T.StructField("class", T.IntegerType(), True),
        T.StructField("synset", T.StringType(), True),
        T.StructField("name", T.StringType(), True),
        T.StructField("probability", T.FloatType(), True),
        T.StructField("top_k_synsets", T.ArrayType(T.StringType(), False), False),
        T.StructField("top_k_probabilities", T.ArrayType(T.FloatType(), False), False),
    ]
    if with_truth:
        fields += [T.StructField("label", T.IntegerType(), True), T.StructField("true_synset", T.StringType(), True)]
    fields.append(T.StructField("error", T.StringType(), True))
    return T.StructType(fields)


def _partition_inputs(rows: Iterable[Any], *, dataset: bool,
                      true_synsets: Sequence[str] | None) -> Iterator[ImageInput]:
    for row in rows:
        if dataset:
            label = int(row["label"])
            synset = true_synsets[label] if true_synsets and 0 <= label < len(true_synsets) else str(row["synset"])
            yield ImageInput(row["filename"], bytes(row["image"]), None, (row["filename"], label, synset))
        else:
            uri, relpath = row
            yield read_input(uri, uri, (relpath,))


def _predict_partition(rows: Iterable[Any], *, saved_model: str, labels: Sequence[tuple[str, str]], top_k: int,
                       batch_size: int, dataset: bool, true_synsets: Sequence[str] | None,
                       cpus: int) -> Iterator[tuple[Any, ...]]:
    """Executor side: load the SavedModel once for the partition, stream its images through in batches.

    Rows are ``(uri, relpath)`` for a folder source, Spark Rows ``(filename, image, label, synset)`` for a
    dataset. Empty partitions return before TensorFlow is imported.
    """
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return
    from imagenet_spark.distribute.threads import configure

    # Sized to the task (spark.task.cpus), not the machine the executor's other tasks share; the same helper as
    # the training workers. A reused Python worker keeps its first task's sizing.
    configure(cpus)
    predictor = Predictor(saved_model, labels, top_k=top_k, batch_size=batch_size)
    inputs = _partition_inputs(itertools.chain([first], iterator), dataset=dataset, true_synsets=true_synsets)
    converted: list[dict[str, Any]] = []
    for item, result in predictor.predict(inputs):
        if result.get("converted"):
            converted.append(result)
        top = result["top"]
        head = top[0] if top else {"synset": None, "name": None, "probability": None}
        values: tuple[Any, ...] = (item.key, item.extra[0], result["class"], head["synset"], head["name"],
                                   head["probability"], [t["synset"] for t in top], [t["probability"] for t in top])
        if dataset:
            values += (item.extra[1], item.extra[2])
        yield (*values, result.get("error"))
    log_conversions(converted, f"predict partition of {saved_model}")  # in the executor's log


def _dataset_split(source: str, split: str) -> tuple[str, str | None] | None:
    """``(split uri, labels.txt uri or None)`` when ``source`` is a dataset root or one of its splits."""
    dataset = DatasetDir(source)
    if fs.is_file(dataset.manifest):
        split_uri = dataset.split(split)
        if not fs.is_dir(split_uri):
            raise PredictError(f"source {source}: a dataset without a {split}/ split; pass split= one of its "
                               "splits (train, validation)")
        return split_uri, dataset.labels if fs.is_file(dataset.labels) else None
    # A split as the partition job writes it: _common_metadata and synset=<wnid>/ folders; or any Parquet folder.
    # Only the top level is listed: a folder of images may hold many thousands of files.
    if fs.is_dir(source) and any(e.relpath == COMMON_METADATA or e.relpath.endswith(".parquet")
                                 or e.relpath.startswith("synset=") for e in fs.list_dir(source)):
        labels_uri = DatasetDir(posixpath.dirname(source.rstrip("/"))).labels
        return source, labels_uri if fs.is_file(labels_uri) else None
    return None


def _dataset_source(spark: Any, split_uri: str, labels_uri: str | None, num_partitions: int | None) -> _Source:
    from pyspark.sql import functions as F  # noqa: N812

    true_synsets = None
    if labels_uri:
        true_synsets = tuple(s for s, _ in parse_labels(fs.read_text(labels_uri), source=labels_uri))
    frame = spark.read.parquet(split_uri)
    missing = {"image", "filename", "label"} - set(frame.columns)
    if missing:
        raise PredictError(f"source {split_uri}: Parquet without column(s) {sorted(missing)} (has "
                           f"{frame.columns}); pass a dataset written by the partition job or a folder of images")
    columns = ["filename", "image", "label", "synset" if "synset" in frame.columns else F.lit(None).alias("synset")]
    rdd = frame.select(*columns).rdd
    if num_partitions:
        rdd = rdd.repartition(num_partitions)
    described = f"{split_uri} ({'labels ' + labels_uri if labels_uri else 'no labels.txt: synset column'})"
    return _Source(rdd, True, true_synsets, described)


def _folder_source(spark: Any, source: str, batch_size: int, num_partitions: int | None) -> _Source:
    sc = spark.sparkContext
    found = list_images(source)
    if not found:
        raise PredictError(f"source {source}: no images ({'/'.join(IMAGE_EXTENSIONS)}) and not a dataset "
                           "written by the partition job; pass a folder of images or a dataset")
    # Enough partitions to use the cluster, few enough that loading the model stays a small cost.
    slices = num_partitions or max(1, min(len(found), sc.defaultParallelism * 4, math.ceil(len(found) / batch_size)))
    rdd = sc.parallelize([(e.uri, e.relpath) for e in found], slices)
    return _Source(rdd, False, None, f"{len(found)} images under {source}")


def _write_and_summarise(spark: Any, predictions: Any, *, source: str, output: str, overwrite: bool,
                         dataset: bool) -> dict[str, Any]:
    """Write the predictions, then read them back for the row and error counts (and accuracy with truth)."""
    from pyspark.sql import functions as F  # noqa: N812

    from imagenet_spark.spark.jobs import job_group

    with job_group(spark, f"imagenet-spark predict {source} -> {output}"):
        predictions.write.mode("overwrite" if overwrite else "errorifexists").parquet(output)
        written = spark.read.parquet(output)
        aggregates = [F.count(F.lit(1)).alias("rows"), F.count("error").alias("errors")]
        if dataset:
            aggregates += [F.avg((F.col("synset") == F.col("true_synset")).cast("double")).alias("top1"),
                           F.avg(F.array_contains("top_k_synsets", F.col("true_synset")).cast("double")).alias("topk")]
        summary: dict[str, Any] = written.agg(*aggregates).first().asDict()
    return summary


def _check_options(top_k: int, batch_size: int, num_partitions: int | None) -> None:
    check_predict_options(top_k, batch_size)
    if num_partitions is not None and (isinstance(num_partitions, bool) or not isinstance(num_partitions, int)
                                       or num_partitions < 1):
        raise PredictError(f"num_partitions={num_partitions!r}: must be a positive integer or None (automatic)")


def predict_on_spark(
    spark: Any,
    model_dir: str,
    source: str,
    output: str,
    *,
    top_k: int = 5,
    batch_size: int = 64,
    split: str = "validation",
    num_partitions: int | None = None,
    overwrite: bool = False,
) -> int:
    """Batch inference on the executors; writes one Parquet row per image to ``output``; returns the row count.

    ``source`` is a folder of images (any nesting; hidden files and non-image extensions skipped) or a
    dataset written by the partition job: its root (``split`` is read, validation by default) or one split.
    Columns: ``key`` (the file's URI, or the dataset's ``filename``), ``filename`` (relative), ``class``,
    ``synset``, ``name``, ``probability`` (top-1), ``top_k_synsets``, ``top_k_probabilities``; for dataset
    sources also ``label`` and ``true_synset``; ``error`` for images that could not be decoded (their class
    is null: every input gets a row, none vanishes). Model dir and source must be readable by executors.
    ``output`` must not exist unless ``overwrite``.
    """
    from pyspark.sql import types as T  # noqa: N812

    _check_options(top_k, batch_size, num_partitions)
    saved_model = saved_model_dir(model_dir)
    labels = load_labels(model_dir)
    check_labels_match_export(saved_model, labels)
    if fs.exists(output) and not overwrite:
        raise PredictError(f"output {output}: already exists; choose another output or pass overwrite=True "
                           "(--overwrite) to replace it")
    started = time.monotonic()
    cpus = int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))
    found = _dataset_split(source, split)
    src = (_dataset_source(spark, *found, num_partitions) if found is not None
           else _folder_source(spark, source, batch_size, num_partitions))
    log.info("predicting %s with %s -> %s", src.described, saved_model, output)
    partition_fn = functools.partial(_predict_partition, saved_model=saved_model, labels=labels, top_k=top_k,
                                     batch_size=batch_size, dataset=src.dataset, true_synsets=src.true_synsets,
                                     cpus=cpus)
    predictions = spark.createDataFrame(src.rdd.mapPartitions(partition_fn), _output_schema(T, with_truth=src.dataset))
    summary = _write_and_summarise(spark, predictions, source=source, output=output, overwrite=overwrite,
                                   dataset=src.dataset)
    rows = int(summary["rows"])
    accuracy = ""
    if src.dataset and summary.get("top1") is not None:
        accuracy = f"; top-1 {summary['top1']:.3f}, top-{top_k} {summary['topk']:.3f}"
    log.info("wrote %d predictions (%d errors) to %s in %.1f s%s", rows, summary["errors"], output,
             time.monotonic() - started, accuracy)
    return rows


def run_predict_cli(args: argparse.Namespace) -> int:
    """Print top-k per image (exit 1 if any image could not be classified), or run on Spark with --output."""
    if args.output:
        if len(args.inputs) != 1:
            raise PredictError(f"--output with {len(args.inputs)} inputs: pass one folder of images or one dataset")
        from imagenet_spark.spark.session import build_session, ship_package

        spark = build_session("imagenet-spark predict", master=args.master)
        ship_package(spark)
        predict_on_spark(spark, args.model_dir, args.inputs[0], args.output, top_k=args.top_k,
                         batch_size=args.batch_size or 64, split=args.split, overwrite=args.overwrite)
        return 0
    paths = [e.uri for source in args.inputs for e in list_images(source)]
    if not paths:
        raise PredictError(f"no images in {', '.join(args.inputs)} ({'/'.join(IMAGE_EXTENSIONS)})")
    results = predict_files(args.model_dir, paths, top_k=args.top_k, batch_size=args.batch_size or 32)
    log.info("predictions:\n%s", format_predictions(results))
    return 1 if any(r.get("error") for r in results) else 0
