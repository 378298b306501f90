"""Spark's Python workers import the installed, byte-compiled pyspark (spark/worker_daemon.py), only where the
daemon is this interpreter on this machine, and only in place of a zip that duplicates the installed package."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from imagenet_spark.spark import session
from imagenet_spark.spark.worker_daemon import without_duplicate_zip


def _pip_layout(root: Path) -> Path:
    """``<root>/pyspark/__init__.py`` with ``<root>/pyspark/python/lib/pyspark.zip``: pip's pyspark, where the zip
    and the package are one install. Returns the zip's path."""
    lib = root / "pyspark" / "python" / "lib"
    lib.mkdir(parents=True)
    (root / "pyspark" / "__init__.py").write_text("")
    (lib / "pyspark.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    (lib / "py4j-0.10.9.7-src.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    return lib / "pyspark.zip"


def test_zip_of_the_installed_package_is_dropped_and_nothing_else(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    zipped = _pip_layout(site)
    py4j = str(zipped.with_name("py4j-0.10.9.7-src.zip"))  # may differ from the installed py4j: kept
    path = ["/work", str(zipped), py4j, "/x/spark-core.jar", str(site)]
    assert without_duplicate_zip(path) == ["/work", py4j, "/x/spark-core.jar", str(site)]


def test_zip_is_kept_when_its_package_is_not_on_the_path(tmp_path: Path) -> None:
    """A Spark distribution's own SPARK_HOME (the package around the zip is not importable), or a pip layout
    whose site directory is not on the path: the zip is the only pyspark there is."""
    dist = tmp_path / "spark-3.5.1-bin-hadoop3"
    lib = dist / "python" / "lib"
    lib.mkdir(parents=True)
    (lib / "pyspark.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    (dist / "python" / "pyspark").mkdir()
    (dist / "python" / "pyspark" / "__init__.py").write_text("")
    other = _pip_layout(tmp_path / "elsewhere")
    path = [str(lib / "pyspark.zip"), str(other), str(dist / "python"), "/usr/lib/python3/site-packages"]
    assert without_duplicate_zip(path) == path


@pytest.fixture()
def python_is_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    monkeypatch.setenv("SPARK_CONF_DIR", "/nonexistent-conf-dir")


@pytest.mark.usefixtures("python_is_ours")
@pytest.mark.parametrize(("master", "expected"), [
    ("local[2]", True), ("local", True), ("local[2,2]", True), ("local[*]", True),
    ("local-cluster[2,1,1024]", False), ("spark://head:7077", False), ("yarn", False), (None, False)])
def test_daemon_named_only_for_local_masters(master: str | None, expected: bool) -> None:
    setting = session.worker_daemon_setting(master, {})
    assert setting == ({session.WORKER_DAEMON: "imagenet_spark.spark.worker_daemon"} if expected else {})


@pytest.mark.usefixtures("python_is_ours")
def test_daemon_left_alone_for_another_interpreter_or_a_users_own(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    assert session.worker_daemon_setting("local[2]", {session.WORKER_DAEMON: "corp.daemon"}) == {}
    (tmp_path / "spark-defaults.conf").write_text(f"{session.WORKER_DAEMON} corp.daemon\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    assert session.worker_daemon_setting("local[2]", {}) == {}
    monkeypatch.setenv("SPARK_CONF_DIR", "/nonexistent-conf-dir")
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/other/bin/python3")
    assert session.worker_daemon_setting("local[2]", {}) == {}


def _worker_facts(_: Any) -> dict[str, Any]:
    import pyspark

    main = sys.modules["__main__"]
    return {"pyspark": pyspark.__file__, "daemon": getattr(main.__spec__, "name", None), "pid": os.getpid(),
            "zips": [p for p in sys.path if p.endswith("pyspark.zip")]}


@pytest.mark.both_stacks
def test_real_workers_run_our_daemon_and_the_installed_pyspark(spark: Any) -> None:
    """The session the tests share was built by build_session with a local master: its Python workers are forked
    by our daemon and import pyspark from the installed package (a zip path would mean compiling it each start)."""
    import pyspark

    facts = spark.sparkContext.parallelize(range(4), 2).map(_worker_facts).collect()
    assert {f["daemon"] for f in facts} == {"imagenet_spark.spark.worker_daemon"}
    assert {f["pyspark"] for f in facts} == {pyspark.__file__}, facts
    assert all(".zip" not in f["pyspark"] and not f["zips"] for f in facts), facts
