"""``manifest.json``: the typed record of a finished (or refused) partition run, and how it is assembled.

Why a record: users, the trainer and tests read the manifest by key (DESIGN.md, "Contracts"), so its keys and
their order are a contract; as a dict built in one place and amended in two others, nothing said which keys
exist. :class:`Manifest` names each field in the order manifest.json has always had (serialised with
:func:`imagenet_spark.config.to_dict`; the optional fields are left out when unset, as they were), and the
per-file row-group sizes that publishing needs, once a private ``_row_group_rows`` key stripped before
writing, are their own value (:func:`row_group_rows`). No Spark here: the driver feeds task results in.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from imagenet_spark import __version__
from imagenet_spark.config import PartitionConfig, to_dict
from imagenet_spark.data import layouts, resume
from imagenet_spark.data.tasks import PartitionError, PartitionTask, TaskResult, plan_tasks
from imagenet_spark.layout import DatasetDir

log = logging.getLogger(__name__)

RowGroupRows = dict[str, dict[str, list[int]]]  # split -> Parquet file (synset=X/part-N.parquet) -> rows per group
SHARDING_RULE = ("row group i of a split (sorted file order) goes to worker i mod N; "
                 "N workers need at least N row groups")


@dataclass(frozen=True)
class Totals:
    listed: int
    inputs: int
    written: int
    rejected: int
    skipped: int


@dataclass(frozen=True)
class ByteCounts:
    input: int
    written: int
    per_image: float


@dataclass(frozen=True)
class TaskCounts:
    planned: int
    run: int


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Everything a person or a program needs to trust (or debug) the dataset; the fields in file order."""

    format: str = DatasetDir.FORMAT
    format_version: int = 1
    created: str
    config: dict[str, Any]
    versions: dict[str, str]
    layout: str
    num_classes: int
    totals: Totals
    counts: dict[str, dict[str, int]]
    empty_classes: dict[str, list[str]]
    split_sizes: dict[str, int]
    row_groups: dict[str, int]
    rows_per_row_group: int
    sharding_rule: str = SHARDING_RULE
    rejects_by_reason: dict[str, int]
    rejects: list[dict[str, str]]
    conversions: dict[str, list[str]]
    conversion_counts: dict[str, int]
    skipped: list[dict[str, str]]
    bytes: ByteCounts
    wall_time_s: float
    resumed_tasks: int
    executor_peak_rss_mb: float
    executor_seconds: float
    images_per_s: float
    tasks: TaskCounts
    slots: int
    efficiency: float
    # Set by the driver after the tasks ran; absent from the file when unset.
    pack_images: int | None = None
    input_changes: dict[str, Any] | None = None  # on --resume: what changed in the input since the first run
    tfrecord: dict[str, Any] | None = None  # with --tfrecord: shards and records per split, the tasks' seconds

    def to_json(self) -> dict[str, Any]:
        """The manifest.json object (also what ``run_partition`` returns)."""
        optional = ("pack_images", "input_changes", "tfrecord")
        return {k: v for k, v in to_dict(self).items() if not (k in optional and v is None)}

    def fraction_rejected(self) -> float:
        return self.totals.rejected / self.totals.inputs if self.totals.inputs else 1.0


