"""Training worker processes started before the barrier stage, so importing TensorFlow overlaps Spark's start.

Why: a fresh worker process spends ~4 s importing TensorFlow, and before this change the import began only
after the JVM, the SparkContext and the barrier stage were up: on ``local[2]`` it was ~4 of the ~20 s from
process start to the first step (issue #13, goal 3; ``bench/launch.py``). A standby is the same fresh process
(nothing of TensorFlow's runtime started, so a MultiWorkerMirroredStrategy can still be configured in it),
started by the driver before the session, that imports and then waits. The barrier task that gets the rank
adopts it instead of starting a process: the exchange, the ranks and the checks are unchanged.

One process imports for all of them and forks one standby per rank (:func:`serve_all`): two imports side by
side cost 7-9 CPU-s on the cores the JVM starts on, one costs half and the standbys share its pages. Measured
on ``local[2]``, alternating runs: start to the first step 11.6-12.7 s against 12.2-15.3 s with one import per
standby (``gc.freeze`` before the fork matters: without it each standby's collections walked, and so copied,
the imported objects, and its first step came ~1 s later).

Where: only where the barrier tasks run on the driver's machine (``local[N]``: the executors are the driver's
JVM), for MWMS, on the first attempt. A task declines a standby whose start environment differs from what it
would give a fresh process (a GPU assignment, a variable read at start-up: ``START_ENV``), and uses a fresh
process then, as it does whenever a standby cannot be reached.

The exchange, over one Unix socket per standby in a private directory of the driver's:

1. The pool binds the socket; the importer imports and forks; the standby accepts one connection and sends a
   :class:`Hello`.
2. The task sends an :class:`Adoption` (the spec and result files, the environment) or closes (declined).
3. The standby applies the environment, points its stdout/stderr at the connection, runs the worker's
   ``main`` and ends with the line ``<token> exit <code>``; the task reads the output as it would a pipe's.

A standby whose task goes away ends at once (its connection closes); one nobody adopted ends when the driver
closes the pool (the importer ends it) or dies (``PR_SET_PDEATHSIG``, the driver's on the importer, the
importer's on each standby; the importer lives until its last standby has ended).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from imagenet_spark.config import from_dict, to_dict

log = logging.getLogger(__name__)

# Read when the process starts or imports (the loader, the hash seed, TensorFlow's import-time switches): a
# standby started with other values than its task would give a fresh process is declined, not adopted.
START_ENV = ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONHASHSEED", "TF_ENABLE_ONEDNN_OPTS", "TF_USE_LEGACY_KERAS",
             "TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL")
HELLO_TIMEOUT_S = 120.0  # a standby still importing after this is given up on (the task starts a fresh process)
_LOST_TASK_EXIT = 70


@dataclass(frozen=True)
class Hello:
    """What a standby tells the task that connects: how to recognise its exit line, and what it was started with."""

    pid: int
    token: str
    start_env: dict[str, str] = field(default_factory=dict)  # START_ENV as it was started ("" for unset)


@dataclass(frozen=True)
class Adoption:
    """What the task hands its standby: the files of ``train.worker``'s command line, and the environment a fresh
    process would have had (applied before the worker's code runs; TensorFlow reads it at the strategy)."""

    spec_path: str
    result_path: str
    env: dict[str, str] = field(default_factory=dict)


def _send(conn: socket.socket, record: Any) -> None:
    conn.sendall(json.dumps(to_dict(record)).encode() + b"\n")


def _receive(conn: socket.socket, kind: type[Any]) -> Any | None:
    """One JSON line as ``kind``; None when the other side closed first."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return from_dict(kind, json.loads(data))


# --------------------------------------------------------------------------------------------------
# Driver: the pool


class StandbyPool:
    """``count`` standbys started now, one socket each (``addresses``, in rank order). Use as a context manager:
    leaving it ends every standby not adopted and removes the sockets' directory."""

    def __init__(self, count: int, *, env: Mapping[str, str] | None = None) -> None:
        from imagenet_spark.distribute.launch import PARENT_VAR, worker_env

        self._dir = tempfile.mkdtemp(prefix="imagenet-spark-standby-")  # mkdtemp: mode 0700, ours alone
        self.addresses = tuple(os.path.join(self._dir, f"rank{i}.sock") for i in range(count))
        child_env = worker_env(env or {})
        child_env.setdefault("PYTHONHASHSEED", "0")  # as PySpark gives its Python workers, whose env a worker gets
        listeners = []
        try:
            for address in self.addresses:
                # Bound here, so a task may connect at once: it waits in the backlog until its standby is ready.
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listeners.append(listener)
                listener.bind(address)
                listener.listen(1)
            fds = [listener.fileno() for listener in listeners]
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "imagenet_spark.distribute.standby",
                 *(f"{fd}:{secrets.token_hex(8)}" for fd in fds)],
                env={**child_env, PARENT_VAR: str(os.getpid())}, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, pass_fds=fds)  # output: to its task, once adopted
        finally:
            for listener in listeners:
                listener.close()
        log.info("started %d standby worker process(es): TensorFlow imports while Spark starts", count)
        log.info("launch timing: standby started at %.3f", time.time())

    def __enter__(self) -> StandbyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the standbys nobody adopted (an adopted one runs on until its task ends it) and the directory."""
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGTERM)  # the importer: it ends the unadopted ones (serve_all)
        self._proc.poll()
        shutil.rmtree(self._dir, ignore_errors=True)


def _unadopted(pid: int) -> bool:
    """A standby marks its adoption by renaming itself (``/proc/PID/comm``); others are ours to end."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() != "imagenet-worker"
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# Task: adopting one


