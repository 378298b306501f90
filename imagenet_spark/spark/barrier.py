"""Launch training in a Spark barrier stage: one TensorFlow worker per task, retried by the driver.

What this module gets right, each one a way real launchers hang or fail late:

* Gang scheduling: a barrier stage waits until every task has a slot. We check slots >= workers up front
  (waiting a bounded time for executors to register) and that dynamic allocation is off, and fail with the
  numbers and the fix instead of waiting forever.
* Spark never retries a failed barrier ResultStage, so the driver does: up to ``max_retries`` times, each
  attempt resuming from the newest checkpoint. A port lost between picking and binding is relaunched
  without counting against the retries.
* Every task makes exactly one ``allGather`` (host and port), on every path, so no task waits for a peer
  that took another branch. Local mode reports the same host:port for every task, so we take only the
  host from ``getTaskInfos`` and pick the port ourselves.
* GPUs: the task's Spark GPU addresses, mapped through any CUDA_VISIBLE_DEVICES the executor already has,
  are set before TensorFlow loads (in the worker subprocess).
* Progress reaches the driver console while training runs; the job group is cancelled on any failure.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from typing import Any, Iterator

from imagenet_spark import ownership
from imagenet_spark.config import TrainConfig, to_dict
from imagenet_spark.distribute.cluster import (Endpoint, LaunchError, gpu_addresses, host_layout, split_host_port,
                                               tf_config, visible_gpus)
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.distribute.launch import run_worker_process
from imagenet_spark.distribute.ports import free_port, hold_port
from imagenet_spark.distribute.progress import ProgressServer, format_progress
from imagenet_spark.distribute.threads import host_cpus, size_threads
from imagenet_spark.spark.jobs import SparkJobError, run_barrier
from imagenet_spark.spark.preflight import check_spark_conf, check_training_paths, with_absolute_paths
from imagenet_spark.spark.session import executors_in_driver_jvm
from imagenet_spark.tracking import Tracker
from imagenet_spark.train.divergence import failure_error
from imagenet_spark.train.loop import RunPlan
from imagenet_spark.train.planning import check_model_dir, make_run_plan, prepare_model_dir
from imagenet_spark.train.reporting import read_metrics

log = logging.getLogger(__name__)

_PORT_CONFLICT_RETRIES = 3


class TrainingFailedError(LaunchError):
    """Training failed more often than ``max_retries`` allows."""


# --------------------------------------------------------------------------------------------------
# Cluster checks (driver)


def _local_slots(master: str) -> int | None:
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master)
    if m:
        n = m.group(1)
        return os.cpu_count() or 1 if n in (None, "*") else int(n) if n else 1
    m = re.fullmatch(r"local-cluster\[(\d+),\s*(\d+),\s*\d+\]", master)
    if m:
        return int(m.group(1)) * int(m.group(2))
    return None


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
    except Exception:  # noqa: BLE001 - py4j: private API shape differs across Spark versions
        return int(sc.defaultParallelism)


_SLOTS_SETTLE_S = 5.0


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
                    "for a year. Set it (our sessions use %s s).", cfg.barrier_timeout_s)
    master = spark.sparkContext.master
    deadline = time.monotonic() + cfg.slots_wait_s
    local = _local_slots(master)
    seen, steady_since = -1, time.monotonic()
    while True:
        slots = local if local is not None and master.startswith("local[") else available_slots(spark)
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
                f"(master {master}, spark.task.cpus={task_cpus}, waited {cfg.slots_wait_s} s for executors). Fix: "
                f"use --workers {max(1, slots)}, or give the cluster more executors/cores.")
        time.sleep(1.0)


# --------------------------------------------------------------------------------------------------
# The barrier task (executor)


def _horovod_launch(ctx: Any, wctx: WorkerContext, endpoints: list[Endpoint], spec: dict[str, Any], *,
                    gpu: bool) -> tuple[Any, dict[str, str]]:
    """Gloo rendezvous hosted by task 0, without mpirun or ssh: returns (server or None, HOROVOD_* variables).

    Task 0 starts Horovod's rendezvous server on its own address; a second ``allGather`` shares its port.
    Every task makes that call on every path (a task that failed to prepare sends its error instead), so a
    failure fails all tasks together rather than leaving them waiting. The caller stops the server.
    """
    from imagenet_spark.distribute.horovod_env import (check_gloo_hostname, choose_iface, gloo_hostname_address,
                                                       horovod_env, host_alloc_plan, start_rendezvous)

    rank, cfg = wctx.rank, spec["config"]
    hosts = [e.host for e in endpoints]
    server = None
    port, problem, iface = 0, "", None
    permanent = False  # a problem no relaunch can fix (the host's setup, a missing package): not retried
    try:
        plan = host_alloc_plan(hosts)
        iface = cfg.get("network_interface") or choose_iface(wctx.host)
        problem = check_gloo_hostname(wctx.host, hosts, gloo_hostname_address())
        permanent = bool(problem)
        if rank == 0 and not problem:
            server = start_rendezvous(host=wctx.host, plan=plan)
            port = server.port
    except ImportError as exc:
        from imagenet_spark.distribute.horovod_backend import INSTALL_HINT

        problem = f"backend='horovod': cannot start the Horovod rendezvous server ({exc}). {INSTALL_HINT}"
        permanent = True
    except Exception as exc:  # noqa: BLE001 - any failure must still reach the exchange below
        problem = f"backend='horovod': {type(exc).__name__}: {exc}"
    gathered = [json.loads(m) for m in ctx.allGather(json.dumps({"rank": rank, "port": port, "problem": problem,
                                                                 "permanent": permanent}))]
    try:
        problems = [f"rank {g['rank']}: {g['problem']}" for g in gathered if g["problem"]]
        if any(g["permanent"] for g in gathered):
            from imagenet_spark.distribute.backends import BackendError

            raise BackendError("; ".join(problems))  # the driver does not retry these
        if problems:
            raise LaunchError("; ".join(problems))
        port0 = next(g["port"] for g in gathered if g["rank"] == 0)
        env = horovod_env(hosts=hosts, rank=rank, rendezvous_host=hosts[0], rendezvous_port=port0, iface=iface,
                          gpu=gpu, gloo_timeout_s=cfg.get("barrier_timeout_s"))
    except Exception:
        if server is not None:
            server.stop()
        raise
    log.info("rank %d: horovod via Gloo, rendezvous %s:%d, iface %s", rank, hosts[0], port0, iface)
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
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    return shim_env(library, host=address, port=port, inherited=os.environ.get("LD_PRELOAD"))


def _barrier_task(spec: dict[str, Any], _partition: Iterator[Any]) -> Iterator[str]:
    from pyspark import BarrierTaskContext

    ctx = BarrierTaskContext.get()
    rank = ctx.partitionId()
    infos = ctx.getTaskInfos()
    host = spec.get("host_override") or split_host_port(infos[rank].address)[0]
    env: dict[str, str] = {}
    try:
        gpus = visible_gpus(gpu_addresses(ctx.resources()), os.environ.get("CUDA_VISIBLE_DEVICES"))
        port = free_port(host)
        problem = ""
    except (LaunchError, OSError) as exc:  # still take part in the exchange, then fail together
        gpus, port, problem = "", 0, str(exc)
    gathered = [json.loads(m) for m in ctx.allGather(json.dumps({"rank": rank, "host": host, "port": port,
                                                                 "problem": problem}))]
    problems = [f"rank {g['rank']}: {g['problem']}" for g in gathered if g["problem"]]
    if problems:
        raise LaunchError("; ".join(problems))
    endpoints = sorted((Endpoint(g["rank"], g["host"], g["port"]) for g in gathered), key=lambda e: e.rank)
    layout = host_layout([e.host for e in endpoints], rank)
    sizing = size_threads(spec["config"].get("cpus_per_worker"), task_cpus=ctx.cpus(), gpus=len(gpus.split(",")) if
                          gpus else 0, host=host_cpus(), local_size=layout.local_size)
    wctx = WorkerContext(rank=rank, size=len(endpoints), local_rank=layout.local_rank, local_size=layout.local_size,
                         cross_rank=layout.cross_rank, cross_size=layout.cross_size, host=host,
                         attempt=spec["attempt"], cpus=sizing.cpus, cpus_source=sizing.source, task_cpus=ctx.cpus())
    if spec["config"]["backend"] == "mwms":
        env["TF_CONFIG"] = tf_config(endpoints, rank)
        if spec["config"].get("bind_tf_to_host", True):
            env.update(_tf_bind_env(host, port))
    if gpus or spec.get("has_gpu_resources"):
        env["CUDA_VISIBLE_DEVICES"] = gpus
    held = rendezvous = None
    if spec.get("inject_port_conflict_rank") == rank and spec["attempt"] == 0:
        held = hold_port(host, port)  # fault injection: the exchanged port is taken before TF binds it
    try:
        if spec["config"]["backend"] == "horovod":
            rendezvous, horovod_vars = _horovod_launch(ctx, wctx, endpoints, spec, gpu=bool(gpus))
            env.update(horovod_vars)
        result = run_worker_process({**spec, "ctx": wctx.to_dict()}, env=env, rank=rank)
    finally:
        if held is not None:
            held.close()
        if rendezvous is not None:  # the task ends (done, failed or killed): the rendezvous goes with it
            rendezvous.stop()
    if rank == 0:
        yield json.dumps(result)


# --------------------------------------------------------------------------------------------------
# Driver


def _driver_host(spark: Any) -> str:
    conf = spark.sparkContext.getConf()
    return conf.get("spark.driver.bindAddress", None) or conf.get("spark.driver.host", None) or "127.0.0.1"


def _progress_logger(state: dict[str, Any], tracker: Tracker, prefix: str = "") -> Any:
    def on_message(msg: dict[str, Any]) -> None:
        state["last"] = msg
        tracker.log_epoch(msg)  # ignores non-epoch messages
        state.setdefault("first_step_at", time.monotonic())
        try:
            log.info("%s%s", prefix, format_progress(msg))
        except (KeyError, TypeError, ValueError):
            log.info("%sprogress: %s", prefix, msg)

    return on_message


def _start_tracking(tracker: Tracker, cfg: TrainConfig) -> threading.Thread:
    """Open the MLflow run in a thread, so the launch does not wait for it: importing MLflow and creating the run
    took ~2.5 s of the driver's critical path (bench/launch.py), and nothing in the launch needs the run. Safe
    because the Tracker is thread-safe and never raises (a failure is a warning), epochs that arrive before the
    run is open are back-filled by ``finish``, and the caller joins the thread before ``finish``/``close``."""
    thread = threading.Thread(target=tracker.start, args=(cfg,), name="imagenet-spark-tracking-start", daemon=True)
    thread.start()
    return thread


def _checkpoint_position(cfg: TrainConfig, plan: RunPlan) -> int:
    """Global step of the newest checkpoint (0 when none), from the checkpoint file names."""
    from imagenet_spark.data import fs

    ckpt = fs.join(cfg.model_dir, "checkpoints")
    if not fs.exists(ckpt):
        return 0
    steps = [int(m.group(1)) for e in fs.list_dir(ckpt) if (m := re.match(r"ckpt-(\d+)\.index$", e.relpath))]
    return max(steps, default=0)


def run_training(spark: Any, cfg: TrainConfig, *, inject_port_conflict_rank: int | None = None,
                 label: str | None = None) -> dict[str, Any]:
    """Plan, check, launch, retry. Returns the chief's final result plus the attempts' history.

    ``label`` (e.g. "trial 3") prefixes the progress lines, for several trainings running at once. The model
    dir is checked first (disjoint from the data, ours or new) and leased for the whole training: a second
    job on it is refused with the holder. A diverged run raises DivergedError, not retried."""
    from imagenet_spark.data import fs

    log.info("launch timing: training call at %.3f", time.time())  # bench/launch.py reads these lines
    cfg = with_absolute_paths(cfg, "data", "model_dir")  # executors have another working directory
    check_model_dir(cfg)  # before any work: never write into (or --overwrite) the dataset or a stranger's dir
    existed = fs.exists(cfg.model_dir)
    try:
        # One job at a time: leased before the checks below (a second job learns the holder at once).
        with ownership.Lease("model_dir", cfg.model_dir, f"imagenet-spark train{f' ({label})' if label else ''}"):
            return _check_claim_launch(spark, cfg, label=label, inject_port_conflict_rank=inject_port_conflict_rank)
    finally:
        if not existed and fs.exists(cfg.model_dir) and not fs.list_dir(cfg.model_dir):
            fs.delete(cfg.model_dir)  # refused before the claim: leave no empty dir behind either


def _check_claim_launch(spark: Any, cfg: TrainConfig, *, label: str | None,
                        inject_port_conflict_rank: int | None) -> dict[str, Any]:
    """Plan and check the cluster and paths; only when all passed, claim the model dir and launch."""
    plan = make_run_plan(cfg)
    on_driver = trains_on_driver(cfg, spark.sparkContext.master)
    if not on_driver:
        slots = check_cluster(spark, cfg)
        log.info("cluster: %d barrier slots for %d workers", slots, cfg.workers)
        check_training_paths(spark, cfg, tasks=slots)
    mode = prepare_model_dir(cfg)  # claimed (marker, config.json) only now: a refused launch leaves no trace
    if mode == "resume":
        log.info("model_dir %s holds a run: resuming it (checkpoint at step %d)", cfg.model_dir,
                 _checkpoint_position(cfg, plan))
    return _launch(spark, cfg, plan, on_driver=on_driver, label=label,
                   inject_port_conflict_rank=inject_port_conflict_rank)


def _launch(spark: Any, cfg: TrainConfig, plan: RunPlan, *, on_driver: bool, label: str | None,
            inject_port_conflict_rank: int | None) -> dict[str, Any]:
    """The attempts: launch, and relaunch after a failure a retry can fix (from the newest checkpoint)."""
    state: dict[str, Any] = {}
    tracker = Tracker(uri=cfg.tracking_uri, experiment=cfg.experiment, enabled=cfg.track)
    with tracker, ProgressServer(_driver_host(spark), _progress_logger(state, tracker, f"{label}: " if label else "")) \
            as progress:
        tracking_started = _start_tracking(tracker, cfg)
        try:
            result = _attempts(spark, cfg, plan, on_driver=on_driver, label=label, progress=progress, state=state,
                               inject_port_conflict_rank=inject_port_conflict_rank)
        finally:
            tracking_started.join()  # before finish, or the tracker's close on the way out
        attempts = result["attempts"]
        result["history"] = read_metrics(cfg.model_dir)
        tracker.finish(result, model_dir=cfg.model_dir)
    done = f"paused after epoch {result['stopped_at_epoch']} (stop_at_epoch)" if result.get("stopped_at_epoch") \
        else "finished"
    log.info("%straining %s in %d attempt(s); launch to first step %s s; last epoch: %s",
             f"{label}: " if label else "", done, len(attempts), attempts[-1].get("launch_to_first_step_s"),
             json.dumps(result.get("metrics", {})))
    return result


def _attempts(spark: Any, cfg: TrainConfig, plan: RunPlan, *, on_driver: bool, label: str | None, progress: Any,
              state: dict[str, Any], inject_port_conflict_rank: int | None) -> dict[str, Any]:
    """Launch, and relaunch after a failure a retry can fix (from the newest checkpoint); the chief's result
    with the attempts' records under "attempts"."""
    attempts: list[dict[str, Any]] = []
    failures = port_conflicts = 0
    attempt = 0
    while True:
        spec = {"config": to_dict(cfg), "plan": plan.to_dict(), "attempt": attempt,
                "progress": progress.endpoint(), "log_level": logging.getLevelName(log.getEffectiveLevel()),
                "inject_port_conflict_rank": inject_port_conflict_rank if inject_port_conflict_rank is not None
                else cfg.inject_port_conflict_rank,
                "has_gpu_resources": bool(spark.sparkContext.getConf().get("spark.task.resource.gpu.amount",
                                                                            None))}
        started = time.monotonic()
        log.info("launch timing: attempt %d launch clock at %.3f", attempt, time.time())
        state.pop("first_step_at", None)
        ckpt_before = _checkpoint_position(cfg, plan)
        try:
            if on_driver:
                sizing = size_threads(cfg.cpus_per_worker, task_cpus=None, gpus=0, host=host_cpus(), local_size=1)
                wctx = WorkerContext(attempt=attempt, cpus=sizing.cpus, cpus_source=sizing.source)
                result = run_worker_process({**spec, "ctx": wctx.to_dict()}, env={}, rank=0)
            else:
                outputs = run_barrier(spark, cfg.workers, lambda it: _barrier_task(spec, it),
                                      description=f"imagenet-spark train {cfg.model} attempt {attempt}"
                                                  + (f" ({label})" if label else ""))
                result = json.loads(outputs[0])
            first = state.get("first_step_at")
            failure = result.get("failure")  # a structured failure no retry can fix (e.g. "diverged")
            attempts.append({"attempt": attempt, "status": failure["kind"] if failure else "ok",
                             "seconds": round(time.monotonic() - started, 1),
                             "launch_to_first_step_s": round(first - started, 2) if first else None})
            if failure:
                raise failure_error(failure)  # not retried: the checkpoint would diverge again
            break
        except (SparkJobError, LaunchError) as exc:
            text = str(exc)
            reached = int(state.get("last", {}).get("global_step", ckpt_before))
            ckpt_after = _checkpoint_position(cfg, plan)
            record = {"attempt": attempt, "status": "failed", "seconds": round(time.monotonic() - started, 1),
                      "error": text.splitlines()[0][:300], "resume_from_step": ckpt_after,
                      "last_reported_step": reached, "steps_redone_at_least": max(0, reached - ckpt_after)}
            attempts.append(record)
            if "PortConflictError" in text or "taken before it could bind" in text:
                port_conflicts += 1
                if port_conflicts > _PORT_CONFLICT_RETRIES:
                    raise TrainingFailedError(f"ports kept being taken between exchange and bind "
                                              f"({port_conflicts} times): {text.splitlines()[0]}") from exc
                log.warning("attempt %d: a worker's port was taken before TensorFlow bound it; relaunching with "
                            "fresh ports (not counted against max_retries)", attempt)
            elif "BackendError" in text:  # e.g. Horovod missing: retrying cannot help
                raise TrainingFailedError(f"the {cfg.backend} backend cannot start: "
                                          f"{text.splitlines()[0][:500]}") from exc
            else:
                failures += 1
                if failures > cfg.max_retries:
                    raise TrainingFailedError(
                        f"training failed {failures} times (max_retries={cfg.max_retries}); last error: "
                        f"{text.splitlines()[0][:500]}. Checkpoints are in {cfg.model_dir}/checkpoints: rerun "
                        "the same command to resume.") from exc
                log.warning("attempt %d failed after %.0f s: %s; retry %d/%d resumes from the checkpoint at "
                            "step %d (last progress report: step %d)", attempt, record["seconds"],
                            record["error"], failures, cfg.max_retries, ckpt_after, reached)
            attempt += 1
    result["attempts"] = attempts
    return result
