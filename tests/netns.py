"""A Spark standalone cluster whose workers are separate "hosts": one Linux network namespace per worker.

Why: on loopback every executor reports 127.0.0.1, so a launcher that mixes up whose address is whose, binds
0.0.0.0, or only works when all ranks share a host still passes. Here each worker (and every executor, Python
worker and TensorFlow process it starts) lives in its own network namespace with its own address on a veth
pair attached to a bridge in the root namespace; the master and the driver sit on the bridge's address
(``.1``). Nothing else is isolated (same filesystem, same users), which is what a shared-storage cluster looks
like to our jobs.

Each namespace also gets its own ``/etc/hosts`` (``ip netns exec`` bind-mounts ``/etc/netns/NAME/hosts`` over
it) in which this machine's hostname resolves to the namespace's address, as on a real host. That matters:
Horovod 0.28's Gloo binds its collective connections to the address of the hostname, whatever
HOROVOD_GLOO_IFACE says (see imagenet_spark/distribute/horovod_env.py, ``check_gloo_hostname``).
``own_hosts_file=False`` leaves the shared ``/etc/hosts`` (hostname → loopback) to reproduce that failure.

Needs root and a working ``ip netns``; :func:`netns_unavailable` says why not, and the tests skip with it.
Everything is named ``isk<pid>...`` after the creating process, so a run never collides with another one, and
leftovers of crashed runs (whose pid is gone) are removed before a new cluster starts. On exit, also on
failure: every process in each namespace is killed, then the namespaces (taking their veth ends) and the
bridge are deleted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imagenet_spark.ownership import pid_alive

from .standalone import StandaloneCluster, _spark_class, stop_processes, wait_registered

log = logging.getLogger(__name__)

PREFIX = "isk"  # imagenet-spark: every namespace/link this harness creates starts with it
_NAME = re.compile(rf"^{PREFIX}(\d+)[bvw][\dx]*$")
_CLUSTERS = itertools.count()  # several clusters in one process (a test may need its own): isk<pid>w<seq>x<i>
SUBNETS = [ipaddress.ip_network(f"10.213.{i}.0/24") for i in range(256)]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def netns_unavailable() -> str | None:
    """None when this process can create namespaces, veths and bridges; otherwise the reason it cannot."""
    if os.geteuid() != 0:
        return f"network namespaces need root (tests run as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}w99"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()} (no CAP_SYS_ADMIN/CAP_NET_ADMIN in this container?)"
        bridge = f"{PREFIX}{os.getpid()}b99"
        made = _ip("link", "add", bridge, "type", "bridge", check=False)
        if made.returncode != 0:
            return f"`ip link add ... type bridge` failed: {made.stderr.strip()}"
        _ip("link", "del", bridge, check=False)
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL every process inside ``ns`` (workers, executors, Python and TF workers), then wait them out."""
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    log.warning("processes still in namespace %s after SIGKILL: %s", ns, pids)


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    out = _ip("-o", "link", "show", check=False).stdout
    return [m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", out, re.M)]


def clean_stale(owner_alive: bool = False) -> list[str]:
    """Remove namespaces and links left by harness runs whose creating process is gone. Returns their names.

    ``owner_alive=True`` also removes this process's own (used on exit)."""
    removed = []
    for ns in _namespaces():
        m = _NAME.match(ns)
        if m and (not pid_alive(int(m.group(1))) or (owner_alive and int(m.group(1)) == os.getpid())):
            _kill_namespace_processes(ns)
            _ip("netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
            removed.append(ns)
    for link in _links():
        m = _NAME.match(link)
        if m and (not pid_alive(int(m.group(1))) or (owner_alive and int(m.group(1)) == os.getpid())):
            _ip("link", "del", link, check=False)
            removed.append(link)
    etc = Path("/etc/netns")
    for entry in (etc.iterdir() if etc.is_dir() else []):
        m = _NAME.match(entry.name)
        if m and entry.name not in _namespaces() and (not pid_alive(int(m.group(1))) or owner_alive):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    if removed:
        log.info("removed leftover namespaces/links: %s", removed)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """The first 10.213.N.0/24 no interface on this machine uses (10.213.0.0/24 unless another run has it)."""
    used = _ip("-o", "-4", "addr", "show", check=False).stdout
    for net in SUBNETS:
        if str(net.network_address)[:-1] not in used:  # "10.213.N." prefix
            return net
    raise RuntimeError("no free 10.213.N.0/24 subnet for the namespace cluster")


@dataclass
class NetnsCluster(StandaloneCluster):
    """A standalone cluster whose worker ``i`` runs in namespace ``namespaces[i]`` with address ``addresses[i]``."""

    bridge: str = ""
    bridge_address: str = ""
    namespaces: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)

    def namespace_pids(self, i: int) -> list[int]:
        """Every process running in worker ``i``'s namespace right now."""
        return [int(p) for p in _ip("netns", "pids", self.namespaces[i], check=False).stdout.split()]

    def exec_in(self, i: int, *cmd: str) -> subprocess.CompletedProcess[str]:
        """Run a command inside worker ``i``'s namespace (e.g. ``ss -ltnp``)."""
        return subprocess.run(["ip", "netns", "exec", self.namespaces[i], *cmd], capture_output=True, text=True,
                              timeout=60)


def _wait_reachable(cluster: NetnsCluster, i: int, port: int, timeout_s: float = 10.0) -> None:
    """Fail early, naming the namespace, when worker ``i`` cannot reach the master's port over the bridge."""
    probe = (f"import socket; socket.create_connection(({cluster.bridge_address!r}, {port}), timeout=2).close()")
    deadline = time.monotonic() + timeout_s
    while True:
        proc = cluster.exec_in(i, "python3", "-c", probe)
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"namespace {cluster.namespaces[i]} ({cluster.addresses[i]}) cannot reach the master "
                               f"at {cluster.bridge_address}:{port}: {proc.stderr.strip()[-500:]}")
        time.sleep(0.3)


