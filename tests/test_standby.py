"""Standby worker processes (distribute/standby.py): adopted by a task, declined when their start environment
differs, ended when their task goes away or the pool closes. Real processes that really import TensorFlow; the
worker they run is the real ``train.worker.main`` (given a spec it rejects, or one it blocks reading)."""

from __future__ import annotations

import ctypes.util
import logging
import os
import random
import time
from pathlib import Path

import pytest

from imagenet_spark.distribute.launch import WorkerFailedError, run_worker_process
from imagenet_spark.distribute.standby import Adoption, Declined, StandbyPool, adopt, exit_line, release
from imagenet_spark.spark.session import master_from_submit_args


@pytest.fixture
def task_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as a barrier task's would be: PySpark gives its Python workers PYTHONHASHSEED=0, and the
    launcher gives a worker TF_CPP_MIN_LOG_LEVEL=2 unless set (both read at start-up: compared on adoption)."""
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[1].split()[0] == "Z":  # exited, not yet reaped by its parent (us)
                    return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def _standbys(importer: int, count: int, timeout: float = 60.0) -> list[int]:
    """The pids of the standbys ``importer`` forked, once there are ``count`` (it forks after importing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if entry.isdigit() and int(f.read().split(")")[1].split()[1]) == importer:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        if len(found) >= count:
            return sorted(found)
        time.sleep(0.2)
    raise AssertionError(f"importer {importer} forked {len(found)} standbys in {timeout} s, not {count}")


def test_exit_line_is_recognised_only_with_the_token() -> None:
    assert exit_line("abc", "abc exit 75") == 75
    assert exit_line("abc", "abc exit -9") == -9
    assert exit_line("abc", "xyz exit 0") is None
    assert exit_line("abc", "abc exit now") is None


def test_closing_the_pool_while_it_imports_ends_it() -> None:
    pool = StandbyPool(2)
    directory = os.path.dirname(pool.addresses[0])
    pool.close()
    assert _gone(pool._proc.pid)
    assert not os.path.exists(directory)


@pytest.mark.slow
def test_one_import_forks_every_standby_and_closing_ends_those_nobody_adopted() -> None:
    """The standbys are forks of one process that imported TensorFlow once (not one import each, on the cores
    Spark starts on); closing the pool ends them and then their importer."""
    pool = StandbyPool(2)
    standbys = _standbys(pool._proc.pid, 2)
    pool.close()
    assert all(_gone(pid) for pid in standbys)
    assert pool._proc.wait(timeout=20) == 0


@pytest.mark.slow
def test_adopted_standby_runs_the_worker_and_reports_its_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                 task_env: None) -> None:
    """The task's output and exit code come over the connection: a spec the worker rejects ends as the same
    WorkerFailedError, with the worker's own exception line, that a fresh process gives."""
    with StandbyPool(1) as pool, caplog.at_level(logging.INFO, logger="imagenet_spark.distribute.launch"):
        with pytest.raises(WorkerFailedError, match=r"rank 0: training worker exited with code 1: "
                                                    r"(TypeError|KeyError|ValueError)") as err:
            run_worker_process({}, env={}, rank=0, standby=pool.addresses[0])
        assert err.value.kind == "error"
        assert "adopted standby worker pid" in caplog.text
        assert "starting a fresh worker process" not in caplog.text
        assert pool._proc.wait(timeout=30) == 0, "its one standby ended: the importer ends too"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["LD_PRELOAD", "TF_ENABLE_ONEDNN_OPTS"])
def test_a_standby_started_differently_is_declined_for_a_fresh_process(name: str, caplog: pytest.LogCaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       task_env: None) -> None:
    """A variable read at start-up (the loader's, TensorFlow's import-time switch) that the task would give a fresh
    process otherwise: the standby is declined, ends by itself, and a fresh process runs the worker."""
    value = ctypes.util.find_library("c") if name == "LD_PRELOAD" else "0"
    if value is None:
        pytest.skip("no libc name to preload")
    monkeypatch.delenv(name, raising=False)  # the task's own environment has none
    with StandbyPool(1, env={name: value}) as pool, \
            caplog.at_level(logging.INFO, logger="imagenet_spark.distribute.launch"):
        with pytest.raises(WorkerFailedError, match="exited with code 1"):
            run_worker_process({}, env={}, rank=0, standby=pool.addresses[0])
        assert f"was started with {name}={value!r}" in caplog.text and "starting a fresh worker" in caplog.text
        assert pool._proc.wait(timeout=30) == 0, "a declined standby ends by itself, and then its importer"


