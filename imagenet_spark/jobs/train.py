"""The training job's driver: plan, check, claim the model dir, launch, and relaunch after failures.

Why the retries live here: Spark never retries a failed barrier ResultStage, so the driver does, up to
``max_retries`` times, each attempt resuming from the newest checkpoint. What a retry can fix is decided by the
failure's kind (distribute/failures.py), never by its message: a port lost between picking and binding is
relaunched without counting against the retries, a backend that cannot start here is not retried at all, and a
diverged run (a structured failure in the chief's result) is not retried either. Progress reaches the driver
console while training runs, and the MLflow run opens in a thread beside the launch.

One attempt's mechanics (the barrier stage, the exchange, the worker process) are spark/barrier.py's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from imagenet_spark import ownership
from imagenet_spark.data import fs
from imagenet_spark.distribute.cluster import LaunchError
from imagenet_spark.distribute.failures import TaskFailure, failure_of
from imagenet_spark.distribute.progress import ProgressServer, format_progress
from imagenet_spark.distribute.standby import StandbyPool
from imagenet_spark.layout import ModelDir
from imagenet_spark.spark.barrier import check_cluster, run_attempt, trains_on_driver
from imagenet_spark.spark.jobs import SparkJobError
from imagenet_spark.spark.preflight import check_training_paths, with_absolute_paths
from imagenet_spark.spark.session import executors_in_driver_jvm
from imagenet_spark.tracking import Tracker
from imagenet_spark.train.divergence import failure_error
from imagenet_spark.train.loop import RunPlan
from imagenet_spark.train.planning import check_model_dir, make_run_plan, prepare_model_dir
from imagenet_spark.train.reporting import read_metrics
from imagenet_spark.train.spec import WorkerSpec
from imagenet_spark.train_config import TrainConfig

log = logging.getLogger(__name__)

_PORT_CONFLICT_RETRIES = 3


class TrainingFailedError(LaunchError):
    """Training failed more often than ``max_retries`` allows, or in a way no retry can fix."""


def run_training(spark: Any, cfg: TrainConfig, *, inject_port_conflict_rank: int | None = None,
                 label: str | None = None, standby: tuple[str, ...] = ()) -> dict[str, Any]:
    """Plan, check, launch, retry. Returns the chief's final result plus the attempts' history.

    ``label`` (e.g. "trial 3") prefixes the progress lines, for several trainings running at once. The model
    dir is checked first (disjoint from the data, ours or new) and leased for the whole training: a second
    job on it is refused with the holder. A diverged run raises DivergedError, not retried. ``standby``: the
    addresses of :func:`standby_workers`' processes, adopted by the first attempt's tasks."""
    log.info("launch timing: training call at %.3f", time.time())  # bench/launch.py reads these lines
    cfg = with_absolute_paths(cfg, "data", "model_dir")  # executors have another working directory
    check_model_dir(cfg)  # before any work: never write into (or --overwrite) the dataset or a stranger's dir
    existed = fs.exists(cfg.model_dir)
    try:
        # One job at a time: leased before the checks below (a second job learns the holder at once).
        with ownership.Lease("model_dir", cfg.model_dir, f"imagenet-spark train{f' ({label})' if label else ''}"):
            return _check_claim_launch(spark, cfg, label=label, inject_port_conflict_rank=inject_port_conflict_rank,
                                       standby=standby)
    finally:
        if not existed and fs.exists(cfg.model_dir) and not fs.list_dir(cfg.model_dir):
            fs.delete(cfg.model_dir)  # refused before the claim: leave no empty dir behind either


def _check_claim_launch(spark: Any, cfg: TrainConfig, *, label: str | None,
                        inject_port_conflict_rank: int | None, standby: tuple[str, ...]) -> dict[str, Any]:
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
                 ModelDir(cfg.model_dir).latest_step())
    return _launch(spark, cfg, plan, on_driver=on_driver, label=label,
                   inject_port_conflict_rank=inject_port_conflict_rank, standby=standby)


def standby_workers(cfg: TrainConfig, master: str) -> StandbyPool | None:
    """Worker processes to start now, before the session, so TensorFlow imports while Spark starts
    (distribute/standby.py): for MWMS where the tasks run on this machine (local[N]); None elsewhere, or when
    ``launch.standby_workers`` is off. Started with what a task would preload (the bind shim), or the task
    declines them."""
    if not cfg.launch.standby_workers or cfg.backend != "mwms" or not executors_in_driver_jvm(master):
        return None
    env: dict[str, str] = {}
    if cfg.workers > 1 and cfg.launch.bind_tf_to_host:  # one worker trains without TF_CONFIG, hence no shim
        from imagenet_spark.distribute.bind_shim import build_shim, preload

        library, _why = build_shim()  # no shim: the task warns and runs without one, and so may its standby
        if library is not None:  # what the task's shim_env will ask for (spark/barrier.py)
            env["LD_PRELOAD"] = preload(library, os.environ.get("LD_PRELOAD"))
    return StandbyPool(cfg.workers, env=env)


# --------------------------------------------------------------------------------------------------
# Progress and tracking around the attempts


def _driver_host(spark: Any) -> str:
    conf = spark.sparkContext.getConf()
    return conf.get("spark.driver.bindAddress", None) or conf.get("spark.driver.host", None) or "127.0.0.1"


def _progress_logger(state: dict[str, Any], tracker: Tracker, tracking: _DeferredTracking, prefix: str = "") -> Any:
    def on_message(msg: dict[str, Any]) -> None:
        tracking.open()  # the workers are past their start: the run may open now
        state["last"] = msg
        tracker.log_epoch(msg)  # ignores non-epoch messages
        state.setdefault("first_step_at", time.monotonic())
        try:
            log.info("%s%s", prefix, format_progress(msg))
        except (KeyError, TypeError, ValueError):
            log.info("%sprogress: %s", prefix, msg)

    return on_message


class _DeferredTracking:
    """Open the MLflow run in a thread once the workers report their first step (or when the attempts end).

    Why: importing MLflow and creating the run cost ~2 CPU-seconds, and during the launch every CPU-second is
    the workers' on a small machine (on 2 cores the launch is CPU-bound, bench/launch.py); in the driver's
    critical path it cost ~2.5 s before it moved to a thread. Nothing before the first step needs the run. Safe
    because the Tracker is thread-safe and never raises (a failure is a warning), epochs reported before the run
    is open are back-filled by ``finish``, and :meth:`join` runs before ``finish``/``close``."""

    def __init__(self, tracker: Tracker, cfg: TrainConfig) -> None:
        self._tracker, self._cfg = tracker, cfg
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._tracker.start, args=(self._cfg,), daemon=True,
                                                name="imagenet-spark-tracking-start")
                self._thread.start()

    def join(self) -> None:
        self.open()
        assert self._thread is not None
        self._thread.join()


def _launch(spark: Any, cfg: TrainConfig, plan: RunPlan, *, on_driver: bool, label: str | None,
            inject_port_conflict_rank: int | None, standby: tuple[str, ...]) -> dict[str, Any]:
    """The attempts, with the progress server and the tracker around them; logs how the training ended."""
    state: dict[str, Any] = {}
    tracker = Tracker(uri=cfg.tracking.tracking_uri, experiment=cfg.tracking.experiment, enabled=cfg.tracking.track)
    tracking = _DeferredTracking(tracker, cfg)
    with tracker, ProgressServer(_driver_host(spark), _progress_logger(state, tracker, tracking,
                                                                       f"{label}: " if label else "")) as progress:
        base = WorkerSpec(config=cfg, plan=plan, progress=progress.address,
                          log_level=logging.getLevelName(log.getEffectiveLevel()),
                          inject_port_conflict_rank=inject_port_conflict_rank if inject_port_conflict_rank is not None
                          else cfg.faults.inject_port_conflict_rank,
                          has_gpu_resources=bool(spark.sparkContext.getConf().get("spark.task.resource.gpu.amount",
                                                                                  None)),
                          standby=standby)
        try:
            result = _attempts(spark, base, on_driver=on_driver, label=label, state=state)
        finally:
            tracking.join()  # before finish, or the tracker's close on the way out
        attempts = result["attempts"]
        result["history"] = read_metrics(cfg.model_dir)
        tracker.finish(result, model_dir=cfg.model_dir)
    done = f"paused after epoch {result['stopped_at_epoch']} (stop_at_epoch)" if result.get("stopped_at_epoch") \
        else "finished"
    log.info("%straining %s in %d attempt(s); launch to first step %s s; last epoch: %s",
             f"{label}: " if label else "", done, len(attempts), attempts[-1].get("launch_to_first_step_s"),
             json.dumps(result.get("metrics", {})))
    return result


# --------------------------------------------------------------------------------------------------
# The attempts and what a failure's kind allows


@dataclass
class _Budget:
    """Failures counted so far, per kind that counts (the driver's own bookkeeping; never crosses processes)."""

    failures: int = 0
    port_conflicts: int = 0


def _attempts(spark: Any, base: WorkerSpec, *, on_driver: bool, label: str | None,
              state: dict[str, Any]) -> dict[str, Any]:
    """Launch, and relaunch after a failure a retry can fix (from the newest checkpoint); the chief's result
    with the attempts' records under "attempts"."""
    cfg = base.config
    model_dir = ModelDir(cfg.model_dir)
    attempts: list[dict[str, Any]] = []
    budget = _Budget()
    attempt = 0
    while True:
        spec = dataclasses.replace(base, attempt=attempt, standby=base.standby if attempt == 0 else ())
        started = time.monotonic()
        log.info("launch timing: attempt %d launch clock at %.3f", attempt, time.time())
        state.pop("first_step_at", None)
        ckpt_before = model_dir.latest_step()
        description = f"imagenet-spark train {cfg.model} attempt {attempt}" + (f" ({label})" if label else "")
        try:
            result = run_attempt(spark, spec, on_driver=on_driver, description=description)
        except (SparkJobError, LaunchError) as exc:
            reached = int(state.get("last", {}).get("global_step", ckpt_before))
            record = _failed_record(attempt, started, str(exc), model_dir.latest_step(), reached)
            attempts.append(record)
            _allow_retry(cfg, failure_of(exc), str(exc), record, budget, exc)
            attempt += 1
            continue
        first = state.get("first_step_at")
        failure = result.get("failure")  # a structured failure no retry can fix (e.g. "diverged")
        attempts.append({"attempt": attempt, "status": failure["kind"] if failure else "ok",
                         "seconds": round(time.monotonic() - started, 1),
                         "launch_to_first_step_s": round(first - started, 2) if first else None})
        if failure:
            raise failure_error(failure)  # not retried: the checkpoint would diverge again
        result["attempts"] = attempts
        return result


def _failed_record(attempt: int, started: float, text: str, ckpt_after: int, reached: int) -> dict[str, Any]:
    return {"attempt": attempt, "status": "failed", "seconds": round(time.monotonic() - started, 1),
            "error": text.splitlines()[0][:300], "resume_from_step": ckpt_after, "last_reported_step": reached,
            "steps_redone_at_least": max(0, reached - ckpt_after)}


def _allow_retry(cfg: TrainConfig, failure: TaskFailure, text: str, record: dict[str, Any], budget: _Budget,
                 exc: BaseException) -> None:
    """Return when the failed attempt may be relaunched (counting it where its kind counts); else raise
    TrainingFailedError with the reason and the fix."""
    first_line = text.splitlines()[0] if text else failure.message
    if failure.kind == "port_conflict":
        budget.port_conflicts += 1
        if budget.port_conflicts > _PORT_CONFLICT_RETRIES:
            raise TrainingFailedError(f"ports kept being taken between exchange and bind "
                                      f"({budget.port_conflicts} times): {first_line}") from exc
        log.warning("attempt %d: a worker's port was taken before TensorFlow bound it; relaunching with "
                    "fresh ports (not counted against max_retries)", record["attempt"])
    elif failure.kind == "backend":  # e.g. Horovod missing: retrying cannot help
        raise TrainingFailedError(f"the {cfg.backend} backend cannot start: {first_line[:500]}") from exc
    else:
        budget.failures += 1
        if budget.failures > cfg.launch.max_retries:
            raise TrainingFailedError(
                f"training failed {budget.failures} times (launch.max_retries={cfg.launch.max_retries}); last error: "
                f"{first_line[:500]}. Checkpoints are in {ModelDir(cfg.model_dir).checkpoints}: rerun "
                "the same command to resume.") from exc
        log.warning("attempt %d failed after %.0f s: %s; retry %d/%d resumes from the checkpoint at "
                    "step %d (last progress report: step %d)", record["attempt"], record["seconds"],
                    record["error"], budget.failures, cfg.launch.max_retries, record["resume_from_step"],
                    record["last_reported_step"])
