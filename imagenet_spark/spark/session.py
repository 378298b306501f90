"""SparkSession helpers for the entry points (jobs/, cli, tests). Library code takes a session as an argument.

Why ship the package: executors must run the same imagenet_spark as the driver. ``ship_package`` zips the
installed package and adds it with ``addPyFile`` unless the executors already import it from the same path
(local mode with an editable install), so a cluster needs only the third-party stack installed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from imagenet_spark.spark.jvm import spark_defaults_option

log = logging.getLogger(__name__)

# Settings every imagenet-spark session wants; a user's spark-defaults/--conf wins for anything set there.
RECOMMENDED_CONF = {
    # Barrier start-up exchanges must not wait 365 days (Spark's default) for a lost task.
    "spark.barrier.sync.timeout": "600s",
    "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "1s",
    "spark.sql.execution.arrow.pyspark.enabled": "false",
}


def under_spark_submit() -> bool:
    """True when spark-submit (or pyspark's shell) launched us: the JVM is up and the master is its choice."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


# spark-submit's options that take no value (the launcher's switches); every other option takes one.
_SUBMIT_SWITCHES = frozenset({"--help", "-h", "--supervise", "--usage-error", "--verbose", "-v", "--version"})
_SUBMIT_CLASS = "org.apache.spark.deploy.SparkSubmit"


def master_from_submit_args(args: Sequence[str]) -> str | None:
    """The master in a SparkSubmit JVM's command line: the last ``--master``, else the last ``--conf
    spark.master=...``, both before the application (what follows it is the application's own arguments, which
    may have a ``--master`` of their own); None when neither is there (spark-defaults.conf or Spark's default
    decides) or the command is not SparkSubmit's."""
    try:
        i = list(args).index(_SUBMIT_CLASS) + 1
    except ValueError:
        return None
    master = conf_master = None
    while i < len(args) and args[i].startswith("-"):
        name, eq, value = args[i].partition("=")
        if name in _SUBMIT_SWITCHES or (not eq and i + 1 >= len(args)):
            i += 1
            continue
        if not eq:  # "--name value": the value is the next token
            i += 1
            value = args[i]
        i += 1
        if name == "--master":
            master = value
        elif name == "--conf" and value.startswith("spark.master="):
            conf_master = value.partition("=")[2]
    return master or conf_master


def submitted_master() -> str | None:
    """Under spark-submit (client mode), the master its command line gave, read from the driver JVM that started
    this process (Linux /proc); None anywhere else or when it cannot be told.

    Why: there the session says its master only once it is up (~1 s of SparkContext start), and the training
    driver wants it before, to start worker processes that import TensorFlow meanwhile. Why not
    ``preflight.submitted_conf()``, which also sees spark-defaults.conf: it first connects to the JVM, 0.8 s
    here, the very time the import should overlap. A None only keeps the later start; the session's own master
    is checked again once it is up."""
    if not under_spark_submit():
        return None
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return master_from_submit_args([a.decode(errors="replace") for a in raw.split(b"\0") if a])


def build_session(app_name: str, *, master: str | None = None, conf: Mapping[str, str] | None = None,
                  short_driver: bool = False) -> Any:
    """getOrCreate a SparkSession for an entry point; ``spark-submit`` settings take precedence.

    A driver JVM started here maps the class archive when ``imagenet-spark jvm-archive`` wrote one, and a
    ``short_driver`` (training, the search, the partition job: the driver waits on its workers, and in local
    mode the JVM's executor side only passes small records to Python workers) skips the optimising JIT; both
    only cut the JVM's start (spark/jvm.py says by how much) and merge into any extraJavaOptions already set.
    The partition job's session start went from 5.0-6.9 s to 3.9-4.2 s with it (alternating runs)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master and not under_spark_submit():
        builder = builder.master(master)
    for key, value in _settings(master, conf, short_driver).items():
        builder = builder.config(key, value)
    _import_while_the_jvm_starts()
    spark = builder.getOrCreate()
    _after_start(spark.sparkContext)
    return spark


@dataclass(frozen=True)
class ContextSession:
    """What an entry point whose jobs are RDD tasks and barrier stages needs of a session (``sparkContext``,
    ``stop``), without Spark SQL's session: the partition, train and tune commands. Why: creating a SparkSession's
    JVM half loads some 3,500 classes of Spark SQL, 0.9-1.2 s of a command's start on the 2-core machine (Spark 4,
    class archive mapped), for jobs that never use them. Library functions take either: they only use
    ``spark.sparkContext``. Predict and evaluate read and write DataFrames, and keep a SparkSession."""

    sparkContext: Any  # noqa: N815 - SparkSession's attribute name, so the library reads both alike

    def stop(self) -> None:
        self.sparkContext.stop()


def build_context_session(app_name: str, *, master: str | None = None, conf: Mapping[str, str] | None = None,
                          short_driver: bool = False) -> ContextSession:
    """:func:`build_session` for entry points whose jobs are RDD tasks and barrier stages (partition, train, tune):
    the same settings, the same precedence, a SparkContext and no SparkSession (:class:`ContextSession` says why)."""
    from pyspark import SparkConf, SparkContext

    spark_conf = SparkConf().setAppName(app_name)
    if master and not under_spark_submit():
        spark_conf.setMaster(master)
    spark_conf.setAll(list(_settings(master, conf, short_driver).items()))
    _import_while_the_jvm_starts()
    sc = SparkContext.getOrCreate(spark_conf)
    _after_start(sc)
    return ContextSession(sc)


def _after_start(sc: Any) -> None:
    """Spark's log level for our commands; under spark-submit, the hint when its JVM started the slow way."""
    from imagenet_spark.spark.jvm import hint_started_without

    sc.setLogLevel(os.environ.get("IMAGENET_SPARK_SPARK_LOG_LEVEL", "WARN"))
    if under_spark_submit():
        hint_started_without(sc)


