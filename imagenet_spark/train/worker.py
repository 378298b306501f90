"""Entry point of one training worker process: ``python -m imagenet_spark.train.worker SPEC.json RESULT.json``.

The launcher (barrier task or driver) writes SPEC, a :class:`~imagenet_spark.train.spec.WorkerSpec`: the
resolved config, this worker's context, the run plan and where to report progress; the worker writes its
result to RESULT. Environment (TF_CONFIG, CUDA_VISIBLE_DEVICES) is set by the launcher before this process
starts, so TensorFlow sees it at import. A failure the launcher must tell apart (a port taken, a backend that
cannot start) ends the process with its reserved exit code (distribute/failures.py), chosen by exception type.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import asdict

from imagenet_spark import logs
from imagenet_spark.config import from_dict
from imagenet_spark.distribute.failures import exit_code, kind_of
from imagenet_spark.distribute.launch import die_with_parent
from imagenet_spark.distribute.progress import ProgressClient

log = logging.getLogger("imagenet_spark.worker")


def main(argv: list[str]) -> int:
    die_with_parent()  # a fresh process follows its barrier task; an adopted standby, the driver (set already)
    spec_path, result_path = argv[1], argv[2]
    with open(spec_path) as f:
        values = json.load(f)
    logs.configure(values.get("log_level"))
    # pyarrow's legacy-API deprecations fire on every petastorm read; they are known (STACK.md) and drown the log.
    warnings.filterwarnings("ignore", category=FutureWarning)
    from imagenet_spark.train.loop import train
    from imagenet_spark.train.spec import WorkerSpec

    spec = from_dict(WorkerSpec, values)
    ctx = spec.ctx
    reporter = ProgressClient(**asdict(spec.progress)) if spec.progress is not None and ctx.is_chief else None
    try:
        result = train(spec.config, ctx, spec.plan, report=reporter)
    except Exception as exc:
        code = exit_code(kind_of(exc))
        if code is None:
            raise
        log.exception("rank %d on %s: %s (exit code %d)", ctx.rank, ctx.host, kind_of(exc), code)
        return code
    finally:
        if reporter is not None:
            reporter.close()
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
