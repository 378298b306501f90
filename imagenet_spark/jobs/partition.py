"""The partition job's driver: raw images → a Petastorm Parquet dataset partitioned by synset, with a manifest.

The orchestration only, over the library in ``imagenet_spark.data``: check the paths, list the inputs
(``layouts.discover``), take the output's lease, check the executors can read and write, plan the tasks
(``data.tasks``), reconcile an interrupted run's staging (``data.resume``), run the tasks not yet committed on
Spark (``data.partition.process_task``), account for every input (``data.manifest``), optionally write TFRecord
shards (``jobs.tfrecord``), and publish. Everything is written under ``OUTPUT/_staging``; only when every task
is done and the reject fraction is acceptable are the Petastorm metadata, labels.txt and manifest.json written
and the splits moved into place, ``manifest.json`` last (it marks a finished dataset).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any

from imagenet_spark import jsonio, ownership
from imagenet_spark.config import ConfigError, PartitionConfig, to_dict
from imagenet_spark.data import fs, images, layouts, resume
from imagenet_spark.data.manifest import Manifest, RowGroupRows, build_manifest, efficiency, labels_text, row_group_rows
from imagenet_spark.data.partition import InjectedFailure, process_task_dict
from imagenet_spark.data.schema import imagenet_schema, write_petastorm_metadata
from imagenet_spark.data.tasks import PartitionError, PartitionTask, TaskResult, pack_target, plan_tasks
from imagenet_spark.layout import LABELS, DatasetDir
from imagenet_spark.spark.jobs import run_tasks
from imagenet_spark.spark.preflight import ReadCheck, WriteCheck, check_executor_access, with_absolute_paths

log = logging.getLogger(__name__)

# The longest file name the job derives from a class name is the task result
# ``_staging/_tasks/validation__<class>__NNNNN.json.tmp`` (the class plus 28 bytes); file names end at 255 bytes.
MAX_CLASS_NAME_BYTES = 200
_UNSAFE_CLASS_CHARS = set('/\\=%:"#\'*?{}[]^\x7f')
# What a publish moves from staging into the output (and deletes there first), manifest.json aside.
_PUBLISHED = (*layouts.SPLITS, DatasetDir.REJECTS, LABELS, DatasetDir.TFRECORD)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the leased part of the job works on: the settings, the listing, the output and its staging."""

    cfg: PartitionConfig
    listing: layouts.Listing
    output: DatasetDir
    started: float

    @property
    def staging(self) -> DatasetDir:
        return self.output.staging


@dataclasses.dataclass(frozen=True)
class Listed:
    """The job as far as it goes without Spark: settings with absolute, checked paths, and the input listed."""

    cfg: PartitionConfig
    listing: layouts.Listing
    started: float


def checked_paths(cfg: PartitionConfig) -> PartitionConfig:
    """``cfg`` with absolute paths, refused untouched if the output overlaps an input or is an existing
    directory this job did not make. Needs no Spark: a wrong path fails before the JVM starts."""
    cfg = with_absolute_paths(cfg, "input", "output", "labels_file", "val_labels")
    _check_paths(cfg)
    return cfg


def list_job(cfg: PartitionConfig, started: float | None = None) -> Listed:
    """List the input of ``cfg`` (already :func:`checked_paths`) and check its class names; no Spark. The
    command runs it in a thread while the JVM starts: on a real tree the listing takes as long or longer."""
    started = time.monotonic() if started is None else started
    listing = layouts.discover(cfg.input, layout=cfg.layout, val_labels=cfg.val_labels, labels_file=cfg.labels_file)
    _check_classes(listing)
    log.info("listed %d inputs (+%d archives) in %d classes, layout %s, %.1f s", len(listing.items),
             len(listing.archives), len(listing.classes), listing.layout, time.monotonic() - started)
    return Listed(cfg, listing, started)


def list_in_background(cfg: PartitionConfig) -> Callable[[], Listed]:
    """Start :func:`list_job` in a daemon thread (the command starts Spark meanwhile; daemon, so a failure to
    start Spark exits without waiting for a long listing); the returned function waits for it and returns the
    listing or raises its error."""
    started = time.monotonic()
    future: Future[Listed] = Future()

    def work() -> None:
        try:
            future.set_result(list_job(cfg, started))
        except BaseException as exc:  # noqa: BLE001 - relayed as it is to the thread that waits
            future.set_exception(exc)

    threading.Thread(target=work, name="partition-listing", daemon=True).start()
    return future.result


