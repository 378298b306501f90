"""The ownership rules on real directories: disjoint paths, our marker, the lease (live, stale, racing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from imagenet_spark import ownership
from imagenet_spark.config import ConfigError


@pytest.mark.parametrize("out, inp, relation", [
    ("data", "data", "is the same directory as"),
    ("data/out", "data", "lies inside"),
    ("data", "data/sub", "contains"),
    ("data/../data/./", "data", "is the same directory as"),
])
def test_overlapping_paths_refused(tmp_path, out, inp, relation):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match=relation) as info:
        ownership.check_disjoint("output", str(tmp_path / out), "input", str(tmp_path / inp))
    assert info.value.setting == "output" and "Fix:" in str(info.value)


def test_overlap_through_symlink_and_file_uri_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    with pytest.raises(ConfigError, match="lies inside"):
        ownership.check_disjoint("output", str(tmp_path / "alias" / "out"), "input", f"file://{tmp_path}/data")


def test_siblings_and_prefix_names_are_disjoint(tmp_path):
    ownership.check_disjoint("output", str(tmp_path / "data-out"), "input", str(tmp_path / "data"))
    ownership.check_disjoint("model_dir", "s3://bucket/models/a", "data", "s3://bucket/data/a")
    with pytest.raises(ConfigError):
        ownership.check_disjoint("model_dir", "s3://bucket/data/a/../a/m", "data", "s3a://bucket/data/a")


def test_check_ours_refuses_foreign_directory_and_kind(tmp_path):
    def never(_: str) -> bool:
        return False

    assert ownership.check_ours("output", str(tmp_path / "missing"), "dataset", never) is False
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    assert ownership.check_ours("output", str(tmp_path / "empty"), "dataset", never) is False
    user = tmp_path / "photos"
    user.mkdir()
    (user / "labels.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"not empty \(labels.txt\) and was not made by this job"):
        ownership.check_ours("output", str(user), "dataset", never)
    assert (user / "labels.txt").read_text() == "mine"
    ownership.write_mark(str(tmp_path / "ds"), "dataset")
    assert ownership.check_ours("output", str(tmp_path / "ds"), "dataset", never) is True
    with pytest.raises(ConfigError, match="holds an imagenet-spark dataset, not a model dir"):
        ownership.check_ours("model_dir", str(tmp_path / "ds"), "model_dir", never)
    assert ownership.check_ours("output", str(user), "dataset", lambda d: os.path.exists(f"{d}/labels.txt")) is True


def test_lease_is_exclusive_and_released(tmp_path):
    with ownership.Lease("output", str(tmp_path), "first job"):
        with pytest.raises(ownership.LeaseHeldError, match=r"in use by first job by .* \(pid \d+\)") as info:
            ownership.Lease("output", str(tmp_path), "second job").acquire()
        assert info.value.setting == "output"
        held = json.loads((tmp_path / ownership.LEASE).read_text())
        assert held["pid"] == os.getpid() and held["job"] == "first job"
    assert not (tmp_path / ownership.LEASE).exists()
    ownership.Lease("output", str(tmp_path), "third job").acquire().release()


def test_lease_of_a_killed_job_is_taken_over(tmp_path):
    """A real process takes the lease and is SIGKILLed: the next job takes over and says whose lease it was."""
    code = ("import sys, time; from imagenet_spark.ownership import Lease; "
            "Lease('output', sys.argv[1], 'doomed job').acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    with pytest.raises(ownership.LeaseHeldError, match="doomed job"):
        ownership.Lease("output", str(tmp_path), "impatient").acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lease = ownership.Lease("output", str(tmp_path), "successor").acquire()
    assert json.loads((tmp_path / ownership.LEASE).read_text())["job"] == "successor"
    lease.release()


def test_lease_without_heartbeat_is_stale(tmp_path):
    """A holder on another host is judged by its heartbeat alone."""
    (tmp_path / ownership.LEASE).write_text(json.dumps({
        "job": "remote", "user": "u", "host": "elsewhere.invalid", "pid": 1, "since": 0.0, "heartbeat": 0.0,
        "token": "t"}))
    ownership.Lease("output", str(tmp_path), "local", stale_after_s=60).acquire().release()


def test_lease_race_has_one_winner(tmp_path):
    winners, losers = [], []

    def claim(n: int) -> None:
        try:
            winners.append(ownership.Lease("output", str(tmp_path), f"job {n}").acquire())
        except ownership.LeaseHeldError:
            losers.append(n)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
    winners[0].release()


def test_heartbeat_refreshes_the_lease(tmp_path):
    lease = ownership.Lease("output", str(tmp_path), "beating", heartbeat_s=0.05).acquire()
    first = json.loads((tmp_path / ownership.LEASE).read_text())["heartbeat"]
    threading.Event().wait(0.3)
    assert json.loads((tmp_path / ownership.LEASE).read_text())["heartbeat"] > first
    lease.release()