def _import_while_the_jvm_starts() -> None:
    """Import, in a thread, what pyspark 4 imports at its first call into a new JVM: its py4j argument converter
    imports ``pyspark.testing.utils`` and with it pandas (~0.5 s), on the session's critical path, while the JVM's
    start before it is only waited on. Here it overlaps that wait (session start 2.5 s against 2.7-4.0 s,
    alternating runs). Only when this process starts the JVM; nothing where pyspark does not do it (3.5). Safe
    to overlap: the main thread is in no import while it waits, so the import lock cannot cross."""
    import pyspark
    from pyspark import SparkContext

    if under_spark_submit() or SparkContext._active_spark_context is not None or int(pyspark.__version__[0]) < 4:
        return

    def work() -> None:
        with contextlib.suppress(ImportError):  # then pyspark's own import fails the same way, where it reports
            importlib.import_module("pyspark.testing.utils")

    threading.Thread(target=work, name="pyspark-imports", daemon=True).start()


def _settings(master: str | None, conf: Mapping[str, str] | None, short_driver: bool) -> dict[str, str]:
    """The settings a session of ours starts with: recommended ones, the caller's, the worker daemon, and the
    driver JVM's options merged into any the user set (sets ``PYSPARK_PYTHON`` to this interpreter if unset)."""
    from imagenet_spark.spark.jvm import driver_java_options, merge_java_options

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = {**RECOMMENDED_CONF, **(conf or {})}
    settings.update(worker_daemon_setting(master, settings))
    java_options = [] if under_spark_submit() else driver_java_options(short_driver=short_driver)
    if java_options:
        key = "spark.driver.extraJavaOptions"
        settings[key] = merge_java_options(settings.get(key, spark_defaults_option(key)), java_options)
    return settings


WORKER_DAEMON = "spark.python.daemon.module"


def worker_daemon_setting(master: str | None, settings: Mapping[str, str]) -> dict[str, str]:
    """``spark.python.daemon.module`` naming :mod:`imagenet_spark.spark.worker_daemon` (it says why: pyspark's
    workers compile pyspark from a zip on every start) where that is safe: a local master, whose daemon runs this
    interpreter (``PYSPARK_PYTHON``) and imports this package from where the driver does. Nothing on a cluster or
    local-cluster (other machines' interpreters, or the package shipped with the tasks), for another interpreter,
    or where the user named a daemon module already. Under spark-submit the master and settings are its JVM's."""
    if under_spark_submit():
        from pyspark import SparkConf, SparkContext

        SparkContext._ensure_initialized()  # connects to spark-submit's running JVM; getOrCreate does the same
        launched = SparkConf()  # --master, --conf and spark-defaults.conf as spark-submit resolved them
        master = launched.get("spark.master", None)
        taken = WORKER_DAEMON in settings or launched.contains(WORKER_DAEMON)
    else:
        taken = WORKER_DAEMON in settings or spark_defaults_option(WORKER_DAEMON) is not None
    python = os.environ.get("PYSPARK_PYTHON", "")
    ours = os.path.abspath(shutil.which(python) or python) == os.path.abspath(sys.executable)
    if taken or not ours or master is None or master_kind(master) != "local":
        return {}
    return {WORKER_DAEMON: "imagenet_spark.spark.worker_daemon"}


