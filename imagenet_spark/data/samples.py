"""A look at a dataset without Spark or TensorFlow: a few stored images per class, and its manifest as tables.

Why in data/: both read the partition job's output contract (``split/synset=<wnid>/*.parquet`` and
``manifest.json``) and nothing else; the report's grids and the notebooks' tables are their callers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from imagenet_spark.data import fs
from imagenet_spark.data.schema import DatasetError
from imagenet_spark.layout import DatasetDir

_T = TypeVar("_T")


@dataclass(frozen=True)
class Sample:
    """One stored image of a dataset split: encoded bytes and its truth."""

    image: bytes
    label: int
    synset: str
    filename: str


def _synset_dirs(split_uri: str) -> list[tuple[str, str]]:
    if not fs.is_dir(split_uri):
        raise DatasetError(f"{split_uri}: no such split. Fix: pass the --output of jobs/partition.py as data (it "
                          "holds train/ and validation/).")
    dirs = [(e.relpath.split("=", 1)[1], e.uri) for e in fs.list_dir(split_uri)
            if e.size < 0 and e.relpath.startswith("synset=")]
    if not dirs:
        raise DatasetError(f"{split_uri}: no synset=<wnid>/ partitions. Fix: pass a dataset written by "
                          "jobs/partition.py.")
    return dirs


def _spread(items: Sequence[_T], n: int) -> list[_T]:
    """``n`` items evenly spaced over ``items`` (all of them when there are fewer), in order."""
    if n >= len(items):
        return list(items)
    if n <= 1:
        return [items[0]] if n == 1 else []
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _read_class(uri: str, synset: str, limit: int) -> list[Sample]:
    """Up to ``limit`` images of one synset partition, from its first Parquet file's first row groups."""
    import pyarrow.parquet as pq

    files = [e for e in fs.list_files(uri) if e.relpath.endswith(".parquet")]
    out: list[Sample] = []
    for entry in files:
        with fs.open_input(entry.uri) as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in ("image", "label", "filename") if c in parquet.schema_arrow.names]
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=columns).to_pydict()
                images = table["image"]
                labels = table.get("label") or [-1] * len(images)
                names = table.get("filename") or [""] * len(images)
                for image, label, filename in zip(images, labels, names):
                    out.append(Sample(image=bytes(image), label=int(label), synset=synset, filename=str(filename)))
                    if len(out) >= limit:
                        return out
    return out


def read_samples(data: str, *, split: str = "validation", count: int = 16, per_class: int | None = None,
                 max_classes: int | None = None) -> list[Sample]:
    """A few images of a dataset split, read straight from its Parquet files (no Spark, no TensorFlow).

    Classes are spread evenly over the sorted synsets (so 16 images of ImageNet's 1000 classes show 16
    different classes); ``per_class`` images of each (default: as few as fill ``count``), taken in order,
    so the same call always returns the same images.
    """
    if count < 1 or (per_class is not None and per_class < 1):
        raise DatasetError(f"count={count}, per_class={per_class}: must be at least 1 image")
    dirs = _synset_dirs(DatasetDir(data).split(split))
    if per_class is not None:  # class by class, per_class each
        classes = _spread(dirs, max_classes or len(dirs))
        return [s for synset, uri in classes for s in _read_class(uri, synset, per_class)]
    classes = _spread(dirs, min(count, max_classes or count))
    per = math.ceil(count / len(classes))
    by_class = [_read_class(uri, synset, per) for synset, uri in classes]
    out: list[Sample] = []
    for i in range(per):  # round robin: every class once before a second image of any
        out += [samples[i] for samples in by_class if i < len(samples)]
    return out[:count]


def manifest_tables(manifest: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A dataset manifest as tables: ``splits`` (images, row groups), ``classes`` (images per split and synset,
    with names), ``rejects`` (file, split, reason, detail), ``reasons`` (count per reason), ``conversions``."""
    from imagenet_spark.data.synsets import human_name

    counts = manifest.get("counts", {})
    row_groups = manifest.get("row_groups", {})
    splits = [{"split": split, "images": n, "row_groups": row_groups.get(split, 0),
               "classes": len(counts.get(split, {}))} for split, n in manifest.get("split_sizes", {}).items()]
    synsets = sorted({s for per in counts.values() for s in per})
    classes = [{"synset": s, "name": human_name(s), **{split: counts[split].get(s, 0) for split in counts}}
               for s in synsets]
    rejects = [{"filename": r.get("filename"), "split": r.get("split"), "reason": r.get("reason"),
                "detail": r.get("detail")} for r in manifest.get("rejects", [])]
    reasons = [{"reason": k, "count": v} for k, v in manifest.get("rejects_by_reason", {}).items()]
    conversions = [{"conversion": k, "count": v} for k, v in manifest.get("conversion_counts", {}).items()]
    return {"splits": splits, "classes": classes, "rejects": rejects, "reasons": reasons, "conversions": conversions}

