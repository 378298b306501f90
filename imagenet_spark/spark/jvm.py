"""The driver JVM's start: a class-data-sharing archive of Spark's classes, and a lighter JIT for short drivers.

Why: a Spark 4 driver JVM spends its start loading, verifying and compiling some 10,000 classes. On the 2-core
development machine ``SparkSession.builder.getOrCreate()`` took 8.1-8.8 s wall and 12.7-13.5 CPU-seconds
(both cores busy), the largest single part of a training job's time to its first step (issue #13, goal 3).
JDK 13+ can map those classes from an archive written by an earlier run (dynamic AppCDS,
``-XX:ArchiveClassesAtExit`` then ``-XX:SharedArchiveFile``): 3.9-5.3 s and 5.7-7.6 CPU-s. A driver that mostly
waits (training and search: the work runs in the worker processes) does not need the optimising compiler
either; ``-XX:TieredStopAtLevel=1`` brings it to 3.2-3.4 s and ~3.5 CPU-s. (Measured with and without each
option on the same machine, alternating; ``bench/launch.py`` measures the job as a whole.)

The archive is per (Java binary, Spark's jars): a key from both names the file, so a new JDK or Spark never
maps a stale archive, and the JVM itself refuses (silently, ``-Xshare:auto``) an archive whose class path
does not match. It is built once, explicitly (``imagenet-spark jvm-archive``; ``make setup`` runs it), because
the JVM writes it only at exit, in a process of its own; without one every start is simply the slow one.
Only sessions this package starts itself get the options: under ``spark-submit`` the driver JVM is already
running (``jvm-archive --print-options`` gives the options for ``--driver-java-options``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Quiet: the JVM otherwise prints one warning per class it cannot archive (reflection stubs) while dumping.
_QUIET = ("-Xshare:auto", "-Xlog:cds=off", "-Xlog:cds+dynamic=off")
_C1_ONLY = "-XX:TieredStopAtLevel=1"
OPT_OUT = "IMAGENET_SPARK_JVM_ARCHIVE"  # "off": start the driver JVM without the archive or the JIT setting


def _java() -> Path | None:
    """The java spark-submit will run: $JAVA_HOME/bin/java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return Path(found).resolve() if found and os.path.exists(found) else None


def _spark_jars() -> Path | None:
    from pyspark.find_spark_home import _find_spark_home

    jars = Path(_find_spark_home()) / "jars"
    return jars if jars.is_dir() else None


def _archive_name(java: Path, jars: Path) -> str:
    """``spark-<key>.jsa``, the key from the Java binary and every Spark jar (path, size, mtime)."""
    key = hashlib.sha256()
    for path in (java, *sorted(jars.glob("*.jar"))):
        stat = path.stat()
        key.update(f"{path}\0{stat.st_size}\0{int(stat.st_mtime)}\n".encode())
    return f"spark-{key.hexdigest()[:16]}.jsa"


def _cache_dir(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                          "imagenet-spark", "jvm"))


def archive_path(cache_dir: str | None = None) -> Path | None:
    """Where the archive for this Java and this Spark lives (it may not exist yet); None without java."""
    java, jars = _java(), _spark_jars()
    if java is None or jars is None:
        return None
    return _cache_dir(cache_dir) / _archive_name(java, jars)


UNKNOWN_SOURCE_DAYS = 7  # an archive older than this with no record of its Spark (written before there was one)


def prune_archives(cache_dir: str | None = None, *, now: float | None = None) -> list[Path]:
    """Delete the cache's archives whose Java or Spark is gone or changed; returns what was deleted.

    Why: the key changes with every new virtualenv or Spark upgrade, and the JVM maps an archive only for the
    exact jars it was written from, so each fresh ``make setup`` left 70-120 MB behind for good (1.6 GB in a day of
    CI clones here). Each archive records its Java and jars directory beside it (``.source``); one whose recorded
    pair no longer gives its name is stale. One without a record (from before records) goes after
    ``UNKNOWN_SOURCE_DAYS``. Only our own files (``spark-*.jsa`` and their records) are touched.
    """
    removed: list[Path] = []
    now = time.time() if now is None else now
    for archive in sorted(_cache_dir(cache_dir).glob("spark-*.jsa")):
        source = archive.with_suffix(".source")
        try:
            if source.is_file():
                java, jars = (Path(line) for line in source.read_text().splitlines()[:2])
                stale = not (java.is_file() and jars.is_dir() and _archive_name(java, jars) == archive.name)
            else:
                stale = now - archive.stat().st_mtime > UNKNOWN_SOURCE_DAYS * 86400
            if stale:
                archive.unlink()
                source.unlink(missing_ok=True)
                removed.append(archive)
        except (OSError, ValueError):
            continue  # another process pruning or building at the same time: leave it to the next build
    return removed


def driver_java_options(*, short_driver: bool, cache_dir: str | None = None) -> list[str]:
    """Options for a driver JVM this package starts: the archive when there is one, and the first JIT tier only
    for a ``short_driver`` (one that waits on workers). Empty when opted out (``IMAGENET_SPARK_JVM_ARCHIVE=off``)."""
    if _opted_out():
        return []
    options = [_C1_ONLY] if short_driver else []
    archive = archive_path(cache_dir)
    if archive is not None and archive.is_file():
        options += [f"-XX:SharedArchiveFile={archive}", *_QUIET]
    elif archive is not None:
        log.info("Spark's driver JVM starts about twice as fast with a class archive: run `imagenet-spark "
                 "jvm-archive` once (make setup does), or set %s=off to silence this", OPT_OUT)
    return options


