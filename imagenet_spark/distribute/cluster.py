"""Pure functions that turn what the barrier tasks exchanged into what TensorFlow/Horovod need.

Why pure: they are the part of the launcher users get wrong by hand (TF_CONFIG that hangs, GPUs mapped
twice, IPv6 hosts split at the wrong colon), so they take plain values and are tested on their own,
for many layouts, without Spark or TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imagenet_spark.errors import ImagenetSparkError


class LaunchError(ImagenetSparkError, RuntimeError):
    """The barrier stage cannot start workers as configured; the message says why and how to fix it."""


@dataclass(frozen=True)
class Endpoint:
    rank: int
    host: str
    port: int

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)


def split_host_port(address: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port``, bare ``v6`` or bare ``host`` → (host, port or None)."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if address.count(":") > 1:  # bare IPv6 address, no port
        return address, None
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, None
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tf_config(endpoints: Sequence[Endpoint], rank: int) -> str:
    """TF_CONFIG for MultiWorkerMirroredStrategy: every worker, in rank order; this one is ``rank``.

    Rank 0 is the chief by MWMS convention (worker 0), which is also our ``is_chief``.
    """
    ordered = sorted(endpoints, key=lambda e: e.rank)
    if [e.rank for e in ordered] != list(range(len(ordered))):
        raise LaunchError(f"ranks {[e.rank for e in ordered]} are not 0..{len(ordered) - 1}")
    if not 0 <= rank < len(ordered):
        raise LaunchError(f"rank {rank} outside 0..{len(ordered) - 1}")
    addresses = [e.address for e in ordered]
    if len(set(addresses)) != len(addresses):
        raise LaunchError(f"two workers share an address: {addresses}")
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": rank}})


@dataclass(frozen=True)
class HostLayout:
    """Horovod's view of the job: ranks grouped by host (local ranks) and across hosts (cross ranks)."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int


def host_layout(hosts: Sequence[str], rank: int) -> HostLayout:
    """Local/cross ranks from the host of every rank (in rank order).

    Local rank: position among the ranks on the same host. Cross group: the ranks sharing this local rank,
    one per host, in rank order (Horovod's hierarchical allreduce uses both).
    """
    local = [hosts[:r].count(h) for r, h in enumerate(hosts)]
    peers = [r for r in range(len(hosts)) if local[r] == local[rank]]
    return HostLayout(rank=rank, size=len(hosts), local_rank=local[rank], local_size=hosts.count(hosts[rank]),
                      cross_rank=peers.index(rank), cross_size=len(peers))


def visible_gpus(assigned: Sequence[str], inherited: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for a task given the GPU addresses Spark assigned it.

    Spark's addresses come from the discovery script. When the executor already runs under a restricted
    CUDA_VISIBLE_DEVICES (YARN, Kubernetes device plugins), the addresses index into that list, so they must
    be mapped through it, or two tasks would end up on the same physical GPU.
    """
    if not assigned:
        return ""
    if not inherited:
        return ",".join(assigned)
    visible = [g.strip() for g in inherited.split(",") if g.strip()]
    out = []
    for address in assigned:
        if not address.isdigit() or int(address) >= len(visible):
            raise LaunchError(
                f"Spark assigned GPU address {address!r} but the executor's CUDA_VISIBLE_DEVICES={inherited!r} has "
                f"{len(visible)} entries. Fix: make the GPU discovery script report indices 0..{len(visible) - 1} "
                "within CUDA_VISIBLE_DEVICES.")
        out.append(visible[int(address)])
    return ",".join(out)


def gpu_addresses(resources: Mapping[str, Any]) -> list[str]:
    """GPU addresses from ``TaskContext.resources()`` (a dict of ResourceInformation), [] when none."""
    info = resources.get("gpu")
    return list(info.addresses) if info is not None else []
