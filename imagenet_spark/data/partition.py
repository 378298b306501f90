"""The partition job's executor work: one task's inputs → cleaned JPEG rows in Parquet, rejects, its result.

Each executor task reads its images (from files, or from a tar archive in place, :mod:`.archive`), cleans
them with ``images.process_image`` and streams rows into one Parquet file per unit, flushing a row group every
``rows_per_row_group`` rows: executor memory is bounded by one row group plus one image, whatever the dataset
size. Rejected inputs go, with their bytes, to a per-task rejects file. The task then writes its
:class:`~imagenet_spark.data.tasks.TaskResult` *after* its Parquet files are renamed into place, so a result
on disk means the task's output is complete. Everything is written under the dataset's staging area; the
driver (:mod:`imagenet_spark.jobs.partition`) plans the tasks and publishes. No Spark here beyond the task
attempt number that ``inject_failure`` reads.
"""

from __future__ import annotations

import json
import posixpath
import resource
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from imagenet_spark.config import PartitionConfig, from_dict, to_dict
from imagenet_spark.data import fs, images
from imagenet_spark.data.archive import Member, iter_archive
from imagenet_spark.data.schema import PARTITION_COLUMN, arrow_file_schema, imagenet_schema
from imagenet_spark.data.tasks import REJECTED, PartitionError, PartitionTask, TaskResult, Unit
from imagenet_spark.layout import DatasetDir


