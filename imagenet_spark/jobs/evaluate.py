"""The evaluation job: classify a dataset split on the executors, then aggregate the predictions with Spark.

Why from batch-inference output rather than a new loop: :func:`imagenet_spark.jobs.predict.predict_on_spark`
already classifies a split through the serving signature (the exact preprocessing serving uses) and writes one
row per image with its truth. Evaluation is then an aggregation over that table, done by Spark (ImageNet's
50,000 validation images never reach the driver); only one row per class and the top confused pairs are
collected and handed to :func:`imagenet_spark.serving.evaluation.assemble`, which the in-memory
:func:`~imagenet_spark.serving.evaluation.evaluate_rows` shares.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from imagenet_spark.jobs.predict import predict_on_spark
from imagenet_spark.serving.evaluation import Evaluation, EvaluationError, assemble
from imagenet_spark.serving.labels import load_labels

log = logging.getLogger(__name__)


def evaluate_table(frame: Any, *, names: Mapping[str, str] | None = None, k: int = 5,
                   top_confused: int = 10) -> Evaluation:
    """Evaluate a Spark DataFrame of predictions (predict_on_spark's output for a dataset) with Spark
    aggregations; only one row per class and the top confused pairs come back to the driver."""
    from pyspark.sql import functions as F  # noqa: N812

    missing = {"true_synset", "synset", "top_k_synsets"} - set(frame.columns)
    if missing:
        raise EvaluationError(f"predictions without column(s) {sorted(missing)} (has {frame.columns}). Fix: "
                              "evaluate predictions of a dataset split written by predict_on_spark.")
    hit1 = (F.col("synset") == F.col("true_synset")).cast("int")
    hitk = F.expr(f"array_contains(slice(top_k_synsets, 1, {int(k)}), true_synset)").cast("int")
    per_class_rows = (frame.groupBy("true_synset")
                      .agg(F.count(F.lit(1)).alias("n"), F.sum(F.coalesce(hit1, F.lit(0))).alias("t1"),
                           F.sum(F.coalesce(hitk, F.lit(0))).alias("tk"),
                           F.sum(F.col("synset").isNull().cast("int")).alias("errors"))
                      .collect())
    pair_rows = (frame.where(F.col("synset").isNotNull() & (F.col("synset") != F.col("true_synset")))
                 .groupBy("true_synset", "synset").count()
                 .orderBy(F.desc("count"), "true_synset", "synset").limit(max(top_confused * 4, 50)).collect())
    per_class = {r["true_synset"]: (int(r["n"]), int(r["t1"]), int(r["tk"])) for r in per_class_rows}
    pairs = {(r["true_synset"], r["synset"]): int(r["count"]) for r in pair_rows}
    return assemble(per_class, pairs, names=names or {}, k=k, errors=sum(int(r["errors"]) for r in per_class_rows),
                    top_confused=top_confused)


def evaluate_on_spark(spark: Any, model_dir: str, data: str, *, output: str, split: str = "validation",
                      top_k: int = 5, batch_size: int = 64, overwrite: bool = False,
                      top_confused: int = 10) -> Evaluation:
    """Classify ``data``'s ``split`` on the executors into ``output`` (Parquet, kept: it is the batch-inference
    table of the split) and evaluate it."""
    names = dict(load_labels(model_dir))
    rows = predict_on_spark(spark, model_dir, data, output, top_k=top_k, batch_size=batch_size, split=split,
                            overwrite=overwrite)
    result = evaluate_table(spark.read.parquet(output), names=names, k=min(top_k, len(names)),
                            top_confused=top_confused)
    log.info("evaluated %s on %s/%s: %d images, top-1 %.4f, top-%d %.4f (%d not classified)", model_dir, data, split,
             rows, result.top1, result.k, result.topk, result.errors)
    return result
