"""Steps and learning rates: one place turns epochs into steps and defines the rate at every step.

Why here and pure: the driver plans the run (steps per epoch, total steps, warmup) before any executor
starts, the report plots the schedule, and ``metrics.json`` logs the rate, all without TensorFlow; the optimizer
needs the same rate as graph ops. Both come from one formula, :func:`rate`, written once over a small set of
operations (:class:`_Ops`): Python floats for :class:`Schedule`, TensorFlow tensors for :func:`keras_schedule`.
``tests/test_schedules.py`` compares the optimizer's actual step size with :class:`Schedule` at the warmup edges
and the last step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any


def steps_for(epochs: float, steps_per_epoch: int) -> int:
    """Optimizer steps for a (possibly fractional) number of epochs; at least one step."""
    return max(1, int(round(epochs * steps_per_epoch)))


@dataclass(frozen=True)
class _Ops:
    """The operations :func:`rate` needs, for one number type (Python floats or TensorFlow tensors)."""

    cos: Callable[[Any], Any]
    minimum: Callable[[Any, Any], Any]
    where: Callable[[Any, Any, Any], Any]  # where(condition, if_true, if_false)
    count: Callable[[Iterable[Any]], Any]  # how many of the conditions hold
    const: Callable[[float], Any]


_PYTHON_OPS = _Ops(cos=math.cos, minimum=min, where=lambda c, a, b: a if c else b,
                   count=lambda conditions: sum(1 for c in conditions if c), const=float)


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
        return float(rate(self, step, _PYTHON_OPS))


def rate(schedule: Schedule, step: Any, ops: _Ops) -> Any:
    """The learning rate at optimizer step ``step`` (0-based): the one formula of the package.

    Warmup: ``peak * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step already moves).
    Then cosine ``0.5 * peak * (1 + cos(pi * progress))`` with progress over the steps after the warmup (0 at the
    run's end), ``peak * factor ** (boundaries passed)``, or ``peak``."""
    peak = ops.const(schedule.peak_lr)
    warmup = schedule.warmup_steps
    if schedule.kind == "cosine":
        span = float(max(1, schedule.total_steps - warmup))
        progress = ops.minimum(1.0, (step - float(warmup)) / span)
        main = 0.5 * peak * (1.0 + ops.cos(math.pi * progress))
    elif schedule.kind == "step":
        main = peak * schedule.factor ** ops.count(step >= b for b in schedule.boundaries)
    else:
        main = peak
    if not warmup:
        return main
    return ops.where(step < float(warmup), peak * (step + 1.0) / float(warmup), main)


def effective_warmup_epochs(warmup_epochs: float, epochs: float, max_fraction: float) -> float:
    """The warmup a run gets: ``min(warmup_epochs, max_fraction * epochs)``.

    Why a clamp and not a refusal: a recipe's warmup (Goyal et al. 2017: 5 epochs of a 90-epoch run) is written
    for its full length; a shorter run of the same recipe (``--epochs 1`` for a try-out, a search's early rungs)
    should still warm up, over a share of the run, rather than fail. ``max_fraction < 1`` keeps some of the run
    after the warmup for the decay. Silent: every rank and the report compute it; the driver says once, when it
    plans the run, that the clamp applied (:func:`warmup_clamp_note`).
    """
    return min(warmup_epochs, max_fraction * epochs)


def warmup_clamp_note(warmup_epochs: float, epochs: float, max_fraction: float) -> str | None:
    """The line the driver logs when :func:`effective_warmup_epochs` shortens the asked warmup (None: it does not)."""
    used = effective_warmup_epochs(warmup_epochs, epochs, max_fraction)
    if used >= warmup_epochs:
        return None
    return (f"warmup: {warmup_epochs:g} epoch(s) asked, {used:g} used: at most "
            f"recipe.warmup_max_fraction={max_fraction:g} of the {epochs:g}-epoch run")


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
    """The same schedule as a tf.keras LearningRateSchedule (graph ops, float32), built on the executor."""
    import tensorflow as tf

    ops = _Ops(cos=tf.cos, minimum=tf.minimum, where=tf.where,
               count=lambda conditions: tf.add_n([tf.cast(c, tf.float32) for c in conditions] or [tf.zeros([])]),
               const=lambda value: tf.constant(value, tf.float32))

    class _Schedule(tf.keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            return rate(schedule, tf.cast(step, tf.float32), ops)

        def get_config(self) -> dict[str, Any]:
            return {"schedule": repr(schedule)}

    return _Schedule()
