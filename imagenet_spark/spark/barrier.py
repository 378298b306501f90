"""One training attempt in a Spark barrier stage: one TensorFlow worker process per task.

What this module gets right, each one a way real launchers hang or fail late:

* Gang scheduling: a barrier stage waits until every task has a slot. We check slots >= workers up front
  (waiting a bounded time for executors to register) and that dynamic allocation is off, and fail with the
  numbers and the fix instead of waiting forever.
* Every task makes exactly one ``allGather`` (host and port), on every path, so no task waits for a peer
  that took another branch. Local mode reports the same host:port for every task, so we take only the
  host from ``getTaskInfos`` and pick the port ourselves. For MWMS in local mode the driver picks the ports
  and the tasks exchange nothing (a task that fails then fails the stage, and Spark kills the others).
* A failed task raises a typed :class:`~imagenet_spark.distribute.failures.TaskFailure` record (its kind
  decided by exception type where the failure happened), so the driver's retry loop (jobs/train.py) branches
  on the kind, not on the message.
* GPUs: the task's Spark GPU addresses, mapped through any CUDA_VISIBLE_DEVICES the executor already has,
  are set before TensorFlow loads (in the worker subprocess).

The attempts, retries, tracking and progress are the training job's driver: :mod:`imagenet_spark.jobs.train`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from imagenet_spark.config import from_dict, to_dict
from imagenet_spark.distribute.cluster import (
    Endpoint,
    LaunchError,
    gpu_addresses,
    host_layout,
    split_host_port,
    tf_config,
    visible_gpus,
)
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.distribute.failures import BarrierTaskError, FailureKind, task_failure
from imagenet_spark.distribute.launch import run_worker_process
from imagenet_spark.distribute.ports import free_port, free_ports, hold_port
from imagenet_spark.distribute.threads import host_cpus, size_threads
from imagenet_spark.spark.jobs import run_barrier
from imagenet_spark.spark.preflight import check_spark_conf
from imagenet_spark.spark.session import executors_in_driver_jvm, local_slots, master_kind
from imagenet_spark.train.spec import WorkerSpec
from imagenet_spark.train_config import TrainConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Cluster checks (driver)


def trains_on_driver(cfg: TrainConfig, master: str) -> bool:
    """One worker in local / local[N] runs as a driver subprocess, without a barrier stage (the executors are
    the driver's JVM anyway); local-cluster and real clusters get a barrier stage."""
    return cfg.workers == 1 and executors_in_driver_jvm(master)


def available_slots(spark: Any) -> int:
    """Barrier task slots the cluster has right now (what Spark itself checks for gang scheduling)."""
    sc = spark.sparkContext
    jsc = sc._jsc.sc()
    try:
        profile = jsc.resourceProfileManager().defaultResourceProfile()
        return int(jsc.maxNumConcurrentTasks(profile))
    except Exception:  # noqa: BLE001 - a JVM without the resource-profile API (py4j raises anything): fall back
        return int(sc.defaultParallelism)


_SLOTS_SETTLE_S = 5.0


def _slots_now(spark: Any, master: str) -> int:
    """local[N]: the master string says it; local-cluster and clusters: ask Spark (executors register late)."""
    promised = local_slots(master) if master_kind(master) == "local" else None
    return promised if promised is not None else available_slots(spark)


def check_cluster(spark: Any, cfg: TrainConfig, *, hoped: int | None = None) -> int:
    """Fail fast, with the fix, on settings that make barrier training hang or fail late. Returns the slots.

    ``hoped``: slots the caller could use beyond ``cfg.workers`` (the search, for trials at once). Executors
    register one by one, so it waits for that many while the count still grows (until it has been steady for
    a few seconds, or ``slots_wait_s``), instead of deciding on the first executor to arrive."""
    conf = spark.sparkContext.getConf()
    check_spark_conf(dict(conf.getAll()), master=spark.sparkContext.master, barrier=True)
    sync = conf.get("spark.barrier.sync.timeout", None)
    if sync is None:
        log.warning("spark.barrier.sync.timeout is unset (365 days): a lost task could stall the start-up exchange "
                    "for a year. Set it (our sessions use %s s).", cfg.launch.barrier_timeout_s)
    master = spark.sparkContext.master
    deadline = time.monotonic() + cfg.launch.slots_wait_s
    seen, steady_since = -1, time.monotonic()
    while True:
        slots = _slots_now(spark, master)
        if slots != seen:
            seen, steady_since = slots, time.monotonic()
        if slots >= max(cfg.workers, hoped or 0):
            return slots
        now = time.monotonic()
        if slots >= cfg.workers and (now - steady_since >= _SLOTS_SETTLE_S or now >= deadline):
            return slots
        if now >= deadline:
            task_cpus = conf.get("spark.task.cpus", "1")
            raise LaunchError(
                f"workers={cfg.workers} needs {cfg.workers} barrier task slots, but the cluster has {slots} "
                f"(master {master}, spark.task.cpus={task_cpus}, waited {cfg.launch.slots_wait_s} s for executors). "
                "Fix: "
                f"use --workers {max(1, slots)}, or give the cluster more executors/cores.")
        time.sleep(1.0)


# --------------------------------------------------------------------------------------------------
# What the tasks exchange (one allGather each, on every path)


@dataclass(frozen=True)
class _Offer:
    """First exchange: where this task's worker listens, or why it cannot take part."""

    rank: int
    host: str
    port: int
    problem: str = ""


@dataclass(frozen=True)
class _RendezvousOffer:
    """Horovod's second exchange: the rendezvous port (task 0), or a problem and its kind ("backend": the
    host's setup or a missing package, which no relaunch fixes; "error": worth a retry)."""

    rank: int
    port: int
    problem: str = ""
    kind: FailureKind = "error"


def _all_gather(ctx: Any, offer: Any) -> list[Any]:
    """Every task's record of the same type, in task order (``BarrierTaskContext.allGather`` of JSON)."""
    return [from_dict(type(offer), json.loads(m)) for m in ctx.allGather(json.dumps(to_dict(offer)))]


def _horovod_problem(wctx: WorkerContext, hosts: list[str], interface: str | None) -> tuple[Any, _RendezvousOffer,
                                                                                             str | None]:
    """This task's side of the rendezvous: (server or None, its offer, the network interface)."""
    from imagenet_spark.distribute.horovod_env import (
        check_gloo_hostname,
        choose_iface,
        gloo_hostname_address,
        host_alloc_plan,
        start_rendezvous,
    )

    server, iface = None, None
    try:
        plan = host_alloc_plan(hosts)
        iface = interface or choose_iface(wctx.host)
        problem = check_gloo_hostname(wctx.host, hosts, gloo_hostname_address())
        if problem:  # the host's setup: no relaunch fixes it
            return None, _RendezvousOffer(rank=wctx.rank, port=0, problem=problem, kind="backend"), iface
        if wctx.rank == 0:
            server = start_rendezvous(host=wctx.host, plan=plan)
        return server, _RendezvousOffer(rank=wctx.rank, port=server.port if server else 0), iface
    except ImportError as exc:
        from imagenet_spark.distribute.horovod_backend import INSTALL_HINT

        problem = f"backend='horovod': cannot start the Horovod rendezvous server ({exc}). {INSTALL_HINT}"
        return None, _RendezvousOffer(rank=wctx.rank, port=0, problem=problem, kind="backend"), iface
    except Exception as exc:  # noqa: BLE001 - must reach the exchange, so every rank fails together
        problem = f"backend='horovod': {type(exc).__name__}: {exc}"
        return server, _RendezvousOffer(rank=wctx.rank, port=0, problem=problem), iface


def _horovod_launch(ctx: Any, wctx: WorkerContext, endpoints: list[Endpoint], *, interface: str | None,
                    timeout_s: int | None, gpu: bool) -> tuple[Any, dict[str, str]]:
    """Gloo rendezvous hosted by task 0, without mpirun or ssh: returns (server or None, HOROVOD_* variables).

    Task 0 starts Horovod's rendezvous server on its own address; a second ``allGather`` shares its port.
    Every task makes that call on every path (a task that failed to prepare sends its problem instead), so a
    failure fails all tasks together rather than leaving them waiting. The caller stops the server.
    """
    from imagenet_spark.distribute.backends import BackendError
    from imagenet_spark.distribute.horovod_env import horovod_env

    hosts = [e.host for e in endpoints]
    server, offer, iface = _horovod_problem(wctx, hosts, interface)
    gathered: list[_RendezvousOffer] = _all_gather(ctx, offer)
    try:
        problems = "; ".join(f"rank {g.rank}: {g.problem}" for g in gathered if g.problem)
        if any(g.kind == "backend" for g in gathered):
            raise BackendError(problems)  # the driver does not retry these
        if problems:
            raise LaunchError(problems)
        port0 = next(g.port for g in gathered if g.rank == 0)
        env = horovod_env(hosts=hosts, rank=wctx.rank, rendezvous_host=hosts[0], rendezvous_port=port0,
                          iface=iface, gpu=gpu, gloo_timeout_s=timeout_s)
    except Exception:
        if server is not None:
            server.stop()
        raise
    log.info("rank %d: horovod via Gloo, rendezvous %s:%d, iface %s", wctx.rank, hosts[0], port0, iface)
    return server, env


def _tf_bind_env(host: str, port: int) -> dict[str, str]:
    """Variables that make TensorFlow's gRPC server bind this task's address, not every interface (see
    distribute/bind_shim.py); empty, with a warning, where the shim cannot be built on this host."""
    import ipaddress
    import socket

    from imagenet_spark.distribute.bind_shim import build_shim, shim_env

    library, why = build_shim()
    if library is None:
        log.warning("TensorFlow's gRPC server will listen on all interfaces of %s (port %d): the bind shim is "
                    "unavailable (%s). Set bind_tf_to_host=false to silence this, or install a C compiler.",
                    host, port, why)
        return {}
    try:
        address = str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:  # a host name: bind what it resolves to, as the peers will
        address = str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
    return shim_env(library, host=address, port=port, inherited=os.environ.get("LD_PRELOAD"))


# --------------------------------------------------------------------------------------------------
# The barrier task (executor)


def _exchange_endpoints(ctx: Any, rank: int, host: str, ports: tuple[int, ...]) -> tuple[list[Endpoint], int, str]:
    """The first exchange: (every task's endpoint in rank order, this task's port, its GPUs). With ``ports``
    (the driver chose them: every task runs on its machine) nothing is exchanged, see :func:`run_attempt`."""
    if ports:
        gpus = visible_gpus(gpu_addresses(ctx.resources()), os.environ.get("CUDA_VISIBLE_DEVICES"))
        return [Endpoint(r, host, port) for r, port in enumerate(ports)], ports[rank], gpus
    try:
        gpus = visible_gpus(gpu_addresses(ctx.resources()), os.environ.get("CUDA_VISIBLE_DEVICES"))
        offer = _Offer(rank=rank, host=host, port=free_port(host))
    except (LaunchError, OSError) as exc:  # still take part in the exchange, then fail together
        gpus, offer = "", _Offer(rank=rank, host=host, port=0, problem=str(exc))
    gathered: list[_Offer] = _all_gather(ctx, offer)
    problems = [f"rank {g.rank}: {g.problem}" for g in gathered if g.problem]
    if problems:
        raise LaunchError("; ".join(problems))
    endpoints = sorted((Endpoint(g.rank, g.host, g.port) for g in gathered), key=lambda e: e.rank)
    return endpoints, offer.port, gpus


def _worker_context(ctx: Any, spec: WorkerSpec, endpoints: list[Endpoint], rank: int, gpus: str) -> WorkerContext:
    layout = host_layout([e.host for e in endpoints], rank)
    sizing = size_threads(spec.config.launch.cpus_per_worker, task_cpus=ctx.cpus(),
                          gpus=len(gpus.split(",")) if gpus else 0, host=host_cpus(), local_size=layout.local_size)
    return WorkerContext(rank=rank, size=len(endpoints), local_rank=layout.local_rank, local_size=layout.local_size,
                         cross_rank=layout.cross_rank, cross_size=layout.cross_size, host=endpoints[rank].host,
                         attempt=spec.attempt, cpus=sizing.cpus, cpus_source=sizing.source, task_cpus=ctx.cpus())


def _run_task(ctx: Any, spec: WorkerSpec, rank: int) -> dict[str, Any]:
    """This task's worker, from the exchange to its result (raises on any failure, after the exchanges)."""
    host = split_host_port(ctx.getTaskInfos()[rank].address)[0]
    endpoints, port, gpus = _exchange_endpoints(ctx, rank, host, spec.ports)
    wctx = _worker_context(ctx, spec, endpoints, rank, gpus)
    cfg = spec.config
    env: dict[str, str] = {}
    if cfg.backend == "mwms":
        env["TF_CONFIG"] = tf_config(endpoints, rank)
        if cfg.launch.bind_tf_to_host:
            env.update(_tf_bind_env(host, port))
    if gpus or spec.has_gpu_resources:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    held = rendezvous = None
    if spec.inject_port_conflict_rank == rank and spec.attempt == 0:
        held = hold_port(host, port)  # fault injection: the exchanged port is taken before TF binds it
    try:
        if cfg.backend == "horovod":
            rendezvous, horovod_vars = _horovod_launch(ctx, wctx, endpoints, interface=cfg.launch.network_interface,
                                                       timeout_s=cfg.launch.barrier_timeout_s, gpu=bool(gpus))
            env.update(horovod_vars)
        return run_worker_process(to_dict(dataclasses.replace(spec, ctx=wctx)), env=env, rank=rank,
                                  standby=spec.standby[rank] if rank < len(spec.standby) else None)
    finally:
        if held is not None:
            held.close()
        if rendezvous is not None:  # the task ends (done, failed or killed): the rendezvous goes with it
            rendezvous.stop()


def _barrier_task(spec: WorkerSpec, _partition: Iterator[Any]) -> Iterator[str]:
    """One barrier task; a failure leaves as a :class:`BarrierTaskError` carrying its kind for the driver."""
    from pyspark import BarrierTaskContext

    ctx = BarrierTaskContext.get()
    rank = ctx.partitionId()
    try:
        result = _run_task(ctx, spec, rank)
    except Exception as exc:
        raise BarrierTaskError(task_failure(exc, rank)) from exc
    if rank == 0:
        yield json.dumps(result)


# --------------------------------------------------------------------------------------------------
# One attempt (driver)


def run_attempt(spark: Any, spec: WorkerSpec, *, on_driver: bool, description: str) -> dict[str, Any]:
    """Launch one attempt and return the chief's result: a barrier stage of ``config.workers`` tasks, or, with
    ``on_driver``, a single worker process started by the driver. Raises SparkJobError or LaunchError."""
    if on_driver:
        sizing = size_threads(spec.config.launch.cpus_per_worker, task_cpus=None, gpus=0, host=host_cpus(),
                              local_size=1)
        wctx = WorkerContext(attempt=spec.attempt, cpus=sizing.cpus, cpus_source=sizing.source)
        return run_worker_process(to_dict(dataclasses.replace(spec, ctx=wctx)), env={}, rank=0,
                                  standby=spec.standby[0] if spec.standby else None)
    if spec.config.backend == "mwms" and executors_in_driver_jvm(spark.sparkContext.master):
        # Every task is on this machine: the ports need no exchange, and Spark's allGather returns to the task
        # that arrives first only at its next poll, a second later (issue #13: ~1 s of a ~13 s launch).
        spec = dataclasses.replace(spec, ports=free_ports(spec.config.workers))
    outputs = run_barrier(spark, spec.config.workers, lambda it: _barrier_task(spec, it), description=description)
    result: dict[str, Any] = json.loads(outputs[0])
    return result