def _rejects_schema() -> pa.Schema:
    """Quarantined inputs with their bytes, under ``rejects/split=<split>/`` (the split is the partition)."""
    return pa.schema(
        [
            pa.field("filename", pa.string()),
            pa.field("synset", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("detail", pa.string()),
            pa.field("data", pa.binary()),
        ]
    )


def task_result_uri(staging: DatasetDir, task_id: str) -> str:
    """Where a task's result is committed: ``_tasks/<id with / as __>.json`` in staging."""
    return fs.join(staging.tasks, task_id.replace("/", "__") + ".json")


def _read_input(within: fs.InputRoot, uri: str, offset: int, size: int) -> tuple[bytes | None, str, str]:
    """(bytes, "", "") of one listed input, or (None, reason, detail). The listing checked the path against the
    input root; it is checked again here, where it is read, in case the tree changed in between."""
    if within.resolve(uri) is None:
        return None, images.OUTSIDE_INPUT_ROOT, "resolves outside the input root when read (changed since listing)"
    try:
        return fs.read_bytes(uri, offset, size), "", ""
    except OSError as exc:
        return None, images.READ_ERROR, f"cannot read: {exc}"


def _capped(data: bytes, detail: str, cap: int) -> tuple[bytes, str]:
    """The bytes a rejects row keeps: all up to ``reject_bytes_cap``, else none (and the detail says so)."""
    if len(data) <= cap:
        return data, detail
    note = f"bytes not kept: {len(data)} > reject_bytes_cap={cap}"
    return b"", f"{detail}; {note}" if detail else note


class _TaskWriter:
    """Streams rows of one task into ``part-NNNNN.parquet`` files, a row group per ``rows_per_row_group``."""

    def __init__(self, out_dir: str, start_index: int, cfg: PartitionConfig, max_rows_per_file: int,
                 schema: pa.Schema) -> None:
        self._dir, self._index, self._cfg = out_dir, start_index, cfg
        self._max_rows = max_rows_per_file
        self._schema = schema
        self._writer: pq.ParquetWriter | None = None
        self._tmp = self._final = ""
        self._rows_in_file = 0
        self._buffer: dict[str, list[Any]] = {n: [] for n in self._schema.names}
        self.files: dict[str, list[int]] = {}  # relative path -> rows of each row group
        self.bytes_written = 0

    def _open(self) -> None:
        name = f"part-{self._index:05d}.parquet"
        self._final = fs.join(self._dir, name)
        self._tmp = fs.join(self._dir, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        filesystem, path = fs.resolve(self._tmp)
        filesystem.create_dir(posixpath.dirname(path), recursive=True)
        self._sink = filesystem.open_output_stream(path)
        # JPEG bytes do not compress; no codec saves CPU on write and on every read.
        self._writer = pq.ParquetWriter(self._sink, self._schema, compression="NONE")
        self._group_rows: list[int] = []

    def add(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            self._open()
        for key, value in row.items():
            self._buffer[key].append(value)
        self._rows_in_file += 1
        if len(self._buffer["image"]) >= self._cfg.rows_per_row_group:
            self._flush()
        if self._rows_in_file >= self._max_rows:
            self._close_file()

    def _flush(self) -> None:
        if not self._buffer["image"]:
            return
        table = pa.Table.from_pydict(self._buffer, schema=self._schema)
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=len(self._buffer["image"]))
        self._group_rows.append(len(self._buffer["image"]))
        self.bytes_written += sum(len(b) for b in self._buffer["image"])
        self._buffer = {n: [] for n in self._schema.names}

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._sink.close()
        fs.move(self._tmp, self._final)  # a retried task overwrites the same name: no duplicate rows
        self.files[posixpath.basename(self._dir) + "/" + posixpath.basename(self._final)] = self._group_rows
        self._writer = None
        self._rows_in_file = 0
        self._index += 1

    def close(self) -> None:
        self._close_file()


class InjectedFailure(RuntimeError):
    """Raised on purpose by ``inject_failure`` to prove retries and atomic publishing."""


def _should_inject_failure(spec: str | None, task: PartitionTask) -> bool:
    """Whether ``inject_failure`` names this task: its prefix matches the id of the task or of one of its
    units (a class packed into another class's task still fails where it is)."""
    if not spec:
        return False
    always = spec.startswith("always:")
    prefix = spec.split(":", 1)[1] if always else spec
    if not any(i.startswith(prefix) for i in task.ids()):
        return False
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return always or (ctx.attemptNumber() if ctx else 0) == 0


class _Outcome:
    """What one task did, input by input: rows go to the current class file's writer, rejects (with their
    bytes, capped) to one rejects table, and every name is counted once (the result the driver accounts on)."""

    def __init__(self, cfg: PartitionConfig) -> None:
        self.cfg = cfg
        self.schema = arrow_file_schema(imagenet_schema())
        self.rejects: list[tuple[str, str, str]] = []
        self.reject_rows: dict[str, list[Any]] = {n: [] for n in _rejects_schema().names}
        self.conversions: dict[str, list[str]] = {}
        self.skipped: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {}  # per real class: images written
        self.files: dict[str, list[int]] = {}
        self.written = self.input_bytes = self.bytes_written = 0

    def reject(self, fname: str, item_synset: str, reason: str, detail: str, data: bytes) -> None:
        data, detail = _capped(data, detail, self.cfg.reject_bytes_cap)
        self.rejects.append((fname, reason, detail))
        for key, value in (("filename", fname), ("synset", item_synset), ("reason", reason),
                           ("detail", detail), ("data", data)):
            self.reject_rows[key].append(value)

    def handle(self, writer: _TaskWriter, label: int, fname: str, item_synset: str, data: bytes | None,
               pre_reason: str, pre_detail: str) -> None:
        if data is None:  # never read: unreadable, or outside the input root
            self.reject(fname, item_synset, pre_reason or images.READ_ERROR, pre_detail, b"")
            return
        self.input_bytes += len(data)
        if pre_reason:
            self.reject(fname, item_synset, pre_reason, pre_detail, data)
            return
        cfg = self.cfg
        result = images.process_image(data, filename=fname, resize_short=cfg.resize_short, quality=cfg.quality,
                                      max_pixels=cfg.max_pixels)
        if isinstance(result, images.Rejected):
            self.reject(fname, item_synset, result.reason, result.detail, data)
            return
        if result.conversions:
            self.conversions[fname] = list(result.conversions)
        writer.add({"image": result.data, "label": label, "filename": fname, "height": result.height,
                    "width": result.width})
        self.written += 1

    def close(self, writer: _TaskWriter, synset: str, written_before: int) -> None:
        """A class file is complete: record its file(s) and, for a real class, its count."""
        writer.close()
        self.files.update(writer.files)
        self.bytes_written += writer.bytes_written
        if synset != REJECTED:
            self.counts[synset] = self.counts.get(synset, 0) + self.written - written_before
        elif self.written != written_before:
            raise PartitionError(f"{writer.files or synset}: rejected items were written; this is a bug")


def _class_dir(synset: str) -> str:
    """The Hive partition folder of a class: ``synset=<name>``."""
    return f"{PARTITION_COLUMN}={synset}"


def _run_units(task: PartitionTask, out: _Outcome, within: fs.InputRoot, staging: DatasetDir, fail: bool) -> int:
    """A files task: each unit (one class's slice) into its own ``synset=X/part-<index>.parquet``; returns
    the number of inputs."""
    items = len(task.items())
    fail_at = items // 2 if fail else -1
    n = 0
    for unit in task.units:
        writer = _TaskWriter(fs.join(staging.split(task.split), _class_dir(unit.synset)), unit.index, out.cfg,
                             1 << 62, out.schema)
        before = out.written
        for item in unit.items:
            if n == fail_at:
                raise InjectedFailure(f"inject_failure={out.cfg.inject_failure!r}: task {task.id} fails at "
                                      f"image {n}")
            n += 1
            if item.reject in (images.READ_ERROR, images.OUTSIDE_INPUT_ROOT):
                out.handle(writer, unit.label, item.filename, item.synset, None, item.reject, item.detail)
                continue
            data, reason, detail = _read_input(within, item.uri, item.offset, item.size)
            out.handle(writer, unit.label, item.filename, item.synset, data, reason or item.reject,
                       detail or item.detail)
        out.close(writer, unit.synset, before)
    return items


def _run_archive(task: PartitionTask, out: _Outcome, within: fs.InputRoot, staging: DatasetDir) -> int:
    """An archive task: its members streamed into ``synset=X/part-*.parquet``; returns the members counted
    as inputs (skipped ones are not)."""
    assert task.archive is not None, "an archive task names its archive"
    uri, name, offset, size = task.archive.uri, task.archive.filename, task.archive.offset, task.archive.size
    writer = _TaskWriter(fs.join(staging.split(task.split), _class_dir(task.synset)), 0, out.cfg,
                         out.cfg.images_per_task, out.schema)
    expected = 0
    members = (iter_archive(uri, name, offset, size) if within.resolve(uri) is not None else
               [Member(name, None, images.OUTSIDE_INPUT_ROOT, "resolves outside the input root when read")])
    for fname, data, reason, detail, skip in members:
        if skip or (posixpath.basename(fname).startswith((".", "_")) and data is not None):
            out.skipped.append((fname, skip or "hidden or system file"))
            continue
        expected += 1
        out.handle(writer, task.label, fname, task.synset, data, reason, detail)
    out.close(writer, task.synset, 0)
    return expected


def _write_rejects(out: _Outcome, task: PartitionTask, staging: DatasetDir) -> None:
    """The task's quarantined inputs, with their bytes, as ``rejects/split=<split>/part-<class>-<index>``."""
    first: Unit | None = task.units[0] if task.units else None
    first_synset, first_index = (first.synset, first.index) if first else (task.synset, 0)
    rej_uri = fs.join(staging.rejects, f"split={task.split}", f"part-{first_synset}-{first_index:05d}.parquet")
    filesystem, path = fs.resolve(rej_uri)
    filesystem.create_dir(posixpath.dirname(path), recursive=True)
    pq.write_table(pa.Table.from_pydict(out.reject_rows, schema=_rejects_schema()), path, filesystem=filesystem)


def process_task(task: PartitionTask, cfg_dict: dict[str, Any], staging: str) -> TaskResult:
    """Run one task on an executor; returns (and persists) its result. Never raises on bad images.

    The result is written to ``_tasks/`` only after every Parquet file of the task is in place, so a result
    on disk means the task's output is complete."""
    started = time.monotonic()
    cfg = from_dict(PartitionConfig, cfg_dict)
    within = fs.InputRoot.of(cfg.input)
    out = _Outcome(cfg)
    stage = DatasetDir(staging)
    if task.kind == "archive":
        expected = _run_archive(task, out, within, stage)
    else:
        # Fail half way through, with a partial Parquet file open, to prove nothing half-written is kept.
        expected = _run_units(task, out, within, stage, _should_inject_failure(cfg.inject_failure, task))
    if out.reject_rows["filename"]:
        _write_rejects(out, task, stage)
    result = TaskResult(
        id=task.id, split=task.split, counts=out.counts, inputs=expected, written=out.written,
        rejects=tuple(out.rejects), conversions=out.conversions, skipped=tuple(out.skipped), files=out.files,
        input_bytes=out.input_bytes, bytes_written=out.bytes_written, seconds=round(time.monotonic() - started, 3),
        # Peak RSS of this Python worker so far: the executor-memory figure the manifest reports.
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    if out.written + len(out.rejects) != expected:
        raise PartitionError(f"task {task.id}: {expected} inputs but {out.written} written + {len(out.rejects)} "
                             "rejected")
    fs.write_text_atomic(task_result_uri(stage, task.id), json.dumps(to_dict(result)))
    return result


def process_task_dict(task: dict[str, Any], cfg_dict: dict[str, Any], staging: str) -> dict[str, Any]:
    """The Spark-side entry: :func:`process_task` between the plain dicts Spark carries (``to_dict``)."""
    return to_dict(process_task(from_dict(PartitionTask, task), cfg_dict, staging))
