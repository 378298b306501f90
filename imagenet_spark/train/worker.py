"""Entry point of one training worker process: ``python -m imagenet_spark.train.worker SPEC.json``.

The launcher (barrier task or driver) writes SPEC: the resolved config, this worker's context, the run
plan and where to report progress. Environment (TF_CONFIG, CUDA_VISIBLE_DEVICES) is set by the launcher
before this process starts, so TensorFlow sees it at import.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

from imagenet_spark import logs
from imagenet_spark.config import TrainConfig, from_dict
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.distribute.ports import PORT_CONFLICT_EXIT
from imagenet_spark.distribute.progress import ProgressClient

log = logging.getLogger("imagenet_spark.worker")


def main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        spec = json.load(f)
    logs.configure(spec.get("log_level"))
    # pyarrow's legacy-API deprecations fire on every petastorm read; they are known (STACK.md) and drown the log.
    warnings.filterwarnings("ignore", category=FutureWarning)
    cfg = from_dict(TrainConfig, spec["config"])
    ctx = WorkerContext.from_dict(spec["ctx"])
    from imagenet_spark.train.loop import RunPlan, train

    plan = RunPlan.from_dict(spec["plan"])
    reporter = ProgressClient(**spec["progress"]) if spec.get("progress") and ctx.is_chief else None
    try:
        result = train(cfg, ctx, plan, report=reporter)
    except Exception as exc:  # noqa: BLE001 - classify the one failure the launcher can fix by itself
        if "Could not start gRPC server" in str(exc):
            log.error("rank %d: cannot bind %s (%s)", ctx.rank, ctx.host, exc)
            return PORT_CONFLICT_EXIT
        raise
    finally:
        if reporter is not None:
            reporter.close()
    with open(spec["result_path"], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
