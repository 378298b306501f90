"""How a launch failure is typed on its way from a worker process to the driver, never by its message text.

A failure crosses two boundaries before the driver decides what to do with it: the training worker process
(only its exit code reaches the barrier task) and the Spark barrier task (only its exception's text reaches the
driver, inside Spark's own error). So the kind is decided where the failure happens, by exception type:

* in the worker process, ``exit_code`` turns a typed exception into a reserved exit code;
* in the barrier task, ``launch.run_worker_process`` turns that code back into an exception carrying ``kind``;
  the task raises :class:`BarrierTaskError` with a :class:`TaskFailure` record (rank, kind, first line);
* on the driver, :func:`failure_of` reads the record (or the ``kind`` of an exception raised in the driver's
  own process, for a single worker trained on the driver) and the retry loop branches on ``kind``.

The record crosses Spark as one tagged line of JSON inside the task's exception (Spark carries nothing else
back from a failed barrier task); the tag and JSON are written and read only here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from imagenet_spark.config import from_dict, to_dict
from imagenet_spark.distribute.cluster import LaunchError

# port_conflict: a worker's exchanged port was taken before TensorFlow bound it (relaunch, not counted);
# backend: the backend cannot start on this cluster (a missing package, the host's setup): no retry helps;
# error: anything else (a crash, a lost executor): retried from the newest checkpoint, up to max_retries.
FailureKind = Literal["port_conflict", "backend", "error"]

PORT_CONFLICT_EXIT = 75  # EX_TEMPFAIL: the worker's port was taken before TensorFlow bound it
BACKEND_EXIT = 78  # EX_CONFIG: the backend cannot start here

_EXIT_KINDS: dict[int, FailureKind] = {PORT_CONFLICT_EXIT: "port_conflict", BACKEND_EXIT: "backend"}
_TAG = "imagenet-spark-task-failure:"
_MESSAGE_CHARS = 500


class PortConflictError(LaunchError):
    """TensorFlow could not bind the port exchanged for it (taken in between): relaunch with fresh ports."""

    kind: FailureKind = "port_conflict"


def kind_of(exc: BaseException) -> FailureKind:
    """The kind an exception declares (``kind`` on its class or instance), else "error"."""
    kind = getattr(exc, "kind", "error")
    if kind == "port_conflict":
        return "port_conflict"
    if kind == "backend":
        return "backend"
    return "error"


def exit_code(kind: FailureKind) -> int | None:
    """The worker process's exit code for a failure of ``kind`` (None: let the exception end the process)."""
    return next((code for code, k in _EXIT_KINDS.items() if k == kind), None)


def exit_kind(code: int) -> FailureKind:
    """The kind a worker process's exit code says (any unreserved non-zero code: "error")."""
    return _EXIT_KINDS.get(code, "error")


@dataclass(frozen=True)
class TaskFailure:
    """Why a barrier task (or the driver's own worker) failed: what the driver's retry loop branches on."""

    kind: FailureKind
    rank: int  # -1: not known (Spark's own failure, e.g. a lost executor)
    message: str  # the first line, ``Type: message``


class BarrierTaskError(LaunchError):
    """Raised by a barrier task that failed: its message is the tagged :class:`TaskFailure` record."""

    def __init__(self, failure: TaskFailure) -> None:
        self.failure = failure
        self.kind = failure.kind
        super().__init__(_TAG + json.dumps(to_dict(failure)))


def task_failure(exc: BaseException, rank: int) -> TaskFailure:
    """The record of an exception raised on ``rank`` (in a barrier task, or in the driver's own launch)."""
    lines = str(exc).splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return TaskFailure(kind=kind_of(exc), rank=rank, message=text[:_MESSAGE_CHARS])


def _decode(text: str) -> TaskFailure | None:
    start = text.find(_TAG)
    if start < 0:
        return None
    try:
        values, _end = json.JSONDecoder().raw_decode(text, start + len(_TAG))
        return from_dict(TaskFailure, values)
    except (ValueError, TypeError):  # cut short or not ours: no record
        return None


def failure_of(exc: BaseException) -> TaskFailure:
    """The failure record a launch error carries: a :class:`BarrierTaskError` record found in the Spark error
    it caused, else the ``kind`` of the exception itself (raised in this process), else kind "error"."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BarrierTaskError):
            return current.failure
        decoded = _decode(str(current))
        if decoded is not None:
            return decoded
        if kind_of(current) != "error":
            return task_failure(current, -1)
        current = current.__cause__ or current.__context__
    return task_failure(exc, -1)
