"""Run one training worker as a fresh Python subprocess, from a barrier task or from the driver.

Why a subprocess: TensorFlow's collective ops must be configured at program start, so a Python worker
that already ran TensorFlow cannot host a second MWMS run (a second training in the same SparkContext
hung). A fresh process per task also lets us set CUDA_VISIBLE_DEVICES and TF_CONFIG before TensorFlow
loads, and kill the whole worker cleanly: the child gets SIGKILL when its parent dies (PR_SET_PDEATHSIG),
so no rank is left behind holding a GPU or waiting in a collective after Spark kills the task.
"""

from __future__ import annotations

import collections
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from imagenet_spark.distribute.cluster import LaunchError
from imagenet_spark.distribute.failures import FailureKind, PortConflictError, exit_kind
from imagenet_spark.distribute.standby import Adoption, Declined, adopt, exit_line, release

log = logging.getLogger(__name__)

_TAIL_LINES = 60
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


class WorkerFailedError(LaunchError):
    """A training worker process exited non-zero; carries the tail of its output, and the failure's ``kind``
    from the exit code (distribute/failures.py)."""

    def __init__(self, message: str, *, kind: FailureKind = "error") -> None:
        super().__init__(message)
        self.kind = kind


def worker_env(env: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The environment a training worker process starts with: ours, the launcher's ``env``, our import path,
    unbuffered output, TensorFlow's C++ log quiet unless set. One definition for a fresh worker and a standby,
    because a task adopts a standby only when their start-up variables agree (distribute/standby.py)."""
    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                 "PYTHONUNBUFFERED": "1", **extra}
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return child_env


PARENT_VAR = "IMAGENET_SPARK_PARENT_PID"  # set by the launcher for the process it starts: who that process follows


def die_with_parent() -> None:
    """First thing in a worker or standby process: be SIGKILLed when the process that started it ends (Linux),
    and end now if that one is already gone (the parent named by ``IMAGENET_SPARK_PARENT_PID``).

    Why here and not in ``preexec_fn``: Python code run between fork and exec in a driver that holds py4j
    connections can run finalizers that write to the driver's JVM connection from the child (seen: py4j's
    "Connection reset by peer" in the driver after standbys started). The new session comes from
    ``start_new_session`` instead, which the fork does in C."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    expected = os.environ.get(PARENT_VAR)
    if expected and os.getppid() != int(expected):
        os._exit(1)


def run_worker_process(spec: Mapping[str, Any], *, env: Mapping[str, str], rank: int,
                       standby: str | None = None) -> dict[str, Any]:
    """Start ``python -m imagenet_spark.train.worker SPEC RESULT``, stream its output to our log, return its
    result. ``spec``: the worker spec as plain values (``to_dict`` of train/spec.py's ``WorkerSpec``).
    ``standby``: the address of a process started earlier that has imported TensorFlow already
    (distribute/standby.py); it is adopted instead when it can be, else a fresh process starts."""
    workdir = tempfile.mkdtemp(prefix=f"imagenet-spark-rank{rank}-")
    spec_path = os.path.join(workdir, "spec.json")
    result_path = os.path.join(workdir, "result.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    # TMPDIR: what TensorFlow leaves in the temp dir (autograph's generated modules, removed only at a clean
    # exit) goes with the worker's own folder, which we remove however the worker ended.
    child_env = worker_env(env, TMPDIR=workdir)
    try:
        if standby is not None:
            try:
                return _run_adopted(standby, Adoption(spec_path, result_path, dict(child_env)), rank)
            except Declined as exc:
                log.info("rank %d: starting a fresh worker process (%s)", rank, exc)
        return _run(spec_path, result_path, child_env, rank)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(spec_path: str, result_path: str, child_env: Mapping[str, str], rank: int) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-m", "imagenet_spark.train.worker", spec_path, result_path],
                            env={**child_env, PARENT_VAR: str(os.getpid())}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    tail = _stream(proc.stdout, rank)
    return _result(proc.wait(), tail, result_path, rank)


def _run_adopted(address: str, adoption: Adoption, rank: int) -> dict[str, Any]:
    """The same as :func:`_run` for a standby: its output arrives over the connection, its exit code as the last
    line (none: it died without one, e.g. killed)."""
    hello, lines, conn = adopt(address, adoption)
    log.info("rank %d: adopted standby worker pid %d (TensorFlow already imported)", rank, hello.pid)
    codes: list[int] = []

    def output() -> Iterator[str]:
        yield f"adopted standby worker pid {hello.pid} (TensorFlow already imported)"  # in the executor log too
        for line in lines:
            code = exit_line(hello.token, line.rstrip("\n"))
            if code is None:
                yield line
            else:
                codes.append(code)

    try:
        tail = _stream(output(), rank)
    finally:
        release(conn)  # the worker ends with its connection, whatever ended this task
    if not codes:
        tail.append(f"(standby worker pid {hello.pid} ended without an exit status: killed, or it crashed)")
    return _result(codes[-1] if codes else 1, tail, adoption.result_path, rank)


def _stream(lines: Iterable[str], rank: int) -> collections.deque[str]:
    """Copy the worker's output to the executor log (stderr of the task); the last lines, for an error."""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    for line in lines:
        line = line.rstrip("\n")
        tail.append(line)
        print(f"[rank {rank}] {line}", file=sys.stderr, flush=True)
    return tail


def _result(rc: int, tail: collections.deque[str], result_path: str, rank: int) -> dict[str, Any]:
    """The worker's result, or the error its exit code and last lines tell."""
    kind = exit_kind(rc)
    if rc != 0 and kind == "port_conflict":
        raise PortConflictError(f"rank {rank}: the port exchanged for TensorFlow was taken before it could bind; "
                                "relaunching with fresh ports")
    if rc != 0:
        text = "\n".join(tail)
        errors = [line.strip() for line in tail if _EXCEPTION_LINE.match(line.strip())]
        last = [line.strip() for line in tail if line.strip()]
        cause = f": {errors[-1][:400]}" if errors else f" after: {last[-1][:400]}" if last else ""
        raise WorkerFailedError(f"rank {rank}: training worker exited with code {rc}{cause}. Last output:\n{text}",
                                kind=kind)
    with open(result_path) as f:
        return json.load(f)