def end_session(spark: Any, exit_code: int) -> None:
    """Stop Spark at the end of an entry point, making sure spark-submit exits too.

    In local mode, Spark 3.5 starts a non-daemon "Barrier task timer" thread in the driver JVM for every
    barrier task and never stops it, so after a training job the spark-submit JVM would outlive our Python
    process forever. Under spark-submit with a local master we therefore end the JVM ourselves, with our
    exit code. (On a cluster the barrier tasks run in executors, which end with the application.)
    """
    sc = spark.sparkContext
    local = master_kind(sc.master) != "cluster"  # the driver JVM is spark-submit's own (local-cluster too)
    jvm = sc._jvm
    spark.stop()
    if local and under_spark_submit():
        logging.shutdown()
        logging.disable(logging.CRITICAL)  # py4j reports the connection the exit cuts; that is expected, not news
        try:
            jvm.java.lang.System.exit(exit_code)
        except Exception:  # noqa: BLE001 - the JVM going away mid-call is the expected outcome
            pass


MasterKind = Literal["local", "local-cluster", "cluster"]

_LOCAL = re.compile(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?")  # local, local[N], local[*], local[N,maxFailures]
_LOCAL_CLUSTER = re.compile(r"local-cluster\[(\d+),\s*(\d+),\s*\d+\]")  # local-cluster[executors,cores,memMiB]


def master_kind(master: str) -> MasterKind:
    """Where a master runs the executors: the one rule every "is this local?" question asks.

    * ``local``: local, local[N], local[*]: executors are threads of the driver's JVM (same process tree,
      same files), so one worker trains as a driver subprocess and executor-side checks are moot.
    * ``local-cluster``: local-cluster[n,c,m]: separate executor JVMs on this machine, treated like a cluster
      for launching (barrier stages, executor probes) but sharing the driver's machine.
    * ``cluster``: anything else (spark://, yarn, k8s://, Databricks, or no master named)."""
    if _LOCAL.fullmatch(master):
        return "local"
    if _LOCAL_CLUSTER.fullmatch(master):
        return "local-cluster"
    return "cluster"


def local_slots(master: str) -> int | None:
    """Task slots the master string itself promises: N for local[N] (the CPUs for local[*], 1 for local),
    executors x cores for local-cluster; None for a cluster (ask Spark, executors register over time)."""
    m = _LOCAL.fullmatch(master)
    if m:
        n = m.group(1)
        return 1 if n is None else (os.cpu_count() or 1) if n == "*" else int(n)
    m = _LOCAL_CLUSTER.fullmatch(master)
    if m:
        return int(m.group(1)) * int(m.group(2))
    return None


def executors_in_driver_jvm(master: str) -> bool:
    """local / local[N]: the executors live in the driver's JVM (same process tree, same files).
    local-cluster has separate executor JVMs, like a real cluster, and is treated as one."""
    return master_kind(master) == "local"


def ship_package(spark: Any) -> str | None:
    """Zip imagenet_spark and add it to the executors' path; skipped in local mode (same machine, same files)."""
    sc = spark.sparkContext
    if executors_in_driver_jvm(sc.master):
        return None
    import imagenet_spark

    pkg_dir = Path(imagenet_spark.__file__).parent
    out = Path(tempfile.mkdtemp(prefix="imagenet-spark-")) / "imagenet_spark.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in pkg_dir.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, Path("imagenet_spark") / path.relative_to(pkg_dir))
    sc.addPyFile(str(out))
    log.info("shipped %s to the executors", out)
    return str(out)
