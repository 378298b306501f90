"""Failures and bad configurations on a real Spark standalone cluster (master + 2 workers on 127.0.0.1), both
jobs launched with spark-submit exactly as a user would.

Why one cluster for the whole module: starting a master and two workers costs ~10 s on a 2-core machine, and
none of these tests leaves the cluster changed (a killed executor is relaunched by its worker). Each failure
test measures what it costs: the time from the kill to the finished job, and the work redone. They print a
``MEASURED`` line (``pytest -s``) and the numbers go in the issue's report.

Driver-only paths are simulated honestly with a private mount namespace for the driver (``unshare -m``): the
driver sees a directory that the executors, in the machine's own namespace, do not (as with a disk mounted on
the submitting host only). Those tests are skipped where mount namespaces are not available.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imagenet_spark.data.fake import FakeSpec, write_ilsvrc

from .standalone import StandaloneCluster, standalone_cluster

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# Training settings shared by the training runs: 2 MWMS/Horovod workers, tiny ResNet at 32 px, 7 steps/epoch
# (about 0.5 s per epoch here once TensorFlow is up: 12 epochs leave time to kill something mid-training).
EPOCHS = 12
_TRAIN = ("--config", str(REPO / "conf/train/resnet18_smoke.yaml"), "--epochs", str(EPOCHS), "--set", "track=false",
          "--set", "checkpoint_every_steps=2", "--set", "progress_every_s=0.25", "--set", "slots_wait_s=120")


def _submit_cmd(master: str, job: str, *args: str, conf: Sequence[str] = ()) -> list[str]:
    confs = [c for kv in conf for c in ("--conf", kv)]
    return [str(Path(sys.executable).parent / "spark-submit"), "--master", master,
            "--driver-java-options", f"-Dlog4j2.configurationFile={REPO / 'conf/spark/log4j2.properties'}",
            "--conf", "spark.scheduler.barrier.maxConcurrentTasksCheck.interval=1s",
            "--conf", "spark.executor.memory=1g", *confs, str(REPO / "jobs" / job), *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
                PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 600) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def _start(cmd: list[str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=cwd,
                                start_new_session=True)


def _wait_for(what: str, cond, proc: subprocess.Popen, log_path: Path, timeout: float = 400,
              poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"finished before {what}:\n" + log_path.read_text()[-4000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + log_path.read_text()[-4000:]
        time.sleep(poll)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _descendants(pid: int) -> set[int]:
    """PIDs below ``pid`` (its Python workers, their training subprocesses), from ps."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(v) for v in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _training_ranks(cluster: StandaloneCluster) -> set[int]:
    """Live TensorFlow worker processes anywhere below this cluster's worker daemons."""
    found = set()
    for pid in _alive(set().union(*(_descendants(p) for p in cluster.worker_pids().values()))):
        try:
            if b"imagenet_spark.train.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except OSError:
            continue
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _committed(output: Path) -> int:
    return len(list((output / "_staging" / "_tasks").glob("*.json")))


def _check_dataset(output: Path) -> dict:
    """The accounting invariant and no duplicate rows, read back with plain pyarrow."""
    manifest = json.loads((output / "manifest.json").read_text())
    totals = manifest["totals"]
    assert totals["written"] + totals["rejected"] == totals["inputs"], totals
    assert not (output / "_staging").exists(), "staging left behind after publishing"
    for split, size in manifest["split_sizes"].items():
        files = sorted((output / split).rglob("*.parquet"))
        assert not list((output / split).rglob("*.tmp")), f"temporary files left in {split}"
        names = [n for f in files for n in pq.read_table(f, columns=["filename"]).column("filename").to_pylist()]
        assert len(names) == size, (split, len(names), size)
        assert len(set(names)) == len(names), f"duplicate rows in {split}"
    written = sum(manifest["split_sizes"].values())
    assert written == totals["written"]
    return manifest


def _mount_ns_available() -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


