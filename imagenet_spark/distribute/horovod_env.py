"""What a barrier task needs to start Horovod workers over Gloo without mpirun, ssh or ``horovodrun``.

Horovod's Gloo controller is configured entirely by ``HOROVOD_*`` variables: the rank layout, where the
rendezvous key-value server is, and which network interface the Gloo TCP device binds. Horovod's own
launchers compute these on a driver and ssh into hosts; in a Spark barrier stage every task already knows
the hosts of all tasks (one ``allGather``), so each task computes its own variables here, from plain
values. That part (:func:`host_alloc_plan`, :func:`horovod_env`) is pure and tested for many layouts.

Two things here are not pure, and say so: :func:`choose_iface` reads this machine's interfaces, and
:func:`start_rendezvous` starts Horovod's HTTP rendezvous server (in barrier task 0, for the task's life).

Why the layout is not Horovod's ``get_host_assignments``: that numbers ranks host by host, while Spark hands
out task ids in any host order (interleaved, uneven). We keep the Spark task id as the Horovod rank (data
shards, fault injection and ``is_chief`` all key on it) and derive local and cross ranks from it the way
Horovod 0.28's Gloo controller itself re-derives them (its local communicator is keyed by
``HOROVOD_HOSTNAME``, its cross communicator by local rank, members ordered by global rank), which is also
``cluster.host_layout``: so ``hvd.local_rank()``/``hvd.cross_rank()`` equal the WorkerContext's.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagenet_spark.distribute.cluster import host_layout
from imagenet_spark.errors import ImagenetSparkError

log = logging.getLogger(__name__)


class HorovodLaunchError(ImagenetSparkError, RuntimeError):
    """Horovod cannot be wired up as asked (bad layout, no rendezvous server); the message names the fix."""


@dataclass(frozen=True)
class Slot:
    """One Horovod process: the attributes Horovod's rendezvous server reads from its ``SlotInfo``."""

    hostname: str
    rank: int
    local_rank: int
    cross_rank: int
    size: int
    local_size: int
    cross_size: int


def host_alloc_plan(hosts: Sequence[str]) -> list[Slot]:
    """The Horovod layout for processes whose hosts are ``hosts`` (index = rank), in rank order.

    * rank: the index (the Spark task id), so rank 0 is the chief and hosts the rendezvous.
    * local rank / size: position among the ranks on the same host, in rank order / how many there are.
    * cross rank / size: position among the ranks with the same local rank (one per host), in rank order /
      how many hosts have that local rank. Gloo forms ``cross_<local rank>`` from these, so they must be
      0..size-1 within each such group, for any host order Spark produced.
    """
    if not hosts:
        raise HorovodLaunchError("hosts=[]: a Horovod job needs at least one process.")
    if any(not h for h in hosts):
        raise HorovodLaunchError(f"hosts={list(hosts)!r}: an empty host name. Fix: every task must report its "
                                 "address (check spark.driver.host / SPARK_LOCAL_IP on the executors).")
    plan = []
    for rank, host in enumerate(hosts):
        layout = host_layout(hosts, rank)
        plan.append(Slot(hostname=host, rank=rank, local_rank=layout.local_rank, cross_rank=layout.cross_rank,
                         size=layout.size, local_size=layout.local_size, cross_size=layout.cross_size))
    return plan


def horovod_env(*, hosts: Sequence[str], rank: int, rendezvous_host: str, rendezvous_port: int,
                iface: str | None, gpu: bool, gloo_timeout_s: int | None = None) -> dict[str, str]:
    """Every variable a Horovod Gloo worker of rank ``rank`` needs, given the hosts of all ranks in rank order.

    ``iface`` is this worker's own interface (it may be named differently on every host, which is why each
    task picks its own rather than a cluster-wide common one); None leaves Gloo to resolve the hostname.
    ``gpu``: this worker has a GPU, so GPU tensors should be reduced with NCCL (Gloo stays the controller
    and does the CPU tensors either way). Note that Horovod 0.28 reads HOROVOD_GPU_OPERATIONS only when it
    is *built*: at run time GPU tensors go to NCCL exactly when Horovod was compiled with it, which the
    backend checks (``hvd.nccl_built()``) and warns about; the variable is set for tools and for clarity,
    and NCCL_SOCKET_IFNAME keeps NCCL's bootstrap on the same network as Gloo.
    ``gloo_timeout_s``: how long Gloo waits for peers at start-up and in a collective (Horovod's default
    of 30 s is short when every worker imports TensorFlow on a busy host).
    """
    plan = host_alloc_plan(hosts)
    if not 0 <= rank < len(plan):
        raise HorovodLaunchError(f"rank={rank}: outside 0..{len(plan) - 1} for {len(plan)} hosts.")
    if not 0 < rendezvous_port < 65536:
        raise HorovodLaunchError(f"rendezvous_port={rendezvous_port}: not a TCP port. Fix: pass the port the "
                                 "rendezvous server of rank 0 listens on.")
    slot = plan[rank]
    env = {
        "HOROVOD_RANK": str(slot.rank),
        "HOROVOD_SIZE": str(slot.size),
        "HOROVOD_LOCAL_RANK": str(slot.local_rank),
        "HOROVOD_LOCAL_SIZE": str(slot.local_size),
        "HOROVOD_CROSS_RANK": str(slot.cross_rank),
        "HOROVOD_CROSS_SIZE": str(slot.cross_size),
        "HOROVOD_HOSTNAME": slot.hostname,
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": rendezvous_host,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(rendezvous_port),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
    }
    if iface:
        env["HOROVOD_GLOO_IFACE"] = iface
    if gpu:
        env["HOROVOD_GPU_OPERATIONS"] = "NCCL"
        if iface:
            env["NCCL_SOCKET_IFNAME"] = iface
    if gloo_timeout_s is not None:
        env["HOROVOD_GLOO_TIMEOUT_SECONDS"] = str(int(gloo_timeout_s))
    return env


