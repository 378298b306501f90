"""The driver JVM's start options (spark/jvm.py): merged into the user's, opted out by name, and an archive that a
JVM really maps (a JVM told ``-Xshare:on`` refuses to start when it cannot)."""

from __future__ import annotations

import os
import subprocess
import sys
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