def _in_driver_namespace(setup: str, cmd: list[str]) -> list[str]:
    """``cmd`` in a private mount namespace prepared by the shell commands ``setup``: what the driver sees there,
    the executors (started by the workers, outside it) do not."""
    return ["unshare", "-m", "--propagation", "private", "--", "sh", "-ec", f"{setup}\nexec {shlex.join(cmd)}"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> StandaloneCluster:
    with standalone_cluster(tmp_path_factory.mktemp("cluster"), workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_ilsvrc(root, FakeSpec(num_classes=4, train_per_class=60, val_per_class=15, image_size=(48, 40),
                                size_jitter=0.1, seed=5, broken=True))
    return root


def _partition_cmd(cluster: StandaloneCluster, raw: Path, output: str, *extra: str) -> list[str]:
    # 4 images per task: ~80 tasks, so the job runs long enough to be interrupted half way.
    return _submit_cmd(cluster.master_url, "partition.py", "--config", str(REPO / "conf/partition/smoke.yaml"),
                       "--input", str(raw), "--output", output, "--set", "resize_short=40",
                       "--set", "images_per_task=4", "--set", "rows_per_row_group=4", *extra)


@pytest.fixture(scope="module")
def killed_partition(cluster, raw, tmp_path_factory) -> dict:
    """The partition job with an executor SIGKILLed while tasks run. Its dataset serves the training tests."""
    work = tmp_path_factory.mktemp("part-exec-kill")
    output = work / "ds"
    log_path = work / "partition.log"
    started = time.monotonic()
    proc = _start(_partition_cmd(cluster, raw, str(output)), log_path)
    try:
        _wait_for("10 committed tasks", lambda: _committed(output) >= 10 if (output / "_staging").exists()
                  else False, proc, log_path, poll=0.05)
        committed_at_kill = _committed(output)
        victim = cluster.executor_pids()[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        rc = proc.wait(timeout=600)
        finished = time.monotonic()
    finally:
        _stop(proc)
    out = log_path.read_text()
    return {"output": output, "rc": rc, "log": out, "committed_at_kill": committed_at_kill,
            "kill_to_finish_s": finished - killed_at, "total_s": finished - started, "victim": victim}


def test_executor_killed_mid_partition_completes_without_duplicates(killed_partition):
    r = killed_partition
    assert r["rc"] == 0, r["log"][-5000:]
    manifest = _check_dataset(r["output"])
    assert set(manifest["counts"]) == {"train", "validation"} and manifest["split_sizes"]["train"] > 200
    lost = re.findall(r"Lost task [\d.]+ in stage [\d.]+ \(TID \d+\)", r["log"])
    tasks = re.findall(r"\d+/(\d+) tasks done", r["log"])
    print(f"MEASURED partition: executor {r['victim']} SIGKILLed with {r['committed_at_kill']} of "
          f"{tasks[-1] if tasks else '~80'} tasks committed; job finished {r['kill_to_finish_s']:.1f} s "
          f"later ({r['total_s']:.1f} s in all); tasks lost and redone (driver log): {len(lost)}; "
          f"totals {manifest['totals']}")


def test_driver_killed_mid_partition_refuses_then_resumes(cluster, raw, tmp_path):
    """spark-submit SIGKILLed (driver JVM and Python) while tasks run: nothing is published, the trainer refuses
    the half-written output, the same command refuses with the fix, and --resume completes it. The output is
    given as a relative path (the driver's working directory is not the executors')."""
    log_path = tmp_path / "partition.log"
    cmd = _partition_cmd(cluster, raw, "ds")
    output = tmp_path / "ds"
    proc = _start(cmd, log_path, cwd=tmp_path)
    try:
        _wait_for("8 committed tasks", lambda: _committed(output) >= 8 if (output / "_staging").exists() else False,
                  proc, log_path, poll=0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver: spark-submit's JVM and the Python driver in it
        proc.wait(timeout=30)
    finally:
        _stop(proc)
    killed_at_tasks = _committed(output)
    assert not (output / "manifest.json").exists() and (output / "_staging").is_dir()

    # Nothing half-written is taken as finished: the trainer refuses it, before any Spark work.
    rc, out, seconds = _run(_submit_cmd(cluster.master_url, "train_barrier.py", "--data", str(output),
                                        "--model-dir", str(tmp_path / "m"), *_TRAIN))
    assert rc != 0 and "no manifest.json, so not a finished dataset (an interrupted partition run: rerun it with " \
                      "--resume)" in out, out[-3000:]
    assert not (tmp_path / "m" / "config.json").exists()
    trainer_refused_s = seconds

    # The same command again: refused with the fix; then --resume finishes it.
    rc, out, refused_s = _run(cmd, cwd=tmp_path)
    assert rc != 0 and "holds an interrupted run" in out and "pass --resume to continue it" in out, out[-3000:]
    rc, out, resume_s = _run([*cmd, "--resume"], cwd=tmp_path)
    assert rc == 0, out[-5000:]
    skipped = re.search(r"--resume: .*?(\d+) of (\d+) tasks committed with unchanged inputs", out)
    assert skipped and int(skipped.group(1)) >= killed_at_tasks, out[-3000:]
    manifest = _check_dataset(output)
    assert manifest["resumed_tasks"] == int(skipped.group(1))
    print(f"MEASURED partition driver kill: killed with {killed_at_tasks} tasks committed; trainer refused the "
          f"unfinished output in {trainer_refused_s:.1f} s; rerun refused in {refused_s:.1f} s; --resume skipped "
          f"{skipped.group(1)}/{skipped.group(2)} tasks and finished in {resume_s:.1f} s; totals {manifest['totals']}")


def _logged_at(pattern: str, log_text: str) -> float:
    """Seconds of the day of the first driver log line ("HH:MM:SS LEVEL ...") matching ``pattern``."""
    m = re.search(r"^(\d\d):(\d\d):(\d\d) \w+ .*" + pattern, log_text, re.M)
    assert m, f"no log line matches {pattern!r}"
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))


def _epochs(model_dir: Path) -> list[int]:
    if not (model_dir / "metrics.json").exists():
        return []
    return [r["epoch"] for r in json.loads((model_dir / "metrics.json").read_text())]


def _last_step(log_text: str) -> int:
    """The last global step the driver's progress lines report ("epoch E/N step S/K" or "epoch E/N done")."""
    last = 0
    spe = int(re.search(r"(\d+) steps/epoch", log_text).group(1)) if "steps/epoch" in log_text else 1
    for m in re.finditer(r"epoch (\d+)/\d+ (?:step (\d+)/\d+|done)", log_text):
        epoch, step = int(m.group(1)), m.group(2)
        last = (epoch - 1) * spe + int(step) if step else epoch * spe
    return last


@pytest.mark.legacy_only
def test_horovod_worker_killed_mid_training_resumes(cluster, killed_partition, tmp_path):
    """Horovod (Gloo) training; after epoch 1, one executor JVM is SIGKILLed: its Python worker and the
    TensorFlow rank below it die with it, the driver relaunches the barrier stage, training resumes from the
    newest checkpoint and finishes the planned epochs, each recorded once."""
    data = killed_partition["output"]
    model_dir = tmp_path / "m"
    log_path = tmp_path / "train.log"
    proc = _start(_submit_cmd(cluster.master_url, "train_barrier.py", "--data", str(data), "--model-dir",
                              str(model_dir), "--backend", "horovod", *_TRAIN), log_path)
    try:
        _wait_for("epoch 1", lambda: _epochs(model_dir) == [1], proc, log_path, poll=0.2)
        time.sleep(0.5)  # into epoch 2
        victim = cluster.executor_pids()[0]
        below = _descendants(victim)
        assert below, "no Python worker under the executor"
        reached = _last_step(log_path.read_text())
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        time.sleep(5)
        orphans = _alive(below)
        rc = proc.wait(timeout=600)
        recovered = time.monotonic() - killed_at
    finally:
        _stop(proc)
    out = log_path.read_text()
    assert rc == 0, out[-5000:]
    assert not orphans, f"processes of the killed executor still running 5 s later: {orphans}"
    retry = re.search(r"attempt 0 failed after (\d+) s: .*; retry 1/\d+ resumes from the checkpoint at step (\d+) "
                      r"\(last progress report: step (\d+)\)", out)
    assert retry, out[-4000:]
    resume_from, last_reported = int(retry.group(2)), int(retry.group(3))
    history = json.loads((model_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1)), "each epoch exactly once across attempts"
    assert history[0]["attempt"] == 0 and history[-1]["attempt"] == 1
    assert resume_from >= history[0]["global_step"], "resumed from at least the end of epoch 1"
    assert (model_dir / "saved_model" / "saved_model.pb").exists()
    print(f"MEASURED horovod: executor JVM {victim} (+{len(below)} processes below it) SIGKILLed at step ~{reached} "
          f"(epoch 2; {history[-1]['global_step']} steps planned); finished {recovered:.1f} s later; resumed from "
          f"checkpoint step {resume_from}, last reported step {last_reported}: steps redone at least "
          f"{max(0, last_reported - resume_from)}, at most 1 + the step in flight (checkpoint every 2 steps)")


def test_port_conflict_then_driver_killed_mid_training_then_rerun(cluster, killed_partition, tmp_path):
    """MWMS. On the first attempt rank 1's exchanged port is taken before TensorFlow binds it (fault injection
    through spark-submit, --set inject_port_conflict_rank=1): detected and relaunched with fresh ports, not
    hung on. Then the driver (spark-submit) is SIGKILLed after epoch 1, and the same command run again resumes
    from the checkpoint and finishes; every epoch is recorded once. --data is relative to the driver's cwd."""
    (tmp_path / "ds").symlink_to(killed_partition["output"])
    model_dir = tmp_path / "m"
    cmd = _submit_cmd(cluster.master_url, "train_barrier.py", "--data", "ds", "--model-dir", "m", *_TRAIN,
                      "--set", "inject_port_conflict_rank=1")
    log1 = tmp_path / "train1.log"
    proc = _start(cmd, log1, cwd=tmp_path)
    try:
        _wait_for("epoch 1", lambda: _epochs(model_dir) == [1], proc, log1, poll=0.2)
        time.sleep(0.5)
        reached = _last_step(log1.read_text())
        assert len(_training_ranks(cluster)) == 2, "expected both TensorFlow ranks running under the workers"
        os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=30)
    finally:
        _stop(proc)
    # The application is gone: the master kills its executors, and the TensorFlow ranks die with them.
    deadline = time.monotonic() + 60
    while ranks := _training_ranks(cluster):
        assert time.monotonic() < deadline, f"training processes outlived the killed driver: {ranks}"
        time.sleep(0.5)
    ranks_gone_s = time.monotonic() - killed_at
    first = log1.read_text()
    conflict = re.search(r"attempt 0: a worker's port was taken before TensorFlow bound it; relaunching", first)
    assert conflict, first[-4000:]
    # detected, not hung on: from the launch of attempt 0 to its relaunch, then to the first training step
    detect_s = _logged_at("attempt 0: a worker's port was taken", first) - _logged_at("barrier slots for", first)
    first_step_s = _logged_at(r"epoch 1/\d+ step", first) - _logged_at("attempt 0: a worker's port was taken", first)
    assert detect_s < 60, first[-4000:]
    ckpt_at_kill = max(int(p.stem.split("-")[1]) for p in (model_dir / "checkpoints").glob("ckpt-*.index"))
    assert not (model_dir / "saved_model").exists()

    rc, out, seconds = _run(cmd, cwd=tmp_path)
    recovered = time.monotonic() - killed_at
    assert rc == 0, out[-5000:]
    resumed = re.search(r"holds a run: resuming it \(checkpoint at step (\d+)\)", out)
    assert resumed and int(resumed.group(1)) == ckpt_at_kill, out[-3000:]
    history = json.loads((model_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1)), "each epoch once across both commands"
    assert (model_dir / "saved_model" / "saved_model.pb").exists()
    print(f"MEASURED mwms: port conflict on rank 1 detected {detect_s:.0f} s after launch, relaunched with fresh "
          f"ports, first step {first_step_s:.0f} s later; driver SIGKILLed at step ~{reached} "
          f"(epoch 2), its TensorFlow ranks gone {ranks_gone_s:.1f} s later; rerun resumed from checkpoint step "
          f"{ckpt_at_kill} and finished in {seconds:.1f} s ({recovered:.1f} s after the kill): steps redone at "
          f"least {max(0, reached - ckpt_at_kill)}")


# --------------------------------------------------------------------------------------------------
# Bad configurations: each fails fast, before any barrier stage, naming the setting, the value and the fix.


def _refused(cluster: StandaloneCluster, data: Path, model_dir: Path, *args: str, conf: Sequence[str] = (),
             limit_s: float = 45) -> tuple[str, float]:
    rc, out, seconds = _run(_submit_cmd(cluster.master_url, "train_barrier.py", "--data", str(data),
                                        "--model-dir", str(model_dir), *_TRAIN, *args, conf=conf))
    assert rc != 0, out[-3000:]
    assert seconds < limit_s, f"took {seconds:.0f} s to refuse:\n{out[-3000:]}"
    assert "attempt 0" not in out and not (model_dir / "config.json").exists(), "training started"
    print(f"MEASURED refused in {seconds:.1f} s: {[line for line in out.splitlines() if 'ERROR' in line][-1:]}")
    return out, seconds


def test_bad_spark_settings_fail_before_spark_starts(cluster, killed_partition, tmp_path):
    data = killed_partition["output"]
    out, _ = _refused(cluster, data, tmp_path / "m", conf=["spark.dynamicAllocation.enabled=true"], limit_s=20)
    assert "spark.dynamicAllocation.enabled=true: barrier stages need a fixed set of executors" in out
    assert "Fix: --conf spark.dynamicAllocation.enabled=false" in out
    out, _ = _refused(cluster, data, tmp_path / "m", conf=["spark.task.resource.gpu.amount=1"], limit_s=20)
    assert "spark.task.resource.gpu.amount=1 but spark.executor.resource.gpu.amount is not set" in out
    out, _ = _refused(cluster, data, tmp_path / "m", conf=["spark.task.resource.gpu.amount=1",
                                                            "spark.executor.resource.gpu.amount=1"], limit_s=20)
    assert "spark.task.resource.gpu.amount=1 but no spark.executor.resource.gpu.discoveryScript" in out
    assert "Fix: --conf spark.executor.resource.gpu.discoveryScript=" in out
    out, _ = _refused(cluster, data, tmp_path / "m", "--global-batch-size", "33", limit_s=20)
    assert "global_batch_size=33: must be a positive multiple of workers=2" in out and "use 32 or 34" in out


def test_bad_cluster_and_dataset_fail_fast(cluster, killed_partition, tmp_path):
    data = killed_partition["output"]
    # 15 s: both executors must have registered by the end of the wait (their JVMs start on the same 2 busy cores)
    out, _ = _refused(cluster, data, tmp_path / "m", "--workers", "3", "--global-batch-size", "30",
                      "--set", "slots_wait_s=15")
    assert "workers=3 needs 3 barrier task slots, but the cluster has 2" in out and "Fix: use --workers 2" in out
    groups = json.loads((data / "manifest.json").read_text())["row_groups"]["validation"]
    workers = groups + 1
    out, _ = _refused(cluster, data, tmp_path / "m", "--workers", str(workers), "--global-batch-size", str(workers))
    assert f"validation: {groups} row groups for {workers} workers" in out and "rows_per_row_group" in out


@pytest.mark.skipif(not _mount_ns_available(), reason="needs root and mount namespaces (unshare -m)")
def test_paths_only_the_driver_sees_fail_fast(cluster, killed_partition, tmp_path):
    """The driver sees the dataset at ``driver_only/ds`` and can write ``blocked/models/m``; the executors see an
    empty ``driver_only/ds`` and a ``blocked/models`` that is a file, so they can neither read the one nor write
    the other. The executors' preflight names both, with the fix, before any barrier stage."""
    data = tmp_path / "driver_only" / "ds"
    data.mkdir(parents=True)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "models").write_text("not a directory for the executors")
    model_dir = blocked / "models" / "m"
    setup = (f"mount --bind {shlex.quote(str(killed_partition['output']))} {shlex.quote(str(data))}\n"
             f"mount -t tmpfs none {shlex.quote(str(blocked))}")
    cmd = _in_driver_namespace(setup, _submit_cmd(cluster.master_url, "train_barrier.py", "--data", str(data),
                                                  "--model-dir", str(model_dir), *_TRAIN))
    rc, out, seconds = _run(cmd)
    assert rc != 0, out[-3000:]
    assert seconds < 60, f"took {seconds:.0f} s:\n{out[-3000:]}"
    assert "attempt 0" not in out
    assert f"data={str(data)!r}: executor on" in out and f"cannot read {data}/manifest.json" in out, out[-3000:]
    assert f"model_dir={str(model_dir)!r}: executor on" in out and "cannot write into it" in out, out[-3000:]
    assert "Fix: put data and model_dir on storage that every executor mounts at the same path" in out
    assert not model_dir.exists() and (blocked / "models").is_file(), "the driver's view leaked out"
    print(f"MEASURED driver-only paths refused in {seconds:.1f} s: "
          f"{[line for line in out.splitlines() if 'PreflightError' in line][-1:]}")

    # A model dir executors can write, but not the driver's storage (each host would keep its own checkpoints).
    private = tmp_path / "private"
    private.mkdir()
    cmd = _in_driver_namespace(f"mount -t tmpfs none {shlex.quote(str(private))}",
                               _submit_cmd(cluster.master_url, "train_barrier.py", "--data",
                                           str(killed_partition["output"]), "--model-dir", str(private / "m"),
                                           *_TRAIN))
    rc, out, seconds = _run(cmd)
    assert rc != 0 and seconds < 60 and "attempt 0" not in out, out[-3000:]
    assert f"model_dir={str(private / 'm')!r}: executor on" in out and "does not see the file the driver wrote" \
        in out and "so it is not the driver's storage" in out, out[-3000:]
    print(f"MEASURED model dir not shared refused in {seconds:.1f} s: "
          f"{[line for line in out.splitlines() if 'PreflightError' in line][-1:]}")
