"""Run a list of independent tasks as one Spark job, with a job group, progress on the driver and cancel
on failure.

Why one Spark task per work item: a failed or lost task is retried by Spark on its own, and the item is
small enough (``images_per_task`` images) that a retry costs seconds, not the whole split.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from imagenet_spark.errors import ImagenetSparkError

log = logging.getLogger(__name__)

#: errno values that mean "the storage is full" (no space; a quota hit reads the same to the user).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Key of the plain dict a task returns instead of raising when its storage is full (see run_tasks).
_DISK_FULL_KEY = "__imagenet_spark_disk_full__"


class SparkJobError(ImagenetSparkError, RuntimeError):
    """A Spark job failed; the message carries the first line of the executor error."""


@dataclass(frozen=True)
class DiskFull:
    """Where a task ran out of space, measured on the executor that hit it (plain data: it travels back
    through Spark as a task result, since an exception reaches the driver only as text)."""

    path: str  # the file being written, else the folder the tasks write to, else ""
    host: str
    free_bytes: int | None  # of the filesystem holding path, measured right after the failure
    total_bytes: int | None
    errno: int
    task: str


class DiskFullError(SparkJobError):
    """Tasks failed because their storage is full; ``failures`` holds one :class:`DiskFull` per task."""

    def __init__(self, description: str, failures: Sequence[DiskFull]) -> None:
        # The best described first: a write that fails as a file closes may leave no open file to name.
        self.failures = tuple(sorted(failures, key=lambda f: (not f.path, f.free_bytes is None)))
        first = self.failures[0]
        where = first.path or "(the error named no file)"
        free = (f"{_size(first.free_bytes)} free of {_size(first.total_bytes)}" if first.free_bytes is not None
                else "free space unknown")
        hosts = sorted({f.host for f in self.failures})
        others = f"; {len(self.failures)} tasks failed so, on {', '.join(hosts)}" if len(self.failures) > 1 else ""
        super().__init__(
            f"{description}: disk full ({os.strerror(first.errno)}) writing {where} on host {first.host} "
            f"({free}){others}. Fix: free space there or write to storage with room, then rerun (the partition "
            "job continues with --resume)")


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def disk_full_errno(exc: BaseException) -> int | None:
    """The errno if ``exc`` (or an exception it was raised from) is an OSError saying the storage is full.

    Classified by type and errno, never by message text; the chain is walked because a task may wrap the
    OSError in its own error (``raise ... from exc``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current.errno
        current = current.__cause__ or current.__context__
    return None


def _open_for_writing() -> list[str]:
    """Regular files this process has open for writing (Linux ``/proc``; [] elsewhere). When the OSError names
    no file (pyarrow's writes do not), the file being written when the disk filled is among these: the
    traceback still holds its writer open while the exception is handled."""
    out = []
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return []
    for fd in fds:
        if fd in ("0", "1", "2"):  # the process's own stdout/stderr (a log file when output is redirected)
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
                flags = next((int(line.split()[1], 8) for line in info if line.startswith("flags:")), 0)
        except (OSError, ValueError):
            continue
        if flags & (os.O_WRONLY | os.O_RDWR) and target.startswith("/") and os.path.isfile(target):
            out.append(target)
    return out


def _free_space(path: str) -> tuple[int | None, int | None]:
    """(free, total) bytes of the local filesystem holding ``path`` (its nearest existing folder)."""
    if not path or "://" in path:
        return None, None
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe.rstrip("/")) if probe != "/" else ""
    try:
        usage = shutil.disk_usage(probe or "/")
    except OSError:
        return None, None
    return usage.free, usage.total


def describe_disk_full(exc: BaseException, *, writes_to: str | None = None, task: str = "") -> DiskFull | None:
    """A :class:`DiskFull` for an exception meaning "no space left", measured here (call it on the executor,
    while handling the exception); None for any other exception."""
    code = disk_full_errno(exc)
    if code is None:
        return None
    path = ""
    current: BaseException | None = exc
    while current is not None and not path:  # the file the OSError itself names, if any
        path = (getattr(current, "filename", None) or "") if isinstance(current, OSError) else ""
        current = current.__cause__ or current.__context__
    if not path:
        # Only files under the folder the task writes to: the worker also holds log files open for writing.
        root = os.path.realpath(writes_to) if writes_to and "://" not in writes_to else ""
        candidates = [(_free_space(p)[0] or 0, p) for p in _open_for_writing()
                      if not root or p == root or p.startswith(root.rstrip("/") + "/")]
        path = min(candidates)[1] if candidates else (writes_to or "")
    path = os.fsdecode(path)
    free, total = _free_space(path)
    return DiskFull(path, socket.gethostname(), free, total, code, task)


