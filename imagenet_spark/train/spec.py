"""What a training worker process is told: one frozen record, written by the launcher, read by the worker.

Why a record and not a dict: the spec crosses two process boundaries (driver -> barrier task -> worker
process) and is read in three modules; a typed field cannot be misspelt on one side or left dead on the other.
It crosses as ``imagenet_spark.config.to_dict`` (JSON) and comes back with ``from_dict``, like every other
record that leaves a process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.distribute.progress import ProgressEndpoint
from imagenet_spark.train.loop import RunPlan
from imagenet_spark.train_config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """One worker's launch: the resolved config and run plan (the same for every rank of an attempt), and
    this worker's place in the job (``ctx``, filled in where the rank is known: the barrier task)."""

    config: TrainConfig
    plan: RunPlan
    attempt: int = 0
    ctx: WorkerContext = field(default_factory=WorkerContext)
    progress: ProgressEndpoint | None = None  # the chief reports progress here; None: no reporting
    log_level: str = "INFO"
    # Fault injection: this rank's exchanged port is taken before TensorFlow binds it, on attempt 0 only.
    inject_port_conflict_rank: int | None = None
    # The Spark conf asks for GPUs per task: CUDA_VISIBLE_DEVICES is set even when a task got none.
    has_gpu_resources: bool = False
    # Sockets of worker processes the driver started early (distribute/standby.py), by rank; () for none.
    standby: tuple[str, ...] = ()
    # TensorFlow's port for each rank, chosen by the driver where every task runs on its machine (local[N], MWMS;
    # spark/barrier.py); () : each task picks its own and the tasks exchange them.
    ports: tuple[int, ...] = ()