def run_partition(spark: Any, cfg: PartitionConfig) -> dict[str, Any]:
    """Run the whole job with the given SparkSession; returns the manifest (or the dry-run report) as the
    JSON object manifest.json holds.

    The paths are checked before anything is listed: an output overlapping an input, or an existing directory
    this job did not make, is refused untouched. The output's lease is taken after listing and held to the
    end, so a second job on the same output is refused with the name of this one. ``--dry-run`` takes no
    lease, writes nothing and needs no Spark (``spark`` may be None)."""
    started = time.monotonic()
    listed = list_job(checked_paths(cfg), started)
    return dry_run(listed) if cfg.dry_run else run_listed(spark, listed)


def dry_run(listed: Listed) -> dict[str, Any]:
    """The dry-run report of a listed job (logged too); nothing written."""
    report = dry_run_report(listed.listing, listed.cfg)
    log.info("dry run: %s", json.dumps({k: v for k, v in report.items() if k != "archives"}))
    return report


def run_listed(spark: Any, listed: Listed) -> dict[str, Any]:
    """The job from its listing on, under the output's lease; returns the manifest's JSON object."""
    cfg = listed.cfg
    with ownership.Lease("output", cfg.output, f"imagenet-spark partition {cfg.input} -> {cfg.output}"):
        return _run_leased(spark, _Run(cfg, listed.listing, DatasetDir(cfg.output), listed.started))


def _run_leased(spark: Any, run: _Run) -> dict[str, Any]:
    """The job while it holds the output's lease: claim the output, stage, run the tasks not yet committed
    with unchanged inputs, account for every input, publish."""
    cfg, listing, staging = run.cfg, run.listing, run.staging
    if cfg.resume and run.output.is_finished() and not run.output.is_interrupted():
        log.info("--resume: %s is already a finished dataset; nothing to do", cfg.output)
        return dict(json.loads(fs.read_text(run.output.manifest)))
    _check_output(cfg)
    _check_executors(spark, cfg, listing)
    fs.make_dirs(staging.root)
    stats = resume.input_stats(listing)
    slots = spark.sparkContext.defaultParallelism
    packing = resume.stored_pack_target(cfg, staging) or pack_target(listing, cfg.images_per_task, slots)
    tasks = plan_tasks(listing, cfg.images_per_task, stats, pack_images=packing)
    log.info("%d tasks for %d listed files (classes packed up to %d images a task, %d slots)", len(tasks),
             len(listing.items), packing, slots)
    done, changes = resume.reconcile(cfg, staging, listing, tasks, stats, packing)
    results = list(done.values()) + _run_tasks(spark, cfg, staging, [t for t in tasks if t.id not in done])
    manifest = dataclasses.replace(
        build_manifest(cfg, listing, results, time.monotonic() - run.started, resumed=len(done), tasks=tasks,
                       slots=slots),
        pack_images=packing, input_changes=changes if cfg.resume else None)
    _refuse_rejects(cfg, staging, manifest)
    rows = row_group_rows(results)
    tfrecord = None
    if cfg.tfrecord:
        from imagenet_spark.jobs.tfrecord import write_tfrecords  # imports TF on executors only

        tfrecord = write_tfrecords(spark, staging, manifest, rows, cfg)
    wall = round(time.monotonic() - run.started, 2)
    work = sum(r.seconds for r in results[len(done):]) + (tfrecord or {}).get("seconds", 0)
    manifest = dataclasses.replace(manifest, tfrecord=tfrecord, wall_time_s=wall,
                                   efficiency=efficiency(work, slots, wall))
    _publish(cfg, staging, manifest, rows, listing)
    totals = manifest.totals
    log.info("published %s: %d written, %d rejected, %d skipped; %.1f s (%d tasks resumed, %.0f inputs/s, "
             "efficiency %.2f)", cfg.output, totals.written, totals.rejected, totals.skipped,
             manifest.wall_time_s, len(done), manifest.images_per_s, manifest.efficiency)
    return manifest.to_json()


def _check_executors(spark: Any, cfg: PartitionConfig, listing: layouts.Listing) -> None:
    """Executors read the inputs and write the output: check they can, and that it is the driver's storage."""
    sample = next((i.uri for i in listing.items if i.uri and not i.reject),
                  listing.archives[0].uri if listing.archives else None)
    check_executor_access(spark, read=[ReadCheck("input", cfg.input, sample)] if sample else [],
                          write=[WriteCheck("output", cfg.output)],
                          tasks=max(2, spark.sparkContext.defaultParallelism))


def _run_tasks(spark: Any, cfg: PartitionConfig, staging: DatasetDir, todo: list[PartitionTask]) -> list[TaskResult]:
    """The tasks on the executors; each crosses the boundary as ``to_dict`` output and comes back so."""
    work = functools.partial(process_task_dict, cfg_dict=to_dict(cfg), staging=staging.root)
    out = run_tasks(spark, [to_dict(t) for t in todo], work,
                    description=f"imagenet-spark partition {cfg.input} -> {cfg.output}",
                    num_partitions=cfg.num_partitions, writes_to=staging.root)
    return [TaskResult.from_json(r) for r in out]