def choose_iface(host: str) -> str | None:
    """The name of the network interface that carries ``host`` on this machine (``lo`` for 127.0.0.1).

    ``host`` is the executor's own address as Spark uses it (an IP or a name). Gloo binds its TCP device to
    an interface; Horovod's default is the interface of the resolved hostname, which on many machines is
    not the one Spark uses (here: the hostname resolves to loopback but Gloo picked eth0). Returns None when
    no interface holds the address (then TrainConfig.network_interface must name one).
    """
    import psutil

    wanted = set()
    try:
        wanted.add(ipaddress.ip_address(host.split("%")[0]))
    except ValueError:  # a name: every address it resolves to
        try:
            wanted.update(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                          for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
        except (OSError, ValueError):
            return None
    for name, addresses in sorted(psutil.net_if_addrs().items()):
        for address in addresses:
            if address.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                if ipaddress.ip_address(address.address.split("%")[0]) in wanted:
                    return name
            except ValueError:
                continue
    if any(a.is_loopback for a in wanted):
        return "lo" if "lo" in psutil.net_if_addrs() else None
    return None


def gloo_hostname_address(hostname: str | None = None) -> str | None:
    """The address Horovod 0.28's Gloo binds its collective connections to on this machine, or None.

    Why this exists: Horovod reads HOROVOD_GLOO_IFACE only for its bootstrap contexts
    (``GlooContext::Initialize``); the contexts every collective actually runs on are built by
    ``GlooContext::InitializeForProcessSet`` (horovod/common/gloo/gloo_context.cc, 0.28.1), which creates a new
    device from the *process set's* ``gloo_iface_``, never set, so Gloo falls back to ``gethostname()`` and
    binds the first address that name resolves to (gloo/transport/tcp/device.cc ``lookupAddrForHostname``).
    We do the same lookup: resolve, then take the first address that can be bound.
    """
    name = hostname or socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return None
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind((sockaddr[0], 0))
        except OSError:
            continue
        return str(sockaddr[0])
    return None


def check_gloo_hostname(host: str, hosts: Sequence[str], address: str | None) -> str:
    """Empty when Gloo's collectives can connect across ``hosts``; else the problem and its fix.

    ``host``: this task's address; ``address``: :func:`gloo_hostname_address` on this machine. On one host
    a loopback address is fine; across hosts it means the peers dial 127.x (measured: ``connect
    [127.0.0.1]:PORT: Connection refused`` and a crashed worker, after the rendezvous succeeded).
    """
    if len(set(hosts)) < 2:
        return ""
    name = socket.gethostname()
    if address is None:
        return (f"Horovod's Gloo binds to the address of this machine's hostname ({name!r}), which does not "
                f"resolve to a bindable address on executor {host}. Fix: map {name!r} to {host} in /etc/hosts "
                "(or DNS) on every worker host.")
    try:
        loopback = ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return ""
    if loopback:
        return (f"Horovod's Gloo binds its collective connections to the address of this machine's hostname "
                f"({name!r} -> {address}; HOROVOD_GLOO_IFACE is not used for them in Horovod 0.28), so ranks on "
                f"the other hosts ({', '.join(sorted(set(hosts) - {host}))}) cannot connect to executor {host}. "
                f"Fix: map {name!r} to {host} in /etc/hosts (or DNS) on every worker host, or use --backend mwms.")
    return ""


class Rendezvous:
    """Horovod's HTTP rendezvous server, bound to one address (Horovod's own binds every interface).

    Started by barrier task 0 before its worker, stopped when the task ends (``stop`` in a ``finally``).
    The key-value store lives in this process, so a lost task 0 takes it down with the job, and a retried
    stage starts a fresh one on a fresh port (no stale keys from the failed attempt).
    """

    def __init__(self, *, host: str, plan: Sequence[Slot], verbose: int = 0) -> None:
        from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class _Server(RendezvousHTTPServer):  # type: ignore[misc, valid-type, unused-ignore]  # Any where horovod is absent
            address_family = family
            daemon_threads = True  # a handler stuck on a dead worker's socket must not keep the task alive

        self._httpd: Any = _Server((host, 0), RendezvousHandler, verbose)
        self._httpd.init(list(plan))
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="horovod-rendezvous", daemon=True)
        self._thread.start()
        log.info("horovod rendezvous server on %s:%d for %d processes", host, self.port, len(plan))

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def start_rendezvous(*, host: str, plan: Sequence[Slot]) -> Rendezvous:
    """Start the rendezvous server on ``host`` (this task's own address) for the processes in ``plan``."""
    return Rendezvous(host=host, plan=plan)
