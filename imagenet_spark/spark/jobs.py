"""Run a list of independent tasks as one Spark job, with a job group, progress on the driver and cancel
on failure.

Why one Spark task per work item: a failed or lost task is retried by Spark on its own, and the item is
small enough (``images_per_task`` images) that a retry costs seconds, not the whole split.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from typing import Any, Callable, Iterator, Sequence

from imagenet_spark.errors import ImagenetSparkError

log = logging.getLogger(__name__)


class SparkJobError(ImagenetSparkError, RuntimeError):
    """A Spark job failed; the message carries the first line of the executor error."""


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
    except Exception as exc:  # noqa: BLE001 - py4j raises Py4JJavaError; we re-raise with context
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
) -> list[dict[str, Any]]:
    """``[fn(t) for t in tasks]`` on the executors; tasks are plain dicts, results plain dicts."""
    if not tasks:
        return []
    slices = min(len(tasks), num_partitions) if num_partitions else len(tasks)
    with job_group(spark, description, progress_interval=progress_interval):
        return spark.sparkContext.parallelize(list(tasks), slices).map(fn).collect()
    raise AssertionError("unreachable")  # pragma: no cover


def run_barrier(spark: Any, tasks: int, fn: Callable[[Iterator[Any]], Iterator[Any]], *,
                description: str) -> list[Any]:
    """Run ``fn`` as one barrier stage of ``tasks`` tasks (all start together or none does)."""
    with job_group(spark, description):
        return spark.sparkContext.parallelize(range(tasks), tasks).barrier().mapPartitions(fn).collect()
    raise AssertionError("unreachable")  # pragma: no cover
