"""The Horovod backend: one TensorFlow process per worker, gradients averaged with Horovod (Gloo on CPU, NCCL on GPU).

Why it differs from the TF strategies in exactly these places (the training loop is shared):

* One replica per process under the default strategy; Horovod *averages* gradients across ranks, so each
  rank's loss is averaged over its own (per-worker) batch and each rank adds the full L2 term.
* Gradients are reduced explicitly (one grouped allreduce per step, optionally fp16-compressed) before
  ``apply_gradients``, instead of inside it.
* Batch-norm moving statistics are local to each rank under Horovod. MWMS declares them
  ``ON_READ``/``MEAN`` and averages them when read; we average the same variables (recognised by that
  declaration when they are created in :meth:`HorovodBackend.scope`) across ranks every step, so every rank
  holds identical weights, evaluation uses the global statistics, and rank 0's checkpoint is the job's state.
  They ride in the gradients' grouped allreduce (2 floats per BN channel, under 0.5 % of ResNet-50's
  gradient bytes; a separate collective cost ~15 % of a tiny model's step here, one group costs nothing
  measurable). With fp16 compression they go in a second, uncompressed group.
* Initial state is broadcast from rank 0 after the first step (optimizer slots exist only then).
* Only rank 0 writes checkpoints: nothing in a Horovod checkpoint needs the other ranks.

TensorFlow and Horovod are imported in :func:`make_horovod_backend` (worker process only).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from imagenet_spark.distribute.backends import Backend, BackendError
from imagenet_spark.distribute.context import WorkerContext

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "Fix: run `make setup STACK=legacy` (the stack with Horovod; it compiles Horovod against its TensorFlow), "
    "or by hand on TensorFlow 2.15: "
    "HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 "
    "HOROVOD_WITHOUT_MXNET=1 pip install --no-cache-dir --no-build-isolation -c requirements/legacy.lock "
    "\"horovod[spark]==0.28.1\" (GPU hosts add HOROVOD_GPU_OPERATIONS=NCCL); or train with --backend mwms.")


def weights_checksum(weights: Sequence[Any]) -> float:
    """A float64 fingerprint of a list of weight arrays: equal weights give bit-equal checksums.

    Sum plus sum of squares, so a change that keeps the sum (a permutation, a sign flip) still shows.
    """
    import numpy as np

    total = 0.0
    for w in weights:
        a = np.asarray(w, dtype=np.float64)
        total += float(np.sum(a)) + float(np.sum(a * a))
    return total


class HorovodBackend(Backend):
    """Horovod over the default TF strategy (one replica per process)."""

    name = "horovod"

    def __init__(self, strategy: Any, ctx: WorkerContext, *, hvd: Any, fp16_allreduce: bool) -> None:
        super().__init__(strategy, ctx)
        self._hvd = hvd
        self._compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none
        self._averaged_state: list[Any] = []  # ON_READ/MEAN variables (BN moving statistics), see module doc

    @property
    def loss_batch(self) -> Callable[[int], int]:
        size = self.ctx.size
        return lambda global_batch: global_batch // size

    @property
    def replicas_summing_gradients(self) -> int:
        return 1

    @property
    def save_on_all_ranks(self) -> bool:
        return False

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The default strategy's scope, recording the variables declared to be averaged when read."""
        import tensorflow as tf

        def record(next_creator: Callable[..., Any], **kwargs: Any) -> Any:
            var = next_creator(**kwargs)
            if kwargs.get("synchronization") == tf.VariableSynchronization.ON_READ \
                    and kwargs.get("aggregation") == tf.VariableAggregation.MEAN:
                self._averaged_state.append(var)
            return var

        with self.strategy.scope(), tf.variable_creator_scope(record):
            yield

    def reduce_gradients(self, grads: Any) -> Any:
        """Average the gradients over all ranks (one grouped allreduce), and the BN statistics with them."""
        hvd = self._hvd
        grads = list(grads)
        present = [i for i, g in enumerate(grads) if g is not None]
        state = [v.read_value() for v in self._averaged_state]
        if self._compression is hvd.Compression.none:  # one group: one negotiation per step, not two
            reduced = hvd.grouped_allreduce([grads[i] for i in present] + state, op=hvd.Average)
            reduced, means = reduced[:len(present)], reduced[len(present):]
        else:  # statistics stay float32: compress the gradients only
            reduced = hvd.grouped_allreduce([grads[i] for i in present], op=hvd.Average,
                                            compression=self._compression)
            means = hvd.grouped_allreduce(state, op=hvd.Average) if state else []
        for i, g in zip(present, reduced):
            grads[i] = g
        for var, mean in zip(self._averaged_state, means):
            var.assign(mean)
        return grads

    def after_first_step(self, model: Any, optimizer: Any) -> None:
        """Make rank 0's state everyone's: the seeds make the initial weights equal, this makes it certain
        (and covers the optimizer slots, which exist only after the first step)."""
        variables = optimizer.variables() if callable(optimizer.variables) else optimizer.variables
        self._hvd.broadcast_variables(list(model.variables) + list(variables), root_rank=0)
        log.info("rank %d: broadcast %d model and %d optimizer variables from rank 0", self.ctx.rank,
                 len(model.variables), len(variables))

    def sum_across_workers(self, value: float) -> float:
        import tensorflow as tf

        return float(self._hvd.allreduce(tf.constant(value, dtype=tf.float64), op=self._hvd.Sum))

    def end_together(self) -> None:
        """Nothing: each Horovod worker runs TensorFlow without a cluster, so there is no coordination service
        whose heartbeats would report a finished worker as crashed (Backend.end_together says why MWMS waits); an
        allreduce here would only earn Horovod's "stalled ranks" warning while a large model exports for over a
        minute."""

    def replica_consistency(self, weights: Sequence[Any]) -> dict[str, Any]:
        """Checksum of this rank's final weights and the sum over ranks (a collective: every rank calls it).

        Identical weights on all ranks give ``sum == size * checksum`` exactly.
        """
        own = weights_checksum(weights)
        total = self.sum_across_workers(own)
        agree = total == own * self.ctx.size
        (log.info if agree else log.error)("rank %d: weights checksum %.17g, sum over %d ranks %.17g (%s)",
                                           self.ctx.rank, own, self.ctx.size, total,
                                           "identical on every rank" if agree else "RANKS DIVERGED")
        return {"weights_checksum": own, "weights_checksum_sum": total, "weights_identical": agree}