def _refuse_rejects(cfg: PartitionConfig, staging: DatasetDir, manifest: Manifest) -> None:
    """Nothing written, or more rejected than ``max_reject_fraction``: keep the manifest in staging, publish
    nothing, and say how to go on."""
    totals, fraction = manifest.totals, manifest.fraction_rejected()
    if totals.written and fraction <= cfg.max_reject_fraction:
        return
    fs.write_text_atomic(staging.manifest, jsonio.dumps(manifest.to_json(), indent=1))
    raise PartitionError(
        f"{totals.rejected} of {totals.inputs} inputs rejected ({fraction:.1%}), more than "
        f"max_reject_fraction={cfg.max_reject_fraction}; nothing was published. Reasons: "
        f"{manifest.rejects_by_reason}. See {staging.manifest} and {staging.rejects}/. "
        "Fix the inputs, or raise max_reject_fraction (--set max_reject_fraction=...) and rerun with --resume "
        "(only the tasks whose inputs or labels changed are redone)."
    )


def _undo_interrupted_publish(output: DatasetDir, staging: DatasetDir) -> None:
    """``_publishing.json`` lists what an earlier publish was moving: move back into staging what it moved."""
    if not fs.exists(staging.publishing):
        return
    for name in json.loads(fs.read_text(staging.publishing)):
        if not fs.exists(staging.join(name)) and fs.exists(output.join(name)):
            log.info("--resume: the interrupted publish had moved %s; moving it back to staging", name)
            fs.move(output.join(name), staging.join(name))


def _publish(cfg: PartitionConfig, staging: DatasetDir, manifest: Manifest, rows: RowGroupRows,
             listing: layouts.Listing) -> None:
    """Move the staged splits into place; manifest.json goes last and marks the dataset finished.

    A driver that dies between two moves leaves some splits in the output and the rest in staging, and no
    manifest (so nothing reads it as finished). ``_publishing.json`` lists what this publish moves, so the
    ``--resume`` run first moves those back into staging and publishes everything again."""
    output = DatasetDir(cfg.output)
    _undo_interrupted_publish(output, staging)
    # Only what the manifest accounts for is published: partial files of failed task attempts, and anything a
    # task left without committing its result, are removed (written-and-rejected twice is impossible after this).
    files = {split: set(split_rows) for split, split_rows in rows.items()}
    rejected = Counter(r["filename"] for r in manifest.rejects)
    for path in resume.sweep(staging.root, layouts.SPLITS, DatasetDir.REJECTS, files, rejected):
        log.info("publish: removed %s from staging (no committed task accounts for it)", path)
    schema = imagenet_schema()
    for split, split_rows in rows.items():
        if split_rows:  # else every input of this split was rejected (the threshold allowed it)
            write_petastorm_metadata(staging.split(split), schema, split_rows)
    fs.write_text_atomic(staging.labels, labels_text(listing))
    moving = [name for name in _PUBLISHED if fs.exists(staging.join(name))]
    fs.write_text_atomic(staging.publishing, json.dumps(moving))
    for name in (DatasetDir.MANIFEST, *_PUBLISHED):
        if fs.exists(output.join(name)):
            fs.delete(output.join(name))
    for name in moving:
        fs.move(staging.join(name), output.join(name))
        if cfg.inject_failure == "publish":
            raise InjectedFailure(f"inject_failure='publish': the driver stops after moving {name} (as if killed)")
    fs.write_text_atomic(output.manifest, jsonio.dumps(manifest.to_json(), indent=1))
    fs.delete(staging.root)


def _check_classes(listing: layouts.Listing) -> None:
    """Refuse, all in one error, class names that cannot name a partition directory and names that differ
    only in case.

    Why refuse: a class is stored as ``synset=<name>/``; ``%`` is unescaped by Spark's and pyarrow's partition
    discovery, ``:``, ``#`` and ``?`` break Hadoop paths and URIs, a tab or newline breaks labels.txt. On a
    case-insensitive filesystem (macOS, Windows, some mounts) ``synset=Cat`` and ``synset=cat`` are one
    directory, and the two classes' files of the same number overwrite each other: silent loss; such
    folders are almost always one class split by accident. Every offending name is listed, so one rename
    round fixes them all."""
    unsafe = {c: sorted(set(c) & _UNSAFE_CLASS_CHARS | {ch for ch in c if ord(ch) < 32}) for c in listing.classes}
    unsafe = {c: chars for c, chars in unsafe.items() if chars}
    folded: dict[str, list[str]] = defaultdict(list)
    for cls in listing.classes:
        folded[cls.casefold()].append(cls)
    clashes = [names for names in folded.values() if len(names) > 1]
    too_long = sorted(c for c in listing.classes if len(c.encode("utf-8")) > MAX_CLASS_NAME_BYTES)
    problems = []
    if too_long:
        problems.append(f"{len(too_long)} class name(s) longer than {MAX_CLASS_NAME_BYTES} bytes (a file name "
                        "in the dataset holds the class name and more, within the 255-byte limit of file names): "
                        + "; ".join(f"{c[:40]!r}... ({len(c.encode('utf-8'))} bytes)" for c in too_long) + ".")
    if unsafe:
        problems.append(f"{len(unsafe)} class name(s) contain characters that cannot name a partition directory: "
                        + "; ".join(f"{c!r} ({''.join(chars)!r})" for c, chars in sorted(unsafe.items())) + ".")
    if clashes:
        problems.append(f"{len(clashes)} group(s) of class names differ only in case (one directory on a "
                        "case-insensitive filesystem): " + "; ".join(" and ".join(map(repr, g)) for g in clashes) + ".")
    if problems:
        raise ConfigError("input", listing.root, " ".join(problems),
                          "rename those class folders (no / \\ = % : \" # ' * ? { } [ ] ^ or control characters; "
                          "merge folders that differ only in case, or make the names differ by more than case; "
                          f"at most {MAX_CLASS_NAME_BYTES} bytes), or "
                          "list the images in a CSV (--layout csv) with clean labels.")


