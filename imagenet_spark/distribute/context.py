"""What a training process knows about its place in the job. Training code sees this, never os.environ."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class WorkerContext:
    """Rank and size of this worker, and how workers are grouped on hosts (for Horovod's local/cross ranks)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    cross_rank: int = 0
    cross_size: int = 1
    host: str = "127.0.0.1"
    attempt: int = 0
    # CPU threads this worker sizes TensorFlow and tf.data to (distribute/threads.py; 0: TensorFlow's defaults),
    # decided where the task starts, with where the number came from and the task's spark.task.cpus.
    cpus: int = 0
    cpus_source: str = "unsized"
    task_cpus: int | None = None

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WorkerContext:
        return cls(**values)
