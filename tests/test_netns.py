"""Both jobs with spark-submit on a standalone cluster whose two workers are separate hosts (one network
namespace each, own address), and what every listening socket of a training run binds to, and for how long.

Why here: on loopback all ranks share 127.0.0.1, so a launcher that swaps addresses, or a server bound to
0.0.0.0 instead of the executor's address, is invisible. While training runs, the test reads each process's
listening sockets from /proc (in its own namespace) and the environment our launcher gave it (TF_CONFIG,
HOROVOD_*), then checks everything is gone once the job ends. Skips, with the reason, where namespaces
cannot be made (not root, no CAP_NET_ADMIN).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from imagenet_spark.data.fake import FakeSpec, write_ilsvrc

from .netns import NetnsCluster, driver_env, listening_sockets, namespace_listeners, netns_cluster, netns_unavailable

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.cluster]
log = logging.getLogger(__name__)
WILDCARDS = {"0.0.0.0", "::"}


def _submit(cluster: NetnsCluster, job: str, *args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "spark-submit"), "--master", cluster.master_url,
            "--driver-java-options", f"-Dlog4j2.configurationFile={REPO / 'conf/spark/log4j2.properties'}",
            "--conf", "spark.scheduler.barrier.maxConcurrentTasksCheck.interval=1s",
            "--conf", "spark.executor.memory=1g", str(REPO / "jobs" / job), *args]


@pytest.fixture(scope="module")
def cluster_and_data(tmp_path_factory):
    """One namespace cluster for the module, and a dataset written on it by the partition job."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    root = tmp_path_factory.mktemp("netns")
    write_ilsvrc(root / "raw", FakeSpec(num_classes=4, train_per_class=40, val_per_class=10, image_size=(40, 36),
                                        size_jitter=0.1, seed=7))
    with netns_cluster(root / "cluster", workers=2) as cluster:
        started = time.monotonic()
        proc = subprocess.run(_submit(cluster, "partition.py", "--config", str(REPO / "conf/partition/smoke.yaml"),
                                      "--input", str(root / "raw"), "--output", str(root / "ds"),
                                      "--set", "resize_short=36"),
                              capture_output=True, text=True, env=driver_env(cluster), timeout=400)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        log.info("partition across namespaces: %.0f s", time.monotonic() - started)
        manifest = json.loads((root / "ds" / "manifest.json").read_text())
        assert manifest["split_sizes"] == {"train": 160, "validation": 40}
        # Both executors took part, each from its own address (the executor IDs Spark logged per host).
        yield cluster, root / "ds", root


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _observe(cluster: NetnsCluster, seen: dict[int, dict[str, Any]]) -> None:
    """Record, per namespace, the TF worker process: its launcher-given environment, its spec and the
    listening sockets of it and of its parent (the barrier task's Python worker, which hosts Gloo's rendezvous)."""
    for i in range(len(cluster.namespaces)):
        for pid in cluster.namespace_pids(i):
            cmd = _cmdline(pid)
            if "imagenet_spark.train.worker" not in cmd:
                continue
            entry = seen.setdefault(i, {"pid": pid, "worker": set(), "task": set()})
            if not entry.get("env"):
                env = _environ(pid)
                entry["env"] = {k: v for k, v in env.items()
                                if k == "TF_CONFIG" or k.startswith(("HOROVOD_", "IMAGENET_SPARK_BIND"))}
                try:
                    entry["spec"] = json.loads(Path(cmd[cmd.index("imagenet_spark.train.worker") + 1]).read_text())
                except (OSError, ValueError, IndexError):
                    entry.pop("env")
                    continue
            entry["worker"].update(listening_sockets(pid))
            entry["task"].update(listening_sockets(_ppid(pid)))
            entry["task_pid"] = _ppid(pid)
            progress = entry["spec"].get("progress") or {}
            if progress:
                entry.setdefault("driver", set()).update(
                    s for s in namespace_listeners(os.getpid()) if s[1] == progress["port"])


