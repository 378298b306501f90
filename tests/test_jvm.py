"""The driver JVM's start options (spark/jvm.py): merged into the user's, opted out by name, and an archive that a
JVM really maps (a JVM told ``-Xshare:on`` refuses to start when it cannot)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagenet_spark.spark import jvm


def test_merge_keeps_user_options_and_their_own_settings_of_our_flags() -> None:
    merged = jvm.merge_java_options("-Dfoo=1 -XX:TieredStopAtLevel=4", ["-XX:TieredStopAtLevel=1", "-Xshare:auto"])
    assert merged.split() == ["-Dfoo=1", "-XX:TieredStopAtLevel=4", "-Xshare:auto"]
    assert jvm.merge_java_options(None, ["-Xshare:auto"]) == "-Xshare:auto"


def test_spark_defaults_value_is_read_so_it_is_merged_not_replaced(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spark-defaults.conf").write_text("# comment\nspark.driver.extraJavaOptions   -Dcorp.proxy=x -Da=b\n"
                                                  "spark.executor.memory 2g\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    assert jvm.spark_defaults_option("spark.driver.extraJavaOptions") == "-Dcorp.proxy=x -Da=b"
    assert jvm.spark_defaults_option("spark.driver.memory") is None


def test_opt_out_and_missing_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(jvm.OPT_OUT, raising=False)
    assert jvm.driver_java_options(short_driver=True, cache_dir=str(tmp_path)) == ["-XX:TieredStopAtLevel=1"]
    assert jvm.driver_java_options(short_driver=False, cache_dir=str(tmp_path)) == []
    path = jvm.archive_path(str(tmp_path))
    assert path is not None and path.parent == tmp_path and path.name.startswith("spark-")
    path.write_bytes(b"x")
    assert f"-XX:SharedArchiveFile={path}" in jvm.driver_java_options(short_driver=False, cache_dir=str(tmp_path))
    monkeypatch.setenv(jvm.OPT_OUT, "off")
    assert jvm.driver_java_options(short_driver=True, cache_dir=str(tmp_path)) == []


def _spark(root: Path) -> tuple[Path, Path]:
    """A Java binary and a Spark jars directory, as files: what an archive's key is computed from."""
    (root / "jars").mkdir(parents=True)
    (root / "jars" / "spark-core.jar").write_bytes(b"jar")
    (root / "java").write_bytes(b"java")
    return root / "java", root / "jars"


def test_stale_archives_are_pruned_and_live_ones_kept(tmp_path: Path) -> None:
    """Each new virtualenv or Spark gave a new archive key and left the old 70-120 MB archive behind for good.
    Pruned: an archive whose recorded Spark changed or is gone, and an unrecorded one older than a week. Kept: a
    live one, a fresh unrecorded one (maybe another stack's, written before records existed), anything not ours."""
    cache = tmp_path / "cache"
    cache.mkdir()

    def archive(name: str, source: tuple[Path, Path] | None) -> Path:
        path = cache / name
        path.write_bytes(b"archive")
        if source:
            path.with_suffix(".source").write_text(f"{source[0]}\n{source[1]}\n")
        return path

    live = _spark(tmp_path / "venv-a")
    kept = archive(jvm._archive_name(*live), live)
    upgraded = _spark(tmp_path / "venv-b")
    before_upgrade = archive(jvm._archive_name(*upgraded), upgraded)
    (upgraded[1] / "spark-core.jar").write_bytes(b"a newer jar")  # pip install -U pyspark: same path, new key
    gone = _spark(tmp_path / "venv-c")
    deleted_venv = archive(jvm._archive_name(*gone), gone)
    for path in (gone[1] / "spark-core.jar", gone[0]):
        path.unlink()
    gone[1].rmdir()
    old_unrecorded, fresh_unrecorded = archive("spark-0123456789abcdef.jsa", None), archive("spark-fe.jsa", None)
    week_ago = time.time() - (jvm.UNKNOWN_SOURCE_DAYS + 1) * 86400
    os.utime(old_unrecorded, (week_ago, week_ago))
    others = [cache / "notes.txt", cache / "spark-1.jsa.99.partial"]
    for path in others:
        path.write_text("not an archive")

    removed = jvm.prune_archives(str(cache))
    assert sorted(removed) == sorted([before_upgrade, deleted_venv, old_unrecorded])
    assert all(p.exists() for p in (kept, kept.with_suffix(".source"), fresh_unrecorded, *others))
    assert not any(p.exists() or p.with_suffix(".source").exists() for p in removed)
    assert jvm.prune_archives(str(cache)) == []


def test_an_existing_archive_gets_its_record_so_later_builds_can_tell_it_is_live(tmp_path: Path) -> None:
    target = jvm.archive_path(str(tmp_path))
    assert target is not None
    target.write_bytes(b"archive")  # written before records existed
    assert jvm.build_archive(str(tmp_path)) == target  # already there: not rebuilt, recorded
    java, jars = target.with_suffix(".source").read_text().split()
    assert Path(java).is_file() and Path(jars).is_dir()
    assert jvm.prune_archives(str(tmp_path), now=time.time() + 365 * 86400) == []


@pytest.mark.slow
def test_built_archive_is_mapped_by_a_spark_driver(tmp_path: Path) -> None:
    archive = jvm.build_archive(str(tmp_path))
    assert archive.is_file() and archive.stat().st_size > 10 * 2**20
    assert not list(tmp_path.glob("*.partial"))
    options = [o.replace("-Xshare:auto", "-Xshare:on")
               for o in jvm.driver_java_options(short_driver=True, cache_dir=str(tmp_path))]
    assert f"-XX:SharedArchiveFile={archive}" in options
    code = ("from pyspark.sql import SparkSession; import sys; "
            "s = SparkSession.builder.master('local[1]').config('spark.ui.enabled', 'false')"
            f".config('spark.driver.extraJavaOptions', {' '.join(options)!r}).getOrCreate(); "
            "print('ARGS', list(s.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()"
            ".getInputArguments())); s.stop()")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, jvm.OPT_OUT: "off"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "-Xshare:on" in done.stdout and str(archive) in done.stdout


@pytest.mark.slow
def test_spark_submit_without_the_archive_options_is_told_how_to_pass_them(tmp_path: Path) -> None:
    """spark-submit starts the driver JVM before our code runs, so only its command line can carry the archive: a
    session started the slow way says how; one started with the option (mapped or not) says nothing."""
    script = tmp_path / "start.py"
    script.write_text("from imagenet_spark import logs\nlogs.configure('INFO')\n"
                      "from imagenet_spark.spark.session import build_context_session\n"
                      "build_context_session('hint').stop()\n")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop(jvm.OPT_OUT, None)
    hint = 'pass --driver-java-options "$(imagenet-spark jvm-archive --print-options)"'

    def submit(*options: str) -> str:
        done = subprocess.run([str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]",
                               "--conf", "spark.ui.enabled=false", *options, str(script)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr

    assert hint in submit()
    quiet = " ".join((f"-XX:SharedArchiveFile={tmp_path / 'absent.jsa'}", "-Xshare:auto", "-Xlog:cds=off"))
    assert hint not in submit("--driver-java-options", quiet)