def _opted_out() -> bool:
    return os.environ.get(OPT_OUT, "").lower() in ("off", "0", "false", "no")


def hint_started_without(sc: Any) -> None:
    """Under ``spark-submit`` (client mode), log how to start the driver JVM faster when it started without the
    class archive: spark-submit starts the JVM before any of our code runs, so only its command line can carry the
    options, and a user who never passed them would not know the start could take half the time."""
    from py4j.protocol import Py4JError

    if _opted_out() or sc.getConf().get("spark.submit.deployMode", "client") == "cluster":
        return  # in cluster mode the driver JVM runs on a cluster node, where this machine's archive is not
    try:
        arguments = [str(a) for a in sc._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
                     .getInputArguments()]
    except Py4JError:
        return
    if any(a.startswith("-XX:SharedArchiveFile=") for a in arguments):
        return
    archive = archive_path()
    first = "" if archive is None or archive.is_file() else "run `imagenet-spark jvm-archive` once, then "
    log.info("spark-submit started the driver JVM without the class archive, so its start took about twice as "
             "long: %spass --driver-java-options \"$(imagenet-spark jvm-archive --print-options)\" (set %s=off to "
             "silence this)", first, OPT_OUT)


def merge_java_options(existing: str | None, extra: list[str]) -> str:
    """The user's options first, ours after, none twice (a user's own -XX setting is kept: the JVM takes the last
    of two contradicting flags, so ours go only where the user did not set the same flag)."""
    have = (existing or "").split()
    names = {opt.split("=")[0] for opt in have}
    return " ".join([*have, *(opt for opt in extra if opt.split("=")[0] not in names)])


def spark_defaults_option(name: str) -> str | None:
    """``name`` as spark-defaults.conf sets it ($SPARK_CONF_DIR, else $SPARK_HOME/conf), or None: a value we set
    through the builder replaces the file's, so ours must be merged into it, not written over it."""
    conf_dir = os.environ.get("SPARK_CONF_DIR") or (os.path.join(os.environ["SPARK_HOME"], "conf")
                                                    if "SPARK_HOME" in os.environ else None)
    path = Path(conf_dir, "spark-defaults.conf") if conf_dir else None
    if path is None or not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        parts = line.strip().split(None, 1)
        if parts and parts[0] == name:
            return parts[1].strip() if len(parts) > 1 else ""
    return None


def build_archive(cache_dir: str | None = None, *, force: bool = False) -> Path:
    """Write the archive for this Java and Spark (a local session in a child process, dumped when its JVM exits),
    atomically; returns its path. Several builders at once are safe: each writes its own file, one rename wins."""
    from imagenet_spark.errors import ImagenetSparkError

    target = archive_path(cache_dir)
    if target is None:
        raise ImagenetSparkError("jvm-archive: no java (set JAVA_HOME or put java on PATH) or no Spark jars found")
    if target.is_file() and not force:
        log.info("JVM class archive already there: %s", target)
        _record_and_prune(target, cache_dir)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    started = time.monotonic()
    env = {**os.environ, OPT_OUT: "off", "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable)}
    done = subprocess.run([sys.executable, "-m", "imagenet_spark.spark.jvm", str(partial)], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise ImagenetSparkError(f"jvm-archive: the dump run failed (exit {done.returncode}); its output ends:\n"
                                 f"{(done.stdout + done.stderr)[-2000:]}")
    os.replace(partial, target)  # others stay while their Spark does: each stack's has its own
    log.info("JVM class archive written: %s (%.0f MB, %.0f s)", target, target.stat().st_size / 2**20,
             time.monotonic() - started)
    _record_and_prune(target, cache_dir)
    return target


def _record_and_prune(target: Path, cache_dir: str | None) -> None:
    """Record the Java and jars ``target`` was written for (its name is their key), then prune stale archives."""
    target.with_suffix(".source").write_text(f"{_java()}\n{_spark_jars()}\n")
    for stale in prune_archives(cache_dir):
        log.info("removed a stale JVM class archive (its Java or Spark is gone or changed): %s", stale)


def _dump(path: str) -> None:
    """The child of :func:`build_archive`: run what a training job's driver runs (a job, a barrier stage), then
    end the JVM and wait for it, so the archive is complete when this process exits."""
    from imagenet_spark.spark.session import build_session

    spark = build_session("imagenet-spark jvm-archive", master="local[2]", conf={
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": " ".join((f"-XX:ArchiveClassesAtExit={path}", *_QUIET))})
    sc = spark.sparkContext
    sc.parallelize(range(4), 2).map(lambda x: x + 1).collect()
    sc.parallelize(range(2), 2).barrier().mapPartitions(lambda it: it).collect()
    proc = sc._gateway.proc  # the spark-submit JVM; it exits at end of input
    spark.stop()
    sc._gateway.shutdown()
    proc.stdin.close()
    proc.wait(timeout=300)


if __name__ == "__main__":
    _dump(sys.argv[1])