def _free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def netns_cluster(workdir: Path, *, workers: int = 2, cores: int = 1, memory: str = "1500m",
                  timeout_s: float = 90.0, own_hosts_file: bool = True) -> Iterator[NetnsCluster]:
    """Bridge + one namespace per worker + a master on the bridge address + a Worker JVM in each namespace.

    The driver (spark-submit) must run with ``SPARK_LOCAL_IP=cluster.bridge_address`` so executors in the
    namespaces can reach it: see :meth:`driver_env`.
    """
    import sys

    clean_stale()
    workdir.mkdir(parents=True, exist_ok=True)
    seq = next(_CLUSTERS)
    tag = f"{PREFIX}{os.getpid()}"
    net = _free_subnet()
    hosts = list(net.hosts())
    cluster = NetnsCluster(master_url="", workdir=workdir, bridge=f"{tag}b{seq}", bridge_address=str(hosts[0]))
    logs = {}
    try:
        _ip("link", "add", cluster.bridge, "type", "bridge")
        # Bridged traffic must not go through the host's iptables (br_netfilter, e.g. Docker's FORWARD DROP).
        _ip("link", "set", cluster.bridge, "type", "bridge", "nf_call_iptables", "0", check=False)
        _ip("addr", "add", f"{cluster.bridge_address}/{net.prefixlen}", "dev", cluster.bridge)
        _ip("link", "set", cluster.bridge, "up")
        for i in range(workers):
            ns, veth, address = f"{tag}w{seq}x{i}", f"{tag}v{seq}x{i}", str(hosts[1 + i])
            _ip("netns", "add", ns)
            cluster.namespaces.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", cluster.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            cluster.addresses.append(address)
            if own_hosts_file:
                etc = Path(f"/etc/netns/{ns}")
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{address}\t{socket.gethostname()}\n")

        port = _free_port_on(cluster.bridge_address)
        cluster.master_url = f"spark://{cluster.bridge_address}:{port}"
        base_env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOG_DIR=str(workdir / "logs"),
                        SPARK_WORKER_DIR=str(workdir / "work"))
        # Open for the processes' lifetime; closed with the cluster (logs), so no with-block here.
        log_file = open(workdir / "master.log", "w")  # noqa: SIM115
        logs["master"] = log_file
        cluster.processes["master"] = subprocess.Popen(
            [_spark_class(), "org.apache.spark.deploy.master.Master", "--host", cluster.bridge_address, "--port",
             str(port), "--webui-port", str(_free_port_on(cluster.bridge_address))],
            stdout=log_file, stderr=subprocess.STDOUT, env=dict(base_env, SPARK_LOCAL_IP=cluster.bridge_address),
            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while "Starting Spark master" not in (workdir / "master.log").read_text(errors="replace"):
            if cluster.processes["master"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("master did not start:\n" + (workdir / "master.log").read_text()[-3000:])
            time.sleep(0.3)
        for i in range(workers):
            _wait_reachable(cluster, i, port)
            log_file = open(workdir / f"worker{i}.log", "w")  # noqa: SIM115
            logs[f"worker{i}"] = log_file
            cluster.processes[f"worker{i}"] = subprocess.Popen(
                ["ip", "netns", "exec", cluster.namespaces[i], _spark_class(), "org.apache.spark.deploy.worker.Worker",
                 cluster.master_url, "--host", cluster.addresses[i], "--cores", str(cores), "--memory", memory,
                 "--webui-port", "0", "--work-dir", str(workdir / f"work{i}")],
                stdout=log_file, stderr=subprocess.STDOUT, env=dict(base_env, SPARK_LOCAL_IP=cluster.addresses[i]),
                start_new_session=True)
        wait_registered(cluster, workers, deadline=deadline, what="namespace cluster")
        log.info("namespace cluster up: master %s, workers %s", cluster.master_url, cluster.addresses)
        yield cluster
    finally:
        stop_processes(cluster)
        for i, ns in enumerate(cluster.namespaces):  # executors and TF workers left a new session: kill by namespace
            _kill_namespace_processes(ns)
            _ip("netns", "del", ns, check=False)
            _ip("link", "del", f"{tag}v{seq}x{i}", check=False)  # gone with the namespace, except under gVisor
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        _ip("link", "del", cluster.bridge, check=False)
        for log_file in logs.values():
            log_file.close()


def driver_env(cluster: NetnsCluster) -> dict[str, str]:
    """Environment for spark-submit in the root namespace: the driver binds the bridge address."""
    import sys

    return dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP=cluster.bridge_address,
                PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


# --------------------------------------------------------------------------------------------------
# Listening sockets of a process, from /proc (works in any namespace; no `ss` needed)


def _hex_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` / 32-hex-digit IPv6 from /proc/net/tcp{,6} → (address, port)."""
    addr_hex, port_hex = text.split(":")
    raw = bytes.fromhex(addr_hex)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}", int(port_hex, 16)
    return str(address), int(port_hex, 16)


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that process ``pid`` holds open.

    Reads the socket inodes from /proc/PID/fd and the process's own namespace's tables from /proc/PID/net/tcp
    and tcp6, so the result is what that process has bound, wherever it runs. [] if it is gone."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        out = []
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and cols[9] in inodes:  # 0A = TCP_LISTEN
                        out.append(_hex_address(cols[1]))
        return sorted(set(out))
    except (FileNotFoundError, ProcessLookupError):
        return []


def namespace_listeners(pid: int) -> list[tuple[str, int]]:
    """Every TCP LISTEN socket in the network namespace of ``pid`` (whoever holds it)."""
    out = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                out += [_hex_address(line.split()[1]) for line in f if line.split()[3] == "0A"]
        except FileNotFoundError:
            return []
    return sorted(set(out))
