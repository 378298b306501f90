"""Divergence: how a run that went NaN/inf stops, and how that failure crosses the Spark boundary typed.

Why a module of its own: the step loop (train/epochs.py), the checkpoint keeper (train/checkpoints.py) and the
export all refuse non-finite state the same way, with the same fix, and the driver (jobs/train.py) turns the
worker's structured failure back into the same exception class.
"""

from __future__ import annotations

import math
from typing import Any

from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.train_config import TrainConfig


class TrainingError(ImagenetSparkError, RuntimeError):
    """Training cannot continue as configured; the message names the setting and the fix."""


class DivergedError(TrainingError):
    """The loss or the gradients became NaN/inf (or the weights to export are not finite): the run stopped,
    nothing was exported. Never retried: a relaunch resumes from the same checkpoint with the same settings and
    diverges again. Crosses the Spark boundary as the structured failure ``{"kind": "diverged", ...}`` in the
    worker's result (:meth:`to_failure`, :func:`failure_error`), never by its message text."""

    kind = "diverged"

    def __init__(self, message: str, *, step: int, learning_rate: float | None) -> None:
        super().__init__(message)
        self.step, self.learning_rate = step, learning_rate

    def to_failure(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": str(self), "step": self.step, "learning_rate": self.learning_rate}


# Failure kinds a worker reports in its result instead of raising (so they survive the Spark boundary typed).
FAILURE_KINDS: dict[str, type[DivergedError]] = {DivergedError.kind: DivergedError}


def failure_error(failure: dict[str, Any]) -> TrainingError:
    """The typed error of a worker's structured failure (the inverse of ``to_failure``)."""
    cls = FAILURE_KINDS.get(str(failure.get("kind")))
    if cls is None:
        return TrainingError(f"training failed ({failure.get('kind')}): {failure.get('message', '')}")
    return cls(str(failure.get("message", "")), step=int(failure.get("step") or 0),
               learning_rate=failure.get("learning_rate"))


def divergence_fix(cfg: TrainConfig) -> str:
    recipe = cfg.recipe
    return (f"Fix: lower recipe.base_lr (now {recipe.base_lr:g}; e.g. --set recipe.base_lr={recipe.base_lr / 10:g}) "
            "or whatever raised the rate (recipe.step_factor, recipe.schedule), lengthen recipe.warmup_epochs (now "
            f"{recipe.warmup_epochs:g}), and check the "
            "data (labels, broken images); then rerun with --overwrite: the checkpoints hold these settings and "
            "a resumed run would diverge again.")


def check_finite_training(cfg: TrainConfig, backend: Any, sums: dict[str, Any], running_loss: float, *,
                           global_step: int, steps: int, epoch: int, lr: float) -> None:
    """Raise DivergedError when a step of the last ``steps`` had a non-finite loss or gradient norm.

    No extra host sync per step: it runs where the loop already reads the running loss (after the first
    step, then at most ``divergence_check_steps`` apart, else every ``steps_per_loop`` steps), from sums that
    are reduced across workers, so every rank decides alike."""
    bad_steps = backend.sum_across_workers(float(sums["nonfinite"].result()))
    if math.isfinite(running_loss) and not bad_steps:
        return
    what = "the loss" if not math.isfinite(running_loss) else "the gradient norm"
    raise DivergedError(
        f"training diverged: {what} is not finite (epoch {epoch} running loss {running_loss}) at global step "
        f"{global_step}, first bad step between {global_step - steps + 1} and {global_step} (checked every "
        f"{steps} step(s)); learning rate {lr:.4g} there (peak {cfg.learning_rate:.4g} = base_lr "
        f"{cfg.recipe.base_lr:g} x "
        f"{cfg.global_batch_size}/256). Nothing was exported and this state was not checkpointed. "
        + divergence_fix(cfg), step=global_step, learning_rate=lr)


def check_finite_weights(cfg: TrainConfig, weights: list[Any], *, what: str, step: int, lr: float | None) -> None:
    """Refuse to checkpoint or export weights holding NaN/inf (a model that predicts ``nan``)."""
    import numpy as np

    bad = sum(1 for w in weights if not np.all(np.isfinite(w)))
    if bad:
        raise DivergedError(f"training diverged: {bad} of {len(weights)} weight tensors hold NaN/inf at global step "
                            f"{step}; {what} refused (learning rate {lr if lr is None else f'{lr:.4g}'}). "
                            + divergence_fix(cfg), step=step, learning_rate=lr)
