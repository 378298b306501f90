"""A real Spark standalone cluster for tests: one master and N workers from the installed pyspark, on loopback.

Why not local-cluster: a standalone master and workers are what users run, with their own JVMs, their own
executor processes and their own registration delays, so killing one of them is a real lost executor.
Everything started here is stopped on exit, also when the test fails (process groups, SIGKILL after a grace).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class StandaloneCluster:
    master_url: str
    workdir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def worker_pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if name.startswith("worker")}

    def executor_pids(self) -> list[int]:
        """PIDs of executor JVMs (CoarseGrainedExecutorBackend) currently running under this cluster's workers."""
        out = subprocess.run(["pgrep", "-f", "CoarseGrainedExecutorBackend"], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        mine = []
        for pid in pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(self.workdir) in cmd or self.master_url.split("//")[1] in cmd:
                mine.append(pid)
        return mine or pids


def _spark_class() -> str:
    return str(Path(sys.executable).parent / "spark-class")


@contextlib.contextmanager
def standalone_cluster(workdir: Path, *, workers: int = 2, cores: int = 1, memory: str = "1500m",
                       timeout_s: float = 90.0) -> Iterator[StandaloneCluster]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               SPARK_WORKER_DIR=str(workdir / "work"), SPARK_LOG_DIR=str(workdir / "logs"))
    cluster = StandaloneCluster(url, workdir)
    logs = {}
    try:
        # Open for the processes' lifetime; closed with the cluster (logs), so no with-block here.
        log = open(workdir / "master.log", "w")  # noqa: SIM115
        logs["master"] = log
        cluster.processes["master"] = subprocess.Popen(
            [_spark_class(), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(_free_port())], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        for i in range(workers):
            log = open(workdir / f"worker{i}.log", "w")  # noqa: SIM115
            logs[f"worker{i}"] = log
            cluster.processes[f"worker{i}"] = subprocess.Popen(
                [_spark_class(), "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores",
                 str(cores), "--memory", memory, "--webui-port", str(_free_port()), "--work-dir",
                 str(workdir / f"work{i}")], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_registered(cluster, workers, deadline=time.monotonic() + timeout_s, what="standalone cluster")
        yield cluster
    finally:
        stop_processes(cluster)
        for log in logs.values():
            log.close()


def wait_registered(cluster: StandaloneCluster, workers: int, *, deadline: float, what: str) -> None:
    """Until the master logged ``workers`` registrations; a process that exits first, or the deadline, fails
    with the tail of the log that says why."""
    while True:
        text = (cluster.workdir / "master.log").read_text(errors="replace")
        if len(re.findall(r"Registering worker", text)) >= workers:
            return
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited early:\n" + (cluster.workdir / f"{name}.log").read_text()[-3000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up:\n" + text[-3000:])
        time.sleep(0.5)


def stop_processes(cluster: StandaloneCluster) -> None:
    """SIGTERM every process group the cluster started, SIGKILL what is left after 15 s, and reap them."""
    for proc in cluster.processes.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in cluster.processes.values():
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
