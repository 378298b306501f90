"""Fault injection in the step loop: ``fail_at_step`` crashes one rank at a chosen global step, on the first attempt.

Why in the product and not only in tests: the recovery path (the barrier stage fails, the driver relaunches, the
workers resume from the newest checkpoint) is the part of distributed training that breaks silently, and it can
only be exercised end to end by a real crash at a known step (tests/test_train.py, tests/test_cluster_failures.py).
The loop asks this hook two things: how many steps it may run in one call (so a call ends exactly at the step),
and whether to crash now.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.train_config import TrainConfig

log = logging.getLogger(__name__)

INJECTED_CRASH_EXIT = 13


@dataclass(frozen=True)
class FaultInjector:
    """``fail_at_step`` / ``fail_rank`` of the config, for this rank and attempt (a relaunch never fails again)."""

    fail_at_step: int | None
    fail_rank: int
    rank: int
    attempt: int

    @classmethod
    def from_config(cls, cfg: TrainConfig, ctx: WorkerContext) -> FaultInjector:
        return cls(fail_at_step=cfg.faults.fail_at_step, fail_rank=cfg.faults.fail_rank, rank=ctx.rank,
                   attempt=ctx.attempt)

    def limit(self, global_step: int, steps: int) -> int:
        """``steps`` shortened so that a call of the step function ends at ``fail_at_step`` (every rank alike)."""
        if self.fail_at_step is not None and self.attempt == 0 and global_step < self.fail_at_step:
            return min(steps, self.fail_at_step - global_step)
        return steps

    def after_steps(self, global_step: int) -> None:
        """Crash this process at ``fail_at_step`` when it is the failing rank: a crash, not an exception, so
        nothing is flushed or saved."""
        if self.fail_at_step is not None and self.attempt == 0 and global_step == self.fail_at_step \
                and self.rank == self.fail_rank:
            log.error("fail_at_step=%d: rank %d exits on purpose (fault injection)", global_step, self.rank)
            os._exit(INJECTED_CRASH_EXIT)
