"""How many CPU threads one TensorFlow process may use, and applying that to TensorFlow and tf.data.

Why: TensorFlow sizes its intra-op and inter-op pools, and tf.data its private pool, to every core of the
machine. A Spark executor runs several tasks at once (a GPU host: one training worker per GPU; a CPU host:
``cores / spark.task.cpus`` tasks), so each process starting pools sized to the whole machine oversubscribes
the cores N times over and the workers slow each other down. Each worker (and each batch-prediction task)
is sized to its task's CPUs instead: the rule is :func:`size_threads`, pure, decided where the task starts
(the barrier task or the driver) and carried to the worker process as plain values in its
:class:`~imagenet_spark.distribute.context.WorkerContext`; :func:`configure` applies it before TensorFlow's
runtime starts, :func:`data_options` gives the tf.data options.

TensorFlow is imported inside the functions: the driver imports this module without loading it.
"""

from __future__ import annotations

import logging
import os
import typing
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Where a worker's CPU count came from (logged, and recorded in the WorkerContext).
CpuSource = typing.Literal["cpus_per_worker", "spark.task.cpus", "gpu host share", "host share", "unsized"]


@dataclass(frozen=True)
class ThreadSizing:
    """Threads one worker process uses: ``cpus`` 0 means "leave TensorFlow's defaults" (every core)."""

    cpus: int
    source: CpuSource

    @property
    def sized(self) -> bool:
        return self.cpus > 0

    def describe(self, rank: int, task_cpus: int | None) -> str:
        """The start-of-worker log line: ``rank 0: 2 CPUs (spark.task.cpus=2): intra-op 2, inter-op 2, tf.data 2``."""
        seen = f"spark.task.cpus={task_cpus}" if task_cpus is not None else "no Spark task"
        if not self.sized:
            return f"rank {rank}: threads unsized (launch.cpus_per_worker=0, {seen}): TensorFlow's defaults, every core"
        why = seen if self.source == "spark.task.cpus" else f"{self.source}, {seen}"
        return (f"rank {rank}: {self.cpus} CPUs ({why}): intra-op {self.cpus}, inter-op {self.cpus}, "
                f"tf.data {self.cpus}")


def host_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which a container or taskset narrows), else cpu_count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def size_threads(cpus_per_worker: int | None, *, task_cpus: int | None, gpus: int, host: int,
                 local_size: int) -> ThreadSizing:
    """The rule, pure: how many CPUs a worker sizes its pools to.

    - ``cpus_per_worker`` given: that (0 keeps TensorFlow's unsized defaults, for comparison).
    - a worker with GPUs: its share of the host, ``host // local_size`` (the workers on this host), or
      ``spark.task.cpus`` if larger. Why: GPU clusters are set up with one task per GPU and often leave
      ``spark.task.cpus`` at 1, yet the host's cores are there to feed that GPU's input pipeline.
    - a Spark task on CPU: ``spark.task.cpus``, what Spark reserved for it (the executor's other cores run
      other tasks).
    - no Spark task (one worker on the driver): the host's share, ``host // local_size``.
    """
    if cpus_per_worker is not None:
        return ThreadSizing(cpus_per_worker, "cpus_per_worker" if cpus_per_worker else "unsized")
    share = max(1, host // max(1, local_size))
    if gpus > 0:
        return ThreadSizing(max(share, task_cpus or 1), "gpu host share")
    if task_cpus is not None:
        return ThreadSizing(max(1, task_cpus), "spark.task.cpus")
    return ThreadSizing(share, "host share")


def configure(cpus: int) -> bool:
    """Set TensorFlow's intra/inter-op pools to ``cpus`` (0: leave them) and let GPU memory grow on demand (so
    tasks can share a GPU). Call before TensorFlow's runtime starts: a reused process (Spark reuses Python
    workers between prediction tasks) already has a runtime, and TensorFlow refuses the change with a
    RuntimeError; then the first sizing stays and False is returned."""
    import tensorflow as tf

    try:
        if cpus > 0:
            tf.config.threading.set_intra_op_parallelism_threads(cpus)
            tf.config.threading.set_inter_op_parallelism_threads(cpus)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        log.debug("TensorFlow already started in this process: its thread pools keep their first sizing")
        return False
    return True


def data_options(cpus: int) -> Any:
    """tf.data options with a private pool of ``cpus`` threads for the dataset's maps (0: TensorFlow's
    default, one shared pool as large as the machine)."""
    import tensorflow as tf

    options = tf.data.Options()
    if cpus > 0:
        options.threading.private_threadpool_size = cpus
    return options