def _import_horovod() -> Any:
    try:
        import horovod.tensorflow as hvd
    except ImportError as exc:
        raise BackendError(f"backend='horovod': horovod.tensorflow cannot be imported ({exc}); Horovod is missing "
                           f"or was built without TensorFlow. {INSTALL_HINT}") from exc
    if not hvd.gloo_built():
        raise BackendError("backend='horovod': this Horovod was built without Gloo, which is how imagenet-spark "
                           f"starts workers (no MPI). {INSTALL_HINT}")
    return hvd


def make_horovod_backend(ctx: WorkerContext, *, fp16_allreduce: bool = False) -> Backend:
    """``hvd.init()`` from the launcher's HOROVOD_* variables, pin this rank's GPU, return the backend.

    Must run before any other TensorFlow op (GPU visibility is fixed when the runtime starts).
    """
    import tensorflow as tf

    hvd = _import_horovod()
    try:
        hvd.init()
    except Exception as exc:
        raise BackendError(f"backend='horovod': hvd.init() failed on rank {ctx.rank}: {exc}. Fix: check that the "
                           "executors can reach each other on launch.network_interface (set --set "
                           "launch.network_interface=IFACE to the interface carrying the executors' "
                           "addresses).") from exc
    if (hvd.rank(), hvd.size()) != (ctx.rank, ctx.size):
        raise BackendError(f"backend='horovod': Horovod sees rank {hvd.rank()} of {hvd.size()}, the launcher planned "
                           f"rank {ctx.rank} of {ctx.size}. Fix: start Horovod workers through the barrier launcher "
                           "(jobs/train_barrier.py), which sets the HOROVOD_* variables for each task.")
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        mine = gpus[hvd.local_rank() % len(gpus)]  # Spark GPU scheduling leaves one; otherwise one per local rank
        tf.config.experimental.set_memory_growth(mine, True)
        tf.config.set_visible_devices(mine, "GPU")
        if hvd.nccl_built():
            ops = "NCCL (GPU tensors), Gloo (controller)"
        else:
            ops = "Gloo through host memory"
            log.warning("rank %d: GPUs present but Horovod was built without NCCL: gradients are reduced through "
                        "host memory. Fix: GPU=1 make setup (HOROVOD_GPU_OPERATIONS=NCCL).", ctx.rank)
        log.info("rank %d (local %d): pinned to %s; allreduce via %s", ctx.rank, hvd.local_rank(), mine.name, ops)
    else:
        log.info("rank %d (local %d): CPU; allreduce via Gloo", ctx.rank, hvd.local_rank())
    backend = HorovodBackend(tf.distribute.get_strategy(), ctx, hvd=hvd, fp16_allreduce=fp16_allreduce)
    log.info("backend horovod: rank %d of %d, local %d of %d, cross %d of %d, fp16 allreduce %s", hvd.rank(),
             hvd.size(), hvd.local_rank(), hvd.local_size(), hvd.cross_rank(), hvd.cross_size(), fp16_allreduce)
    return backend