def versions() -> dict[str, str]:
    """The versions that made the dataset (petastorm exists on the legacy stack only)."""
    import PIL
    import pyarrow

    out = {"imagenet_spark": __version__, "python": platform.python_version(), "pyarrow": pyarrow.__version__,
           "Pillow": PIL.__version__}
    for dist in ("petastorm", "pyspark"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def labels_text(listing: layouts.Listing) -> str:
    """labels.txt: ``index<TAB>class<TAB>name`` a line, in label order."""
    return "".join(f"{i}\t{c}\t{listing.names.get(c, c)}\n" for i, c in enumerate(listing.classes))


def empty_classes(listing: layouts.Listing, per_split: dict[str, Counter[str]]) -> dict[str, list[str]]:
    """Per split, the classes with no image written: an empty class folder, or every image rejected.

    Why they stay classes (in labels.txt, label indices unchanged): removing one would shift the label of
    every class after it, so a dataset rebuilt once images are added would silently disagree with models
    trained before. They are listed here and logged, since a class without training images cannot be learnt."""
    splits = {i.split for i in listing.items} | {a.split for a in listing.archives}
    out = {}
    for split in sorted(splits):
        empty = [c for c in listing.classes if not per_split.get(split, Counter()).get(c)]
        if empty:
            out[split] = empty
            log.warning("%s: %d class(es) have no image (kept in labels.txt so label indices do not shift; listed "
                        "in manifest.json empty_classes): %s%s", split, len(empty), ", ".join(empty[:10]),
                        " ..." if len(empty) > 10 else "")
    return out


def efficiency(work_seconds: float, slots: int, wall_time: float) -> float:
    """Executor work seconds over slot seconds (slots x wall): the share of the cluster's time spent in the
    tasks' own work. The rest is overhead (Spark's per-task cost, driver-side listing and publishing, slots
    idle at the start and the end)."""
    return round(work_seconds / (slots * wall_time), 3) if slots > 0 and wall_time > 0 else 0.0


def row_group_rows(results: list[TaskResult]) -> RowGroupRows:
    """Per split, per Parquet file, the rows of each row group: what publishing writes into ``_common_metadata``
    and the TFRecord pass reads by."""
    out: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for r in sorted(results, key=lambda r: r.id):
        out[r.split].update(r.files)
    return {s: dict(sorted(v.items())) for s, v in sorted(out.items())}


def _tally(results: list[TaskResult]) -> tuple[dict[str, Counter[str]], list[dict[str, str]], dict[str, list[str]]]:
    """(images written per split and class, the rejects' manifest rows, the converted names per conversion)."""
    per_split: dict[str, Counter[str]] = defaultdict(Counter)
    rejects = []
    conversions: dict[str, list[str]] = defaultdict(list)
    for r in sorted(results, key=lambda r: r.id):
        for synset, n in r.counts.items():
            per_split[r.split][synset] += n
        for fname, reason, detail in r.rejects:
            rejects.append({"filename": fname, "split": r.split, "reason": reason, "detail": detail})
        for fname, kinds in r.conversions.items():
            for kind in kinds:
                conversions[kind].append(fname)
    return per_split, rejects, conversions


def build_manifest(cfg: PartitionConfig, listing: layouts.Listing, results: list[TaskResult],
                   wall_time: float, resumed: int = 0, tasks: list[PartitionTask] | None = None,
                   slots: int = 0) -> Manifest:
    """The manifest of a run whose tasks all have a result.

    ``results`` holds every task's result, including those committed by an earlier, interrupted run
    (the first ``resumed`` of them); rates are computed over the work done by this run only. ``tasks``: this
    run's plan (planned again from the listing when omitted). ``slots``: the Spark task slots the job ran on
    (0 when unknown), for ``efficiency``.

    Raises PartitionError (a bug, never bad input) unless every listed input name is in exactly one of
    written, rejected and skipped (``resume.accounting_problems``): what a published dataset promises."""
    per_split, rejects, conversions = _tally(results)
    written = sum(r.written for r in results)
    in_bytes, out_bytes = sum(r.input_bytes for r in results), sum(r.bytes_written for r in results)
    skipped = list(listing.skipped) + [tuple(s) for r in results for s in r.skipped]
    plan = tasks if tasks is not None else plan_tasks(listing, cfg.images_per_task)
    listed, problems = resume.accounting_problems(listing, plan, results)
    if problems or written + len(rejects) + len(skipped) != listed:
        raise PartitionError(f"inputs not accounted for: {listed} listed, {written} written + {len(rejects)} rejected "
                             f"+ {len(skipped)} skipped. {problems} This is a bug (nothing was published); please "
                             "report it with the job's log.")
    return Manifest(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), config=to_dict(cfg), versions=versions(),
        layout=listing.layout, num_classes=len(listing.classes),
        totals=Totals(listed, sum(r.inputs for r in results), written, len(rejects), len(skipped)),
        counts={s: dict(sorted(c.items())) for s, c in sorted(per_split.items())},
        empty_classes=empty_classes(listing, per_split),
        split_sizes={s: sum(c.values()) for s, c in sorted(per_split.items())},
        row_groups={s: sum(len(g) for g in v.values()) for s, v in row_group_rows(results).items()},
        rows_per_row_group=cfg.rows_per_row_group,
        rejects_by_reason=dict(sorted(Counter(r["reason"] for r in rejects).items())), rejects=rejects,
        conversions={k: sorted(v) for k, v in sorted(conversions.items())},
        conversion_counts={k: len(v) for k, v in sorted(conversions.items())},
        skipped=[{"filename": f, "why": why} for f, why in skipped],
        bytes=ByteCounts(in_bytes, out_bytes, round(out_bytes / written, 1) if written else 0),
        wall_time_s=round(wall_time, 2), resumed_tasks=resumed,
        executor_peak_rss_mb=max((r.peak_rss_mb for r in results), default=0),
        executor_seconds=round(sum(r.seconds for r in results), 2),
        images_per_s=round(sum(r.inputs for r in results[resumed:]) / wall_time, 1) if wall_time > 0 else 0,
        tasks=TaskCounts(len(plan), len(results) - resumed), slots=slots,
        efficiency=efficiency(sum(r.seconds for r in results[resumed:]), slots, wall_time))

