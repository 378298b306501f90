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
from collections.abc import Mapping
from typing import Any

from imagenet_spark.distribute.cluster import LaunchError
from imagenet_spark.distribute.failures import FailureKind, PortConflictError, exit_kind

log = logging.getLogger(__name__)

_TAIL_LINES = 60
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


class WorkerFailedError(LaunchError):
    """A training worker process exited non-zero; carries the tail of its output, and the failure's ``kind``
    from the exit code (distribute/failures.py)."""

    def __init__(self, message: str, *, kind: FailureKind = "error") -> None:
        super().__init__(message)
        self.kind = kind


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()


def run_worker_process(spec: Mapping[str, Any], *, env: Mapping[str, str], rank: int) -> dict[str, Any]:
    """Start ``python -m imagenet_spark.train.worker SPEC RESULT``, stream its output to our log, return its
    result. ``spec``: the worker spec as plain values (``to_dict`` of train/spec.py's ``WorkerSpec``)."""
    workdir = tempfile.mkdtemp(prefix=f"imagenet-spark-rank{rank}-")
    spec_path = os.path.join(workdir, "spec.json")
    result_path = os.path.join(workdir, "result.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    # TMPDIR: what TensorFlow leaves in the temp dir (autograph's generated modules, removed only at a clean
    # exit) goes with the worker's own folder, which we remove however the worker ended.
    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                 "PYTHONUNBUFFERED": "1", "TMPDIR": workdir}
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return _run(spec_path, result_path, child_env, rank)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(spec_path: str, result_path: str, child_env: Mapping[str, str], rank: int) -> dict[str, Any]:
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    proc = subprocess.Popen([sys.executable, "-m", "imagenet_spark.train.worker", spec_path, result_path],
                            env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            preexec_fn=_die_with_parent)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        print(f"[rank {rank}] {line}", file=sys.stderr, flush=True)  # executor log (stderr of the task)
    rc = proc.wait()
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
