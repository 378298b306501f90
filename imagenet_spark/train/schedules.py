"""Steps and learning rates: one place turns epochs into steps and defines the rate at every step.

Why here and pure: the driver plans the run (steps per epoch, total steps, warmup) before any executor
starts, and tests check the schedule without TensorFlow. The Keras schedule object is built from the same
function, so what the driver logs is what the optimizer uses.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger(__name__)


def steps_for(epochs: float, steps_per_epoch: int) -> int:
    """Optimizer steps for a (possibly fractional) number of epochs; at least one step."""
    return max(1, int(round(epochs * steps_per_epoch)))


@dataclass(frozen=True)
class Schedule:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine to 0, step decay or constant."""

    peak_lr: float
    total_steps: int
    warmup_steps: int
    kind: str = "cosine"
    boundaries: tuple[int, ...] = ()
    factor: float = 0.1

    def __call__(self, step: float) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * self.peak_lr * (1.0 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.peak_lr * self.factor ** sum(1 for b in self.boundaries if step >= b)
        return self.peak_lr


def effective_warmup_epochs(warmup_epochs: float, epochs: float, max_fraction: float) -> float:
    """The warmup a run gets: ``min(warmup_epochs, max_fraction * epochs)``, logged when that clamps it.

    Why a clamp and not a refusal: a recipe's warmup (Goyal et al. 2017: 5 epochs of a 90-epoch run) is written
    for its full length; a shorter run of the same recipe (``--epochs 1`` for a try-out, a search's early rungs)
    should still warm up, over a share of the run, rather than fail. ``max_fraction < 1`` keeps some of the run
    after the warmup for the decay.
    """
    cap = max_fraction * epochs
    if warmup_epochs > cap:
        log.info("warmup: %g epoch(s) asked, %g used: at most warmup_max_fraction=%g of the %g-epoch run",
                 warmup_epochs, cap, max_fraction, epochs)
        return cap
    return warmup_epochs


def make_schedule(*, peak_lr: float, steps_per_epoch: int, epochs: float, warmup_epochs: float, kind: str,
                  warmup_max_fraction: float, step_epochs: Sequence[float] = (),
                  step_factor: float = 0.1) -> Schedule:
    """The run's schedule; warmup as :func:`effective_warmup_epochs` clamps it, and never all of the steps."""
    total = steps_for(epochs, steps_per_epoch)
    warmup = effective_warmup_epochs(warmup_epochs, epochs, warmup_max_fraction)
    return Schedule(
        peak_lr=peak_lr,
        total_steps=total,
        warmup_steps=min(int(round(warmup * steps_per_epoch)), total - 1),
        kind=kind,
        boundaries=tuple(int(round(e * steps_per_epoch)) for e in step_epochs),
        factor=step_factor,
    )


def keras_schedule(schedule: Schedule) -> Any:
    """The same schedule as a tf.keras LearningRateSchedule (graph-compatible), built on the executor."""
    import tensorflow as tf

    class _Schedule(tf.keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            step = tf.cast(step, tf.float32)
            peak = tf.constant(schedule.peak_lr, tf.float32)
            warm = tf.constant(float(max(schedule.warmup_steps, 1)), tf.float32)
            warmup_lr = peak * (step + 1.0) / warm
            after = step - float(schedule.warmup_steps)
            if schedule.kind == "cosine":
                span = float(max(1, schedule.total_steps - schedule.warmup_steps))
                progress = tf.minimum(1.0, after / span)
                main = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
            elif schedule.kind == "step":
                drops = tf.add_n([tf.cast(step >= b, tf.float32) for b in schedule.boundaries] or [tf.zeros([])])
                main = peak * tf.pow(schedule.factor, drops)
            else:
                main = peak
            if schedule.warmup_steps:
                return tf.where(step < float(schedule.warmup_steps), warmup_lr, main)
            return main

        def get_config(self) -> dict[str, Any]:
            return {"schedule": repr(schedule)}

    return _Schedule()
