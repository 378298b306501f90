"""Preflight checks: settings and paths that would make a job hang or fail late, caught before any work starts.

Why a separate step, and why part of it runs on the executors: the driver can only check what the driver
sees. A dataset on the driver's local disk, a model dir that is not the same directory on every host (or that
executors cannot write), a relative path (the driver's working directory is not the executors') all look fine
from the driver and fail minutes later inside an executor log, after the barrier stage has started, or
worse, "work" with each host writing its own private copy. One tiny Spark job, a task per executor slot,
asks the executors themselves: can you read this dataset, can you write into this directory, and do you see
the file the driver just wrote there (so it is the same storage)? The answer comes back as one error that
names the setting, the path, the host and the fix.

The Spark-configuration checks run on the conf alone (``check_spark_conf``), so the entry points can run them
before the SparkContext exists: some wrong settings (a GPU amount per task without an executor amount)
make Spark itself fail at start-up with a JVM stack trace, and others (GPUs without a discovery script)
make it wait forever for executors that never start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from imagenet_spark.data import fs
from imagenet_spark.distribute.cluster import LaunchError
from imagenet_spark.layout import PREFLIGHT_PROBE, DatasetDir
from imagenet_spark.spark.session import master_kind, under_spark_submit

log = logging.getLogger(__name__)

T = TypeVar("T")


class PreflightError(LaunchError):
    """A setting or a path that the job cannot run with; the message names it, its value and the fix."""


# --------------------------------------------------------------------------------------------------
# Spark configuration (no SparkContext needed)


def submitted_conf() -> dict[str, str] | None:
    """The Spark settings spark-submit passed (``--conf``, ``--properties-file``, spark-defaults), read before the
    SparkContext starts; None when not launched by spark-submit (the session's builder decides then)."""
    if not under_spark_submit():
        return None
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's JVM; starts no context
    return dict(SparkConf().getAll())


def check_spark_conf(conf: Mapping[str, str], *, master: str | None, barrier: bool) -> None:
    """Settings that make Spark fail at start-up with a stack trace, or a barrier stage wait forever.

    ``barrier``: the job runs a barrier stage (training), which needs a fixed set of executors."""
    master = master or conf.get("spark.master", "")
    local = master_kind(master) != "cluster"
    if barrier and str(conf.get("spark.dynamicAllocation.enabled", "false")).lower() == "true":
        raise PreflightError(
            "spark.dynamicAllocation.enabled=true: barrier stages need a fixed set of executors (a gang-scheduled "
            "stage cannot wait for executors that come and go). Fix: --conf spark.dynamicAllocation.enabled=false.")
    task_gpus = conf.get("spark.task.resource.gpu.amount")
    if task_gpus and not local:
        executor_gpus = conf.get("spark.executor.resource.gpu.amount")
        script = conf.get("spark.executor.resource.gpu.discoveryScript")
        if not executor_gpus:
            raise PreflightError(
                f"spark.task.resource.gpu.amount={task_gpus} but spark.executor.resource.gpu.amount is not set "
                "(Spark refuses to start). Fix: set --conf spark.executor.resource.gpu.amount=<GPUs per executor> "
                "and --conf spark.executor.resource.gpu.discoveryScript=conf/spark/getGpusResources.sh, or drop "
                "the GPU amount on a CPU cluster.")
        if not script:
            raise PreflightError(
                f"spark.task.resource.gpu.amount={task_gpus} but no spark.executor.resource.gpu.discoveryScript: "
                "executors cannot report their GPUs, so none starts and the job waits forever. Fix: --conf "
                "spark.executor.resource.gpu.discoveryScript=conf/spark/getGpusResources.sh (ship it with --files "
                "where executors do not share the driver's disk), or drop the GPU amounts on a CPU cluster.")


# --------------------------------------------------------------------------------------------------
# Paths


def absolute(uri: str) -> str:
    """A local relative path made absolute against the driver's working directory; URIs unchanged.

    Executors run in their own working directory (a Spark worker's ``work/app-.../N``), so a relative path
    given on the driver names another place on each executor."""
    stripped = uri.strip()
    if not stripped or "://" in stripped or stripped.startswith(("/", "file:", "dbfs:")):
        return uri
    return os.path.abspath(stripped)


def with_absolute_paths(cfg: T, *fields: str) -> T:
    """``cfg`` with the named path settings made absolute (logged, so the user sees what is used)."""
    changes = {}
    for name in fields:
        value = getattr(cfg, name)
        if isinstance(value, str) and value and absolute(value) != value:
            changes[name] = absolute(value)
            log.info("%s=%r is relative: using %s (executors do not share the driver's working directory)",
                     name, value, changes[name])
    return dataclasses.replace(cfg, **changes) if changes else cfg  # type: ignore[type-var]


@dataclass(frozen=True)
class ReadCheck:
    """A file executors must be able to read: ``setting`` (as the user spells it) names it in errors."""

    setting: str
    root: str  # the value of the setting
    file: str  # the file under it that must be readable


@dataclass(frozen=True)
class WriteCheck:
    """A directory executors must write into, and see as the same storage as the driver."""

    setting: str
    root: str


def _reason(exc: BaseException) -> str:
    """``Type: message`` without pyarrow's repeated ``Detail:`` tail, short enough for one error line."""
    return f"{type(exc).__name__}: {str(exc).split('. Detail:')[0][:200]}"


def _probe_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs on an executor: read each file, write a probe into each directory, look for the driver's probe."""
    host = socket.gethostname()
    problems: list[str] = []
    for setting, root, path in spec["read"]:
        try:
            filesystem, p = fs.resolve(path)
            with filesystem.open_input_stream(p) as f:
                f.read(64)
        except (OSError, ValueError) as exc:
            problems.append(f"{setting}={root!r}: executor on {host} cannot read {path} ({_reason(exc)})")
    for setting, root, probe_dir, driver_probe in spec["write"]:
        mine = fs.join(probe_dir, f"{spec['token']}-{host}-{os.getpid()}-{spec['index']}")
        try:
            fs.write_text_atomic(mine, host)
        except (OSError, ValueError) as exc:
            problems.append(f"{setting}={root!r}: executor on {host} cannot write into it ({_reason(exc)})")
            continue
        if not fs.exists(driver_probe):
            problems.append(f"{setting}={root!r}: executor on {host} does not see the file the driver wrote there "
                            f"({driver_probe}), so it is not the driver's storage")
    return {"host": host, "problems": problems}


def check_executor_access(spark: Any, *, read: Sequence[ReadCheck] = (), write: Sequence[WriteCheck] = (),
                          tasks: int = 2) -> list[str]:
    """One tiny Spark job (``tasks`` tasks, one per executor slot): executors read and write what the job will.

    Returns the hosts that answered. Raises PreflightError naming the setting, the path, the host and the fix
    when an executor cannot read a file, cannot write a directory, or writes somewhere the driver does not
    see (a local disk of its own)."""
    from imagenet_spark.spark.jobs import run_tasks

    if master_kind(spark.sparkContext.master) == "local":  # executors are threads of the driver: same files
        return []
    started = time.monotonic()
    token = uuid.uuid4().hex[:12]
    write_specs = []
    for check in write:
        probe_dir = fs.join(check.root, PREFLIGHT_PROBE)
        driver_probe = fs.join(probe_dir, f"{token}-driver")
        fs.make_dirs(probe_dir)
        fs.write_text_atomic(driver_probe, "driver")
        write_specs.append((check.setting, check.root, probe_dir, driver_probe))
    spec = {"token": token, "read": [(c.setting, c.root, c.file) for c in read], "write": write_specs}
    try:
        results = run_tasks(spark, [{**spec, "index": i} for i in range(max(1, tasks))], _probe_task,
                            description="imagenet-spark preflight: executors read the inputs, write the outputs",
                            progress_interval=0)
        problems = sorted({p for r in results for p in r["problems"]})
        if not problems:  # executors wrote: does the driver see their files (the same storage)?
            for setting, root, probe_dir, _driver_probe in write_specs:
                seen = {e.relpath for e in fs.list_dir(probe_dir)}
                missing = [r["host"] for r in results if not any(n.startswith(f"{token}-{r['host']}-") for n in seen)]
                if missing:
                    problems.append(f"{setting}={root!r}: the driver does not see the files executors on "
                                    f"{', '.join(sorted(set(missing)))} wrote there, so it is not shared storage")
    finally:
        for _setting, _root, probe_dir, _driver_probe in write_specs:
            try:
                fs.delete(probe_dir)
            except OSError:  # best effort: a probe dir left behind is harmless
                log.debug("could not remove %s", probe_dir)
    if problems:
        settings = sorted({p.split("=", 1)[0] for p in problems})
        raise PreflightError(
            f"{'; '.join(problems)}. Fix: put {' and '.join(settings)} on storage that every executor mounts at "
            "the same path as the driver and can write (HDFS, S3, NFS, dbfs:/), pass that path (absolute), and "
            "check the executors' user may write there.")
    hosts = sorted({r["host"] for r in results})
    log.info("preflight: %d executor task(s) on %s read %s and wrote %s (%.1f s)", len(results), ", ".join(hosts),
             ", ".join(c.root for c in read) or "nothing", ", ".join(c.root for c in write) or "nothing",
             time.monotonic() - started)
    return hosts


def check_training_paths(spark: Any, cfg: Any, *, tasks: int) -> list[str]:
    """Executors read the dataset's manifest and write into the model dir (the checkpoints go there)."""
    return check_executor_access(spark, read=[ReadCheck("data", cfg.data, DatasetDir(cfg.data).manifest)],
                                 write=[WriteCheck("model_dir", cfg.model_dir)], tasks=tasks)


def check_submitted_conf(*, barrier: bool) -> None:
    """``check_spark_conf`` on what spark-submit was given, before the SparkContext starts (no-op otherwise)."""
    conf = submitted_conf()
    if conf is not None:
        check_spark_conf(conf, master=None, barrier=barrier)
