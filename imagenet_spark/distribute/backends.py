"""Distribution backends by name: ``off``, ``mirrored``, ``mwms``, ``horovod``.

Why one small interface instead of branching in the training loop: the loop is written once (a custom
step over ``tf.GradientTape``) and each backend supplies only what differs: the scope variables live in,
how a step runs on the replicas, how the loss is averaged, how gradients and metrics are combined across
workers, and whether this process writes files. The global batch stays canonical for all of them.

TensorFlow and Horovod are imported inside ``make_backend`` (executor side only).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from imagenet_spark.distribute.cluster import split_host_port
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.distribute.failures import FailureKind, PortConflictError
from imagenet_spark.distribute.ports import port_taken, wait_for_listener
from imagenet_spark.errors import ImagenetSparkError

log = logging.getLogger(__name__)


class BackendError(ImagenetSparkError, RuntimeError):
    """A backend cannot start here (e.g. Horovod missing); the message says how to install or choose another.
    Never retried (kind "backend"): every relaunch would fail the same way."""

    kind: FailureKind = "backend"


class Backend:
    """The TensorFlow distribution strategy behind ``off``, ``mirrored`` and ``mwms``."""

    name = "off"

    def __init__(self, strategy: Any, ctx: WorkerContext) -> None:
        self.strategy = strategy
        self.ctx = ctx

    @property
    def local_replicas(self) -> int:
        """Replicas (devices) in this process: the per-worker batch is split among them."""
        return int(self.strategy.num_replicas_in_sync) // max(1, self.workers_in_sync)

    @property
    def workers_in_sync(self) -> int:
        return self.ctx.size if self.name == "mwms" else 1

    @property
    def loss_batch(self) -> Callable[[int], int]:
        """Per-example losses are summed and divided by this batch: the global batch for in-graph strategies
        (the strategy sums gradients across replicas), the per-worker batch for Horovod (it averages them)."""
        return lambda global_batch: global_batch

    def scope(self) -> Any:
        return self.strategy.scope()

    def distribute(self, make_dataset: Callable[[], Any]) -> Any:
        return self.strategy.distribute_datasets_from_function(lambda _input_context: make_dataset())

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        return self.strategy.run(fn, args=args)

    @property
    def replicas_summing_gradients(self) -> int:
        """Replicas whose gradients are summed into one update (so each adds 1/R of the regularisation):
        all replicas for TF strategies; one for Horovod, which averages instead of summing."""
        return int(self.strategy.num_replicas_in_sync)

    def reduce_gradients(self, grads: Any) -> Any:
        """TF strategies all-reduce inside ``apply_gradients``; Horovod does it here."""
        return grads

    def after_first_step(self, model: Any, optimizer: Any) -> None:
        """Hook for backends that must broadcast initial state after variables exist (Horovod)."""

    def sum_across_workers(self, value: float) -> float:
        """Sync-on-read metrics are already reduced across workers by the strategy."""
        return value

    def end_together(self) -> None:
        """A last collective, after the chief's export: no worker process ends while another still works.

        Why: a worker process ends with ``os._exit`` (distribute/standby.py), without TensorFlow's coordination
        shutdown. Under MWMS a worker gone while the chief still exports was reported by the chief's coordination
        service, once its heartbeat timeout passed, as "BaseCollectiveExecutor::StartAbort UNAVAILABLE ... tasks
        are unhealthy (stopped sending heartbeats) ... The tasks have crashed": in a run that succeeded.
        """
        if self.workers_in_sync > 1:
            import tensorflow as tf

            self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(lambda: tf.constant(1.0)), axis=None)

    @property
    def save_on_all_ranks(self) -> bool:
        """Whether every rank must take part in writing a checkpoint: yes for MWMS (reading sync-on-read
        variables is a collective; non-chiefs write to a temp dir), no for Horovod (rank 0 alone writes)."""
        return True

    def replica_consistency(self, weights: Any) -> dict[str, Any]:
        """Evidence that every worker ends with the same weights, for the result dict. In-graph strategies
        keep one mirrored copy by construction (nothing to report); Horovod checksums every rank's copy."""
        return {}

    @contextlib.contextmanager
    def writer_scope(self) -> Iterator[None]:
        yield


def _mwms() -> Any:
    """The MWMS strategy; its creation starts TensorFlow's gRPC server on the port in TF_CONFIG. When that
    fails because another process took the port since the exchange, raise PortConflictError (relaunched with
    fresh ports), decided by asking the socket, not by TensorFlow's message or exception type (both differ
    across versions)."""
    import tensorflow as tf

    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()  # TF_CONFIG, as the strategy reads it
    _wait_for_the_chief(resolver)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except Exception as exc:
        address = resolver.cluster_spec().task_address(resolver.task_type, resolver.task_id)
        host, port = split_host_port(address)
        if port is not None and port_taken(host, port):
            raise PortConflictError(f"cannot bind {host}:{port}: another process took the port exchanged for "
                                    f"TensorFlow ({type(exc).__name__})") from exc
        raise


CHIEF_WAIT_S = 30.0  # then TensorFlow's own retries and timeouts take over


def _wait_for_the_chief(resolver: Any) -> None:
    """A non-chief MWMS worker waits until the chief's gRPC server listens before creating its strategy.

    Why: the strategy registers with the coordination service the chief hosts, and a worker that asks before the
    chief's server is up is refused and asks again only ~1 s later (TensorFlow's backoff). Started together, as
    they are on local[N], the non-chief was first in 1 of 3 launches and reached 'backend ready' 0.9 s after the
    chief (issue #13). Waiting here changes nothing else: past ``CHIEF_WAIT_S`` the strategy is created anyway."""
    if resolver.task_type != "worker" or not resolver.task_id:
        return  # the chief itself, or no multi-worker TF_CONFIG (TensorFlow reports that)
    chief = resolver.cluster_spec().task_address("worker", 0)
    host, port = split_host_port(chief)
    if port is not None and not wait_for_listener(host, port, timeout_s=CHIEF_WAIT_S):
        log.warning("worker %d: the chief's TensorFlow server %s did not listen within %.0f s; starting anyway",
                    resolver.task_id, chief, CHIEF_WAIT_S)


def make_backend(name: str, ctx: WorkerContext, *, horovod_fp16_allreduce: bool = False) -> Backend:
    """Create the backend; must run before any other TensorFlow op (MWMS configures collectives at startup).

    ``horovod_fp16_allreduce`` (TrainConfig.horovod_fp16_allreduce): Horovod sends gradients as float16.
    """
    import tensorflow as tf

    if name == "off":
        backend = Backend(tf.distribute.get_strategy(), ctx)
    elif name == "mirrored":
        backend = Backend(tf.distribute.MirroredStrategy(), ctx)
        backend.name = "mirrored"
    elif name == "mwms":
        backend = Backend(_mwms(), ctx)
        backend.name = "mwms"
    elif name == "horovod":
        from imagenet_spark.distribute.horovod_backend import make_horovod_backend

        return make_horovod_backend(ctx, fp16_allreduce=horovod_fp16_allreduce)
    else:
        raise BackendError(f"backend={name!r}: unknown; known: off, mirrored, mwms, horovod.")
    log.info("backend %s: %d replicas in sync, %d in this process", backend.name,
             backend.strategy.num_replicas_in_sync, backend.local_replicas)
    return backend
