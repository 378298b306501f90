"""Exponential moving average of the weights (Polyak averaging), evaluated and exported in place of the raw ones.

Why: averaging the weights of the last few thousand steps gives a model that generalises better than the final
iterate at no training cost (Polyak & Juditsky 1992; the ``model_ema`` of timm's ImageNet recipes, big_vision's
``ema``, TF-models' ``MovingAverage``). Update after each optimizer step::

    shadow <- d * shadow + (1 - d) * weight,    d = min(ema_decay, (1 + n) / (10 + n)) with warmup

with ``n`` the number of updates so far including this one (TF-models' dynamic decay: a short run is not
dominated by the random initial weights), or ``d = ema_decay`` without warmup.

What is averaged: every weight of the model, the batch-norm moving statistics included (timm averages the whole
state dict, buffers too). Why not keep the raw statistics: they were gathered with the raw weights, whose
activations the averaged weights do not reproduce; averaging both keeps them together, and with the loop's
BN momentum (0.9, about ten steps of memory) the averaged statistics trail the averaged weights by the same span
the raw ones trail the raw weights.

Distribution: each shadow is created like its source (same synchronization and aggregation) and updated in
replica context right after ``apply_gradients``, from the weights every replica then holds identically
(MWMS: mirrored, the BN statistics per replica and averaged when read, like the model's own; Horovod: after
the allreduced update, its BN statistics already averaged across ranks). No collective is added to the step.
Shadows are created under the strategy's own scope, not Horovod's recording scope, so Horovod does not
allreduce them: they are identical on every rank by construction (and broadcast from rank 0 with the model
after the first step, see :meth:`WeightAverage.broadcast_group`).

TensorFlow is imported inside the functions (worker side only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


def decay_at(ema_decay: float, updates: int, *, warmup: bool) -> float:
    """The decay of update number ``updates`` (1-based): the rule the graph applies, in plain Python."""
    return min(ema_decay, (1.0 + updates) / (10.0 + updates)) if warmup else ema_decay


@dataclasses.dataclass(frozen=True)
class VariableGroup:
    """Variables presented as one object with ``.variables`` (what ``Backend.after_first_step`` broadcasts)."""

    variables: list[Any]


class WeightAverage:
    """Shadow copies of ``model.weights`` (same order) and the number of updates, checkpointed as one object."""

    def __init__(self, model: Any, *, decay: float, warmup: bool, strategy: Any) -> None:
        import tensorflow as tf

        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.sources = list(model.weights)
        with strategy.scope():
            self.shadows = [tf.Variable(v.read_value(), trainable=False, name=f"ema_{i}",
                                        synchronization=v.synchronization, aggregation=v.aggregation)
                            for i, v in enumerate(self.sources)]
            self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="ema_updates",
                                       aggregation=tf.VariableAggregation.NONE)
        self.trackable = tf.Module(name="ema")
        self.trackable.shadows = self.shadows  # tracked: restored with the run's checkpoint
        self.trackable.updates = self.updates

    def update(self) -> None:
        """One averaging step, in replica context, after the optimizer step (inside the training ``tf.function``)."""
        import tensorflow as tf

        self.updates.assign_add(1)
        n = tf.cast(self.updates.read_value(), tf.float32)
        decay = tf.constant(self.decay, tf.float32)
        if self.warmup:
            decay = tf.minimum(decay, (1.0 + n) / (10.0 + n))
        for shadow, source in zip(self.shadows, self.sources):
            if shadow.dtype.is_floating:
                value = tf.cast(source.read_value(), shadow.dtype)
                d = tf.cast(decay, shadow.dtype)
                shadow.assign(d * shadow.read_value() + (1 - d) * value)  # exact at d = 0 (the weights) and d = 1
            else:
                shadow.assign(source.read_value())

    def swap(self) -> None:
        """Exchange the model's weights and the shadows (in replica context): twice restores both."""
        import tensorflow as tf

        for shadow, source in zip(self.shadows, self.sources):
            kept = tf.identity(source.read_value())
            source.assign(shadow.read_value())
            shadow.assign(kept)

    def values(self) -> list[Any]:
        """The averaged weights as numpy arrays, in ``model.get_weights()`` order (a collective under MWMS for
        the sync-on-read statistics: every rank calls it)."""
        import tensorflow as tf

        return tf.keras.backend.batch_get_value(self.shadows)

    def broadcast_group(self, model: Any) -> VariableGroup:
        """The model's variables and the shadows, for Horovod's broadcast from rank 0 after the first step."""
        return VariableGroup(list(model.variables) + list(self.shadows) + [self.updates])


def make_swapper(backend: Any, average: WeightAverage) -> Any:
    """A ``tf.function`` that swaps model and shadow weights on every replica (no collective)."""
    import tensorflow as tf

    @tf.function
    def swap() -> None:
        backend.run(average.swap, ())

    return swap


@contextlib.contextmanager
def averaged_weights(swap: Any) -> Iterator[None]:
    """The model holds the averaged weights inside the block, its own ones again after (also on an error)."""
    swap()
    try:
        yield
    finally:
        swap()