@pytest.mark.slow
def test_a_standby_whose_task_goes_away_ends(tmp_path: Path, task_env: None) -> None:
    """The worker blocks reading its spec (a FIFO nobody writes); the task closes the connection, as a killed
    task's process does; the worker must not be left running."""
    fifo = tmp_path / "spec.json"
    os.mkfifo(fifo)
    with StandbyPool(1) as pool:
        hello, _lines, conn = adopt(pool.addresses[0], Adoption(str(fifo), str(tmp_path / "result.json"),
                                                                dict(os.environ)))
        time.sleep(1.0)
        assert not _gone(hello.pid, timeout=0.5), "adopted and blocked, still alive"
        release(conn)
        assert _gone(hello.pid)
        assert pool._proc.wait(timeout=20) == 0


def test_an_absent_standby_is_declined(tmp_path: Path) -> None:
    with pytest.raises(Declined):
        adopt(str(tmp_path / "nobody.sock"), Adoption("spec", "result"))


# What spark-submit's launcher put on a driver JVM's command line here (Spark 4.3, `spark-submit --master local[2]
# --conf spark.ui.enabled=false --driver-java-options -Dx=1 app.py --master foo`), JVM options shortened.
_REAL_SUBMIT_JVM = ["/usr/lib/jvm/java-17/bin/java", "-cp", "/venv/pyspark/conf/:/venv/pyspark/jars/*", "-Xmx1g",
                    "-Dx=1", "--enable-native-access=ALL-UNNAMED", "org.apache.spark.deploy.SparkSubmit", "--master",
                    "local[2]", "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.extraJavaOptions=-Dx=1",
                    "app.py", "--master", "foo"]


def test_the_master_is_read_from_spark_submits_options_never_the_applications() -> None:
    assert master_from_submit_args(_REAL_SUBMIT_JVM) == "local[2]"
    jvm, app = _REAL_SUBMIT_JVM[:7], ["app.py", "--master", "yarn"]
    assert master_from_submit_args([*jvm, "--verbose", "--conf", "spark.master=local[3]", *app]) == "local[3]"
    assert master_from_submit_args([*jvm, "--master=local", "--conf=spark.master=yarn", *app]) == "local"
    assert master_from_submit_args([*jvm, "--name", "--master", *app]) is None, "a value, not an option"
    assert master_from_submit_args([*jvm, "--conf", "spark.ui.enabled=false", *app]) is None, "spark-defaults decides"
    assert master_from_submit_args([*jvm, "--master"]) is None
    assert master_from_submit_args([*jvm, "app.py", "x", "--master", "yarn"]) is None
    assert master_from_submit_args(["python3", "app.py", "--master", "local[2]"]) is None, "not spark-submit's JVM"


def _generated_submit(rng: random.Random) -> tuple[list[str], str | None]:
    """A SparkSubmit command line of random options (values that look like options or masters included), a master
    given zero or more times in any of its four spellings, and application arguments with decoys of their own."""
    tokens = ["java", "-cp", "/jars/*", "-Dspark.master=yarn", "org.apache.spark.deploy.SparkSubmit"]
    master = conf_master = None
    for _ in range(rng.randint(0, 8)):
        kind = rng.choice(["flag", "flag=", "conf", "conf=", "switch", "other", "other"])
        value = rng.choice(["local", "local[2]", "local[*]", "yarn", "spark://h:7077", "k8s://https://h"])
        if kind == "flag":
            tokens += ["--master", value]
            master = value
        elif kind == "flag=":
            tokens.append(f"--master={value}")
            master = value
        elif kind in ("conf", "conf="):
            setting = f"spark.master={value}" if rng.random() < 0.6 else f"spark.app.name=--master {value}"
            tokens += ["--conf", setting] if kind == "conf" else [f"--conf={setting}"]
            conf_master = value if setting.startswith("spark.master=") else conf_master
        elif kind == "switch":
            tokens.append(rng.choice(["--verbose", "-v", "--supervise"]))
        else:
            tokens += [rng.choice(["--name", "--py-files", "--driver-memory", "--files"]),
                       rng.choice(["--master", "a.py,b.py", "2g", "-v", "--conf"])]
    tokens += ["jobs/train_barrier.py", *rng.choice([[], ["--master", "yarn"], ["--conf", "spark.master=local"],
                                                     ["--data", "--master", "yarn"], ["x", "--master=yarn"]])]
    return tokens, master or conf_master


def test_generated_spark_submit_command_lines() -> None:
    """500 seeded command lines: the last --master before the application wins, else the last --conf spark.master;
    nothing after the application's path counts."""
    rng = random.Random(20261130)
    for _ in range(500):
        tokens, expected = _generated_submit(rng)
        assert master_from_submit_args(tokens) == expected, tokens