class Declined(Exception):
    """The standby could not be reached, or its start environment differs: start a fresh process instead."""


def adopt(address: str, adoption: Adoption) -> tuple[Hello, Iterator[str], socket.socket]:
    """Connect, compare, hand over. Returns the standby's hello, its output lines and the connection
    (:func:`release` ends the worker). Raises :class:`Declined` where a fresh process must be started instead."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(HELLO_TIMEOUT_S)
        conn.connect(address)
        hello = _receive(conn, Hello)
        if hello is None:
            raise Declined(f"standby at {address} closed before its hello")
        for name in START_ENV:
            if hello.start_env.get(name, "") != adoption.env.get(name, ""):
                raise Declined(f"standby pid {hello.pid} was started with {name}={hello.start_env.get(name, '')!r}, "
                               f"the task needs {adoption.env.get(name, '')!r}")
        if "CUDA_VISIBLE_DEVICES" in adoption.env:
            raise Declined("the task assigns GPUs, which must be set before the process starts")
        _send(conn, adoption)
        conn.settimeout(None)
    except (OSError, Declined) as exc:
        conn.close()
        raise Declined(str(exc)) from exc
    reader = conn.makefile("r", encoding="utf-8", errors="replace", newline="\n")
    return hello, (line for line in reader), conn


def release(conn: socket.socket) -> None:
    """End the adopted worker: shut the connection down (a close alone waits for the output reader's reference)."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone: the worker ended first
    conn.close()


def exit_line(token: str, line: str) -> int | None:
    """The exit code when ``line`` is the standby's last line, else None."""
    prefix = f"{token} exit "
    return int(line[len(prefix):]) if line.startswith(prefix) and line[len(prefix):].lstrip("-").isdigit() else None


# --------------------------------------------------------------------------------------------------
# Standby process


def _warm_imports() -> None:
    """What a worker imports before its first TensorFlow op: TensorFlow, Keras, the loop, models and readers."""
    import tensorflow as tf

    import imagenet_spark.data.eval_stream
    import imagenet_spark.data.reader
    import imagenet_spark.distribute.backends
    import imagenet_spark.models
    import imagenet_spark.train.loop
    import imagenet_spark.train.worker  # noqa: F401 - imported for its side effect: loaded, not run

    tf.keras.layers  # noqa: B018 - resolves the lazy Keras module (tf-keras), ~1 s of the import


def _watch(conn: socket.socket) -> None:
    """End this worker when its task goes away (the task never writes after the adoption: EOF means gone)."""
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass
    os._exit(_LOST_TASK_EXIT)


def serve_all(listeners: list[tuple[int, str]]) -> int:
    """Import once, then fork one standby per ``(socket fd, token)``; end the unadopted ones on SIGTERM (the
    pool's close) and return when every standby has ended.

    Why one importer that forks: two processes importing TensorFlow side by side each spend 3.5-4.5 CPU-s on it,
    on the cores Spark's JVM is starting on; a fork shares the imported modules. Nothing that starts
    TensorFlow's runtime runs before the fork (no op, no device query), so each standby creates its own."""
    from imagenet_spark.distribute.launch import PARENT_VAR, die_with_parent

    die_with_parent()  # the driver's: an unadopted standby never outlives it
    sockets = [socket.socket(fileno=fd) for fd, _ in listeners]
    _warm_imports()
    gc.freeze()  # the imported objects: no collection in a standby walks them (and copies their pages)
    importer = os.getpid()
    standbys: list[int] = []
    for index, (listener, (_, token)) in enumerate(zip(sockets, listeners)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # threads: TensorFlow's and jemalloc's, idle
            pid = os.fork()
        if pid == 0:
            for other in sockets[:index] + sockets[index + 1:]:
                other.close()
            os.environ[PARENT_VAR] = str(importer)
            die_with_parent()  # the importer's, which lives as long as any standby
            os._exit(serve(listener, token))
        standbys.append(pid)
    for listener in sockets:
        listener.close()

    def end_unadopted(_signum: int, _frame: Any) -> None:
        for pid in standbys:
            if _unadopted(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, end_unadopted)
    for _ in standbys:
        os.wait()
    return 0


def serve(listener: socket.socket, token: str) -> int:
    """Wait for one task on the socket the pool bound, and run the worker for it; returns its exit code."""
    conn, _ = listener.accept()
    listener.close()
    _send(conn, Hello(pid=os.getpid(), token=token, start_env={n: os.environ.get(n, "") for n in START_ENV}))
    adoption = _receive(conn, Adoption)
    if adoption is None:
        return 0  # declined: the task starts a fresh process
    try:
        with open("/proc/self/comm", "w") as f:
            f.write("imagenet-worker")  # adopted: the pool leaves this one to its task
    except OSError:
        pass
    os.environ.update(adoption.env)
    tempfile.tempdir = adoption.env.get("TMPDIR") or None  # cached by tempfile: re-read from the new TMPDIR
    threading.Thread(target=_watch, args=(conn,), daemon=True, name="imagenet-spark-task-watch").start()
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(conn.fileno(), 1)
    os.dup2(conn.fileno(), 2)
    from imagenet_spark.train.worker import main

    try:
        code = main(["worker", adoption.spec_path, adoption.result_path])
    except BaseException:  # noqa: BLE001 - a fresh process would print it and exit 1: the same here
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, f"{token} exit {code}\n".encode())
    return code


if __name__ == "__main__":
    os._exit(serve_all([(int(fd), token) for fd, token in (arg.split(":") for arg in sys.argv[1:])]))
