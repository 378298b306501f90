"""Accuracy of a model on a split from its predictions: top-1/top-k, accuracy per class, the most-confused pairs.

Why here, in serving, and without Spark: evaluation is an aggregation over what the serving signature
predicted (batch inference's rows carry each image's truth), not a loop of its own, so the exact preprocessing
serving uses is the one evaluated. :func:`evaluate_rows` aggregates rows already in memory (tests, a handful of
images); :func:`imagenet_spark.jobs.evaluate.evaluate_table` does the same counting with Spark so ImageNet's
50,000 validation rows never reach the driver, and both build the result with :func:`assemble`. It was
``imagenet_spark/evaluate.py``; beside ``jobs/evaluate.py`` that name would leave a reader guessing which holds
the Spark job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imagenet_spark.errors import ImagenetSparkError


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


def assemble(per_class: Mapping[str, tuple[int, int, int]], pairs: Mapping[tuple[str, str], int], *,
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
    return assemble({s: (v[0], v[1], v[2]) for s, v in per_class.items()}, pairs, names=names or {}, k=k,
                     errors=errors, top_confused=top_confused)