def _guarded(fn: Callable[[dict[str, Any]], dict[str, Any]], writes_to: str | None,
             task: dict[str, Any]) -> dict[str, Any]:
    """Executor side of run_tasks: ``fn(task)``, except that a full disk returns a :class:`DiskFull` record.

    Why return rather than raise: a raised exception reaches the driver as a Java stack trace with the
    Python traceback as text (and Spark first retries the task, which fails the same way); a record
    keeps the errno, path, host and free space as data, so the driver can say it in one line."""
    try:
        return fn(task)
    except Exception as exc:
        found = describe_disk_full(exc, writes_to=writes_to, task=str(task.get("id", "")))
        if found is None:
            raise
        log.error("task %s: disk full writing %s on %s", found.task, found.path, found.host)
        return {_DISK_FULL_KEY: asdict(found)}


def _first_line(exc: BaseException) -> str:
    """The Python exception line of an executor traceback (``module.Error: message``), else the first line."""
    lines = str(exc).splitlines()
    in_traceback = False
    for line in lines:
        if "Traceback (most recent call last)" in line:
            in_traceback = True
        elif in_traceback and line and not line[0].isspace() and ": " in line:
            return line.strip()[:500]
    for line in lines:  # no Python traceback (e.g. a lost executor): Spark's own reason
        if "Job aborted due to stage failure" in line:
            return line.strip().split("Job aborted due to stage failure: ", 1)[-1][:500]
    text = "\n".join(lines).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


class _Progress(threading.Thread):
    """Logs ``done/total tasks`` for a job group every ``interval`` seconds, from the driver."""

    def __init__(self, sc: Any, group: str, label: str, interval: float = 10.0) -> None:
        label = label.split(" ")[1] if label.startswith("imagenet-spark ") else label
        super().__init__(daemon=True, name=f"progress-{group}")
        self._sc, self._group, self._label, self._interval = sc, group, label, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        tracker = self._sc.statusTracker()
        while not self._stop_event.wait(self._interval):
            done = total = 0
            for job_id in tracker.getJobIdsForGroup(self._group):
                info = tracker.getJobInfo(job_id)
                for stage_id in (info.stageIds if info else []):
                    stage = tracker.getStageInfo(stage_id)
                    if stage:
                        done += stage.numCompletedTasks
                        total += stage.numTasks
            if total:
                log.info("%s: %d/%d tasks done (%.0f%%)", self._label, done, total, 100.0 * done / total)

    def stop(self) -> None:
        self._stop_event.set()


@contextlib.contextmanager
def job_group(spark: Any, description: str, *, progress_interval: float | None = None) -> Iterator[None]:
    """Run Spark actions under a fresh job group; cancel the group and raise SparkJobError on failure.

    Every Spark action of the package goes through this, so a failure anywhere cancels the whole group and
    surfaces as one line naming the executor's error."""
    sc = spark.sparkContext
    group = f"imagenet-spark-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, description, interruptOnCancel=True)
    progress = None
    if progress_interval:
        progress = _Progress(sc, group, description, progress_interval)
        progress.start()
    try:
        yield
    except Exception as exc:
        sc.cancelJobGroup(group)
        raise SparkJobError(f"{description}: Spark job failed: {_first_line(exc)}") from exc
    finally:
        if progress is not None:
            progress.stop()
        sc.setLocalProperty("spark.jobGroup.id", None)


def run_tasks(
    spark: Any,
    tasks: Sequence[dict[str, Any]],
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    description: str,
    num_partitions: int | None = None,
    progress_interval: float = 10.0,
    writes_to: str | None = None,
) -> list[dict[str, Any]]:
    """``[fn(t) for t in tasks]`` on the executors; tasks are plain dicts, results plain dicts.

    A task that fails because its storage is full (OSError ENOSPC or EDQUOT, however wrapped) does not
    fail the Spark job with a stack trace: the job finishes its other tasks and :class:`DiskFullError`
    says in one line which file, on which host, how much is free, and the fix. ``writes_to`` (where the
    tasks write) is named when the error itself names no file and none is open for writing."""
    if not tasks:
        return []
    slices = min(len(tasks), num_partitions) if num_partitions else len(tasks)
    guarded = functools.partial(_guarded, fn, writes_to)
    with job_group(spark, description, progress_interval=progress_interval):
        results = spark.sparkContext.parallelize(list(tasks), slices).map(guarded).collect()
    full = [DiskFull(**r[_DISK_FULL_KEY]) for r in results if isinstance(r, dict) and _DISK_FULL_KEY in r]
    if full:
        raise DiskFullError(description, full)
    return results


def run_barrier(spark: Any, tasks: int, fn: Callable[[Iterator[Any]], Iterator[Any]], *,
                description: str) -> list[Any]:
    """Run ``fn`` as one barrier stage of ``tasks`` tasks (all start together or none does)."""
    with job_group(spark, description):
        return spark.sparkContext.parallelize(range(tasks), tasks).barrier().mapPartitions(fn).collect()
    raise AssertionError("unreachable")  # pragma: no cover