def _train(cluster: NetnsCluster, data: Path, model_dir: Path, log_path: Path, backend: str, *extra: str
           ) -> tuple[int, dict[int, dict[str, Any]], float]:
    seen: dict[int, dict[str, Any]] = {}
    started = time.monotonic()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(_submit(cluster, "train_barrier.py", "--config",
                                        str(REPO / "conf/train/resnet18_smoke.yaml"), "--data", str(data),
                                        "--model-dir", str(model_dir), "--backend", backend, "--epochs", "1",
                                        "--set", "slots_wait_s=120", "--set", "warmup_epochs=0", *extra),
                                stdout=out, stderr=subprocess.STDOUT, env=driver_env(cluster), start_new_session=True)
    try:
        while proc.poll() is None:
            _observe(cluster, seen)
            assert time.monotonic() - started < 420, log_path.read_text()[-4000:]
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    return proc.returncode, seen, time.monotonic() - started


def _assert_gone(cluster: NetnsCluster, seen: dict[int, dict[str, Any]]) -> None:
    """After the job: no process of the run is left in any namespace, and none of its ports still listens."""
    deadline = time.monotonic() + 20
    workers = {cluster.processes[f"worker{i}"].pid for i in range(len(cluster.namespaces))}
    while True:
        leftover = {i: [p for p in cluster.namespace_pids(i) if p not in workers]
                    for i in range(len(cluster.namespaces))}
        if not any(leftover.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not any(leftover.values()), f"processes outlived the job: {leftover}"
    for i, entry in seen.items():
        ports = {p for _, p in entry["worker"] | entry["task"]}
        still = [s for s in namespace_listeners(cluster.processes[f"worker{i}"].pid) if s[1] in ports]
        assert not still, f"namespace {i}: sockets of the run still listening: {still}"
        driver_ports = {p for _, p in entry.get("driver", set())}
        assert not [s for s in namespace_listeners(os.getpid()) if s[1] in driver_ports], "progress server outlived"


def _check_hosts(cluster: NetnsCluster, seen: dict[int, dict[str, Any]]) -> dict[int, int]:
    """Each namespace ran exactly one rank, with its own address as the one our launcher used. Returns ns → rank."""
    assert sorted(seen) == [0, 1], f"a TF worker was not seen in every namespace: {sorted(seen)}"
    ranks = {}
    for i, entry in seen.items():
        ctx = entry["spec"]["ctx"]
        assert ctx["host"] == cluster.addresses[i], (i, ctx)
        ranks[i] = ctx["rank"]
    assert sorted(ranks.values()) == [0, 1]
    assert cluster.addresses[0] != cluster.addresses[1]
    return ranks


@pytest.mark.timeout(600)
def test_mwms_across_namespaces_binds_own_addresses(cluster_and_data):
    cluster, data, root = cluster_and_data
    # The pickle-free reader here (Horovod's run keeps petastorm): both read paths cross hosts.
    rc, seen, seconds = _train(cluster, data, root / "m_mwms", root / "mwms.log", "mwms", "--set",
                               "train_reader=parquet")
    out = (root / "mwms.log").read_text()
    assert rc == 0, out[-5000:]
    assert (root / "m_mwms" / "saved_model" / "saved_model.pb").exists()
    assert [r["epoch"] for r in json.loads((root / "m_mwms" / "metrics.json").read_text())] == [1]
    ranks = _check_hosts(cluster, seen)
    report = {}
    for i, entry in seen.items():
        config = json.loads(entry["env"]["TF_CONFIG"])
        hosts = [a.rsplit(":", 1)[0] for a in config["cluster"]["worker"]]
        assert sorted(hosts) == sorted(cluster.addresses), config
        assert config["task"]["index"] == ranks[i] and hosts[ranks[i]] == cluster.addresses[i]
        grpc_port = int(config["cluster"]["worker"][ranks[i]].rsplit(":", 1)[1])
        grpc = [s for s in entry["worker"] if s[1] == grpc_port]
        assert grpc, f"TF gRPC server of rank {ranks[i]} never seen listening on {grpc_port}: {entry['worker']}"
        # Ours: the progress server (driver) binds the driver's address on the bridge, never a wildcard.
        if entry.get("driver"):
            assert entry["driver"] == {(cluster.bridge_address, entry["spec"]["progress"]["port"])}, entry["driver"]
        report[f"rank{ranks[i]}@{cluster.addresses[i]}"] = {"tf_grpc": sorted(grpc),
                                                            "worker_listeners": sorted(entry["worker"]),
                                                            "task_listeners": sorted(entry["task"]),
                                                            "driver_progress": sorted(entry.get("driver", ()))}
        # TF 2.15 GrpcServer::Init binds "0.0.0.0:<port>" whatever TF_CONFIG says; the bind shim preloaded into
        # the worker (bind_tf_to_host, default on) rewrites that bind to the task's own address.
        assert entry["env"].get("IMAGENET_SPARK_BIND_ADDR") == cluster.addresses[i], entry["env"]
        assert {addr for addr, _ in grpc} <= {cluster.addresses[i], f"::ffff:{cluster.addresses[i]}"}, grpc
    assert any(e.get("driver") for e in seen.values()), "the driver's progress server was never seen"
    _assert_gone(cluster, seen)
    log.warning("mwms across namespaces: %.0f s; sockets %s", seconds, json.dumps(report))
    print(f"mwms across namespaces in {seconds:.0f} s; listening sockets: {json.dumps(report)}")


@pytest.mark.legacy_only
@pytest.mark.timeout(600)
def test_horovod_across_namespaces_binds_own_addresses(cluster_and_data):
    pytest.importorskip("horovod.tensorflow")
    cluster, data, root = cluster_and_data
    rc, seen, seconds = _train(cluster, data, root / "m_hvd", root / "hvd.log", "horovod")
    out = (root / "hvd.log").read_text()
    assert rc == 0, out[-5000:] + f"\nlauncher-given environments: {[e.get('env') for e in seen.values()]}"
    assert (root / "m_hvd" / "saved_model" / "saved_model.pb").exists()
    ranks = _check_hosts(cluster, seen)
    report = {}
    for i, entry in seen.items():
        env = entry["env"]
        assert env["HOROVOD_RANK"] == str(ranks[i]) and env["HOROVOD_HOSTNAME"] == cluster.addresses[i], env
        assert env["HOROVOD_GLOO_RENDEZVOUS_ADDR"] == seen[[k for k in seen if ranks[k] == 0][0]]["spec"]["ctx"]["host"]
        assert env.get("HOROVOD_GLOO_IFACE") == "eth0", env  # choose_iface: the interface holding the address
        assert env["HOROVOD_CROSS_SIZE"] == "2" and env["HOROVOD_LOCAL_SIZE"] == "1", env
        port = int(env["HOROVOD_GLOO_RENDEZVOUS_PORT"])
        if ranks[i] == 0:  # the rendezvous lives in rank 0's barrier task, on that executor's own address
            assert (cluster.addresses[i], port) in entry["task"], entry["task"]
        assert not [s for s in entry["task"] | entry["worker"] if s[0] in WILDCARDS and s[1] == port]
        # Gloo's pairs (in the TF worker) listen on the address of the hostname (this namespace's own, via its
        # /etc/hosts) only while the full mesh connects, so a 0.2 s poll may miss them: whatever was seen is ours.
        assert all(addr == cluster.addresses[i] for addr, _ in entry["worker"]), entry["worker"]
        if entry.get("driver"):
            assert entry["driver"] == {(cluster.bridge_address, entry["spec"]["progress"]["port"])}, entry["driver"]
        report[f"rank{ranks[i]}@{cluster.addresses[i]}"] = {"worker_listeners": sorted(entry["worker"]),
                                                            "task_listeners": sorted(entry["task"]),
                                                            "driver_progress": sorted(entry.get("driver", ()))}
    _assert_gone(cluster, seen)
    print(f"horovod across namespaces in {seconds:.0f} s; listening sockets: {json.dumps(report)}")


@pytest.mark.legacy_only
def test_horovod_refuses_hosts_whose_hostname_is_loopback_without_retrying(cluster_and_data):
    """The shared /etc/hosts maps the hostname to 127.0.0.1 on both "hosts": Gloo would dial loopback across
    hosts and crash after the rendezvous. The launcher refuses it before any TF worker starts, once (a relaunch
    cannot fix a host's setup), with the fix."""
    pytest.importorskip("horovod.tensorflow")
    _, data, root = cluster_and_data
    with netns_cluster(root / "cluster_lo", workers=2, own_hosts_file=False) as cluster:
        rc, seen, seconds = _train(cluster, data, root / "m_lo", root / "lo.log", "horovod")
    out = (root / "lo.log").read_text()
    assert rc != 0, out[-4000:]
    assert "BackendError" in out and "cannot connect to executor" in out and "Fix: map" in out, out[-4000:]
    assert "retry 1/" not in out, "not retried: every attempt would fail the same way"
    assert not seen, "no TensorFlow worker started"
    print(f"refused in {seconds:.0f} s (spark-submit start to exit, cluster already up)")
