"""Evaluate an exported model on a dataset split: top-1/top-k, accuracy per class, the most-confused pairs.

Why from batch-inference output rather than a new loop: :func:`imagenet_spark.train.export.predict_on_spark`
already classifies a split on the executors through the serving signature (the exact preprocessing serving
uses) and writes one row per image with its truth. Evaluation is then an aggregation over that table, done
by Spark (ImageNet's 50,000 validation images never reach the driver), and only the small results (one row
per class, the top confused pairs) are collected. :func:`evaluate_rows` does the same in plain Python for
predictions already in memory (tests, a handful of images).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from imagenet_spark.errors import ImagenetSparkError

log = logging.getLogger(__name__)


class EvaluationError(ImagenetSparkError, ValueError):
    """Predictions we cannot evaluate (no truth column, no rows); the message names the input and the fix."""


@dataclass(frozen=True)
class ClassAccuracy:
    synset: str
    name: str
    images: int
    top1: float
    topk: float


@dataclass(frozen=True)
class ConfusedPair:
    true_synset: str
    true_name: str
    predicted_synset: str
    predicted_name: str
    count: int
    fraction: float  # of the true class's images


@dataclass(frozen=True)
class Evaluation:
    """Accuracy of a model on a split. ``per_class`` is sorted worst first; ``confused`` most frequent first."""

    images: int
    errors: int
    top1: float
    topk: float
    k: int
    per_class: tuple[ClassAccuracy, ...]
    confused: tuple[ConfusedPair, ...]

    def summary(self) -> dict[str, Any]:
        return {"images": self.images, "errors": self.errors, "top1": round(self.top1, 6),
                f"top{self.k}": round(self.topk, 6), "classes": len(self.per_class)}

    def per_class_rows(self) -> list[dict[str, Any]]:
        return [{"synset": c.synset, "name": c.name, "images": c.images, "top1": round(c.top1, 4),
                 f"top{self.k}": round(c.topk, 4)} for c in self.per_class]

    def confused_rows(self) -> list[dict[str, Any]]:
        return [{"true_synset": p.true_synset, "true_name": p.true_name, "predicted_synset": p.predicted_synset,
                 "predicted_name": p.predicted_name, "count": p.count, "fraction_of_class": round(p.fraction, 4)}
                for p in self.confused]


def _assemble(per_class: Mapping[str, tuple[int, int, int]], pairs: Mapping[tuple[str, str], int], *,
              names: Mapping[str, str], k: int, errors: int, top_confused: int) -> Evaluation:
    """Build the result from ``synset -> (images, top1 hits, topk hits)`` and ``(true, predicted) -> count``."""
    from imagenet_spark.data.synsets import human_name

    def name(synset: str) -> str:
        return names.get(synset) or human_name(synset)

    images = sum(v[0] for v in per_class.values())
    if not images:
        raise EvaluationError("no predictions with a true class to evaluate. Fix: evaluate a split of a dataset "
                              "written by the partition job (its rows carry the label).")
    classes = sorted((ClassAccuracy(s, name(s), n, t1 / n, tk / n) for s, (n, t1, tk) in per_class.items() if n),
                     key=lambda c: (c.top1, c.topk, c.synset))
    confused = sorted((ConfusedPair(t, name(t), p, name(p), c, c / per_class[t][0]) for (t, p), c in pairs.items()
                       if per_class.get(t, (0,))[0]), key=lambda x: (-x.count, -x.fraction, x.true_synset,
                                                                     x.predicted_synset))
    return Evaluation(images=images, errors=errors, top1=sum(v[1] for v in per_class.values()) / images,
                      topk=sum(v[2] for v in per_class.values()) / images, k=k, per_class=tuple(classes),
                      confused=tuple(confused[:top_confused]))


def evaluate_rows(rows: Iterable[Mapping[str, Any]], *, names: Mapping[str, str] | None = None, k: int = 5,
                  top_confused: int = 10) -> Evaluation:
    """Evaluate prediction rows shaped like predict_on_spark's output: ``true_synset``, ``synset`` (the top-1
    prediction, None when the image could not be classified) and ``top_k_synsets``."""
    per_class: dict[str, list[int]] = {}
    pairs: Counter[tuple[str, str]] = Counter()
    errors = 0
    for row in rows:
        truth = row.get("true_synset")
        if truth is None:
            raise EvaluationError(f"prediction row without true_synset: {dict(row)!r}. Fix: evaluate a dataset split "
                                  "(a folder of images has no truth).")
        stats = per_class.setdefault(truth, [0, 0, 0])
        predicted = row.get("synset")
        stats[0] += 1
        if predicted is None:
            errors += 1
            continue
        stats[1] += predicted == truth
        stats[2] += truth in list(row.get("top_k_synsets") or ())[:k]
        if predicted != truth:
            pairs[(truth, predicted)] += 1
    return _assemble({s: (v[0], v[1], v[2]) for s, v in per_class.items()}, pairs, names=names or {}, k=k,
                     errors=errors, top_confused=top_confused)


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
    return _assemble(per_class, pairs, names=names or {}, k=k, errors=sum(int(r["errors"]) for r in per_class_rows),
                     top_confused=top_confused)


def evaluate_on_spark(spark: Any, model_dir: str, data: str, *, output: str, split: str = "validation",
                      top_k: int = 5, batch_size: int = 64, overwrite: bool = False,
                      top_confused: int = 10) -> Evaluation:
    """Classify ``data``'s ``split`` on the executors into ``output`` (Parquet, kept: it is the batch-inference
    table of the split) and evaluate it."""
    from imagenet_spark.train.export import load_labels, predict_on_spark

    names = dict(load_labels(model_dir))
    rows = predict_on_spark(spark, model_dir, data, output, top_k=top_k, batch_size=batch_size, split=split,
                            overwrite=overwrite)
    result = evaluate_table(spark.read.parquet(output), names=names, k=min(top_k, len(names)),
                            top_confused=top_confused)
    log.info("evaluated %s on %s/%s: %d images, top-1 %.4f, top-%d %.4f (%d not classified)", model_dir, data, split,
             rows, result.top1, result.k, result.topk, result.errors)
    return result


def prediction_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """predict_files results as table rows: file, top-1 synset/name/probability, the rest of the top-k."""
    rows = []
    for result in results:
        top = result.get("top") or []
        head = top[0] if top else {}
        rows.append({"file": result.get("key"), "synset": head.get("synset"), "name": head.get("name"),
                     "probability": round(float(head["probability"]), 4) if head else None,
                     "others": ", ".join(f"{t['name'].split(',')[0]} {t['probability']:.2f}" for t in top[1:]),
                     "error": result.get("error")})
    return rows