def _made_by_partition(directory: str) -> bool:
    """Whether an unmarked directory is this job's work from before the ownership marker existed: a finished
    dataset (``manifest.json`` whose format is ours) or an interrupted run (``_staging/run.json``)."""
    dataset = DatasetDir(directory)
    if fs.is_file(dataset.staging.run_json):
        return True
    if not fs.is_file(dataset.manifest):
        return False
    try:
        manifest = json.loads(fs.read_text(dataset.manifest))
    except (ValueError, OSError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == DatasetDir.FORMAT


def _check_paths(cfg: PartitionConfig) -> None:
    """Refuse, before anything is listed or written, an output that overlaps an input (the input tree, a labels
    file) and an existing output this job did not make, ``--overwrite`` or not.

    Why: publishing deletes ``train/``, ``validation/``, ``labels.txt`` and ``rejects/`` in the output and
    moves new ones in; pointed at the user's image tree or any other folder, that destroys the user's files."""
    if not cfg.output:
        return
    for setting in ("input", "labels_file", "val_labels"):
        ownership.check_disjoint("output", cfg.output, setting, getattr(cfg, setting))
    ownership.check_ours("output", cfg.output, "dataset", _made_by_partition)


def _check_output(cfg: PartitionConfig) -> None:
    """Under the output's lease: refuse to clobber a finished dataset or silently drop an interrupted run (and,
    again, anything this job did not make), then claim the output with our marker."""
    ownership.check_ours("output", cfg.output, "dataset", _made_by_partition)
    output = DatasetDir(cfg.output)
    staging = output.staging.root
    if output.is_finished() and not (cfg.overwrite or cfg.resume):
        raise ConfigError("output", cfg.output, "already holds a finished dataset (manifest.json).",
                          "pass --overwrite to replace it, or choose another --output.")
    if output.is_interrupted():
        if cfg.overwrite:
            log.info("--overwrite: discarding the interrupted run in %s", staging)
            fs.delete(staging)
        elif not cfg.resume:
            raise ConfigError("output", cfg.output, f"holds an interrupted run ({staging}).",
                              "pass --resume to continue it, or --overwrite to start over.")
    ownership.write_mark(cfg.output, "dataset")  # before staging exists: a crash from here on leaves it ours


def dry_run_report(listing: layouts.Listing, cfg: PartitionConfig, sample: int = 16) -> dict[str, Any]:
    """What would be read and roughly how much would be written, from a small sample processed locally."""
    counts = listing.counts()
    in_bytes = listing.input_bytes()
    sampled_in = sampled_out = 0
    usable = [i for i in listing.items if not i.reject and i.size > 0]
    step = max(1, len(usable) // sample)
    for item in usable[::step][:sample]:
        data = fs.read_bytes(item.uri, item.offset, item.size)
        result = images.process_image(data, filename=item.filename, resize_short=cfg.resize_short,
                                      quality=cfg.quality, max_pixels=cfg.max_pixels)
        if isinstance(result, images.Processed):
            sampled_in += len(data)
            sampled_out += len(result.data)
    ratio = sampled_out / sampled_in if sampled_in else 1.0
    return {
        "layout": listing.layout,
        "input": listing.root,
        "classes": len(listing.classes),
        "counts": counts,
        "archives": [asdict(a) for a in listing.archives],
        "skipped": len(listing.skipped),
        "listed_rejects": sum(1 for i in listing.items if i.reject),
        "input_bytes": in_bytes,
        "estimated_output_bytes": int(in_bytes * ratio),
        "sampled_images": sample if usable else 0,
    }
