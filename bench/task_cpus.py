"""N training workers of k CPUs each vs one worker of N x k CPUs: same model, same global batch, images/s.

    .venv/bin/python bench/task_cpus.py [--model resnet_tiny] [--image-size 64] [--batch 64] [--epochs 4]
                                        [--quick: 3 epochs of 6 steps]

Why: before workers were sized to their task (distribute/threads.py), every training worker started
TensorFlow's intra/inter-op pools and tf.data's pool at the size of the whole machine, so N workers on one
host oversubscribed its cores N times over. On this 2-core machine the runs are, all in one local[2] Spark
session (spark.task.cpus=1) on one dataset written by the real partition job:

* 2 workers x 1 CPU  (MWMS, barrier tasks; sized from spark.task.cpus=1)
* 1 worker x 2 CPUs  (MWMS, on the driver; sized to the host's 2 cores)
* 2 workers unsized  (cpus_per_worker=0: TensorFlow's defaults, the behaviour before; reference)

images/s is the trainer's own figure (metrics.json), median over the epochs after the first (which traces and
compiles); the ratios are to the 1-worker run of the same invocation. Each run takes a minute or two here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from figures import Figure, emit, parse_sized

log = logging.getLogger("bench.task_cpus")


def _dataset(work: Path, image_size: int, batch: int, steps: int) -> Path:
    from imagenet_spark.config import PartitionConfig, resolve
    from imagenet_spark.data.fake import FakeSpec, write_ilsvrc
    from imagenet_spark.jobs.partition import run_partition
    from imagenet_spark.spark.session import build_session

    per_class = batch * steps // 4 + 8
    write_ilsvrc(work / "raw", FakeSpec(num_classes=4, train_per_class=per_class, val_per_class=4,
                                        image_size=(image_size + 16, image_size + 8), seed=1))
    spark = build_session("bench-task-cpus", master="local[2]", conf={"spark.ui.showConsoleProgress": "false"})
    run_partition(spark, resolve(PartitionConfig, explicit=dict(
        input=str(work / "raw"), output=str(work / "ds"), resize_short=image_size + 8, images_per_task=64,
        rows_per_row_group=16)))
    return work / "ds"


def _run(spark: object, data: Path, model_dir: Path, *, workers: int, cpus_per_worker: int | None,
         args: argparse.Namespace) -> float:
    """Median images/s of the epochs after the first."""
    from imagenet_spark.config import resolve
    from imagenet_spark.jobs.train import run_training
    from imagenet_spark.train_config import TrainConfig

    cfg = resolve(TrainConfig, explicit=dict(
        data=str(data), model_dir=str(model_dir), model=args.model, image_size=args.image_size, workers=workers,
        backend="mwms", epochs=args.epochs, warmup_epochs=0, global_batch_size=args.batch, track=False,
        cpus_per_worker=cpus_per_worker, slots_wait_s=10))
    started = time.monotonic()
    run_training(spark, cfg)
    history = json.loads((model_dir / "metrics.json").read_text())
    rates = [r["images_per_s"] for r in history[1:]]
    log.info("%d worker(s), cpus_per_worker=%s: %s images/s by epoch (%.0f s in all)", workers, cpus_per_worker,
             [r["images_per_s"] for r in history], time.monotonic() - started)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet_tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="global batch, the same in every run")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch")
    args = parse_sized(parser, quick={"epochs": 3, "steps": 6})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from imagenet_spark.spark.session import build_session

    work = Path(tempfile.mkdtemp(prefix="bench-task-cpus-"))
    data = _dataset(work, args.image_size, args.batch, args.steps)
    spark = build_session("bench-task-cpus", master="local[2]", conf={"spark.ui.showConsoleProgress": "false"})
    runs = {"2 workers x 1 CPU": (2, None), "1 worker x 2 CPUs": (1, None), "2 workers unsized": (2, 0)}
    rates = {name: _run(spark, data, work / f"m{i}", workers=w, cpus_per_worker=c, args=args)
             for i, (name, (w, c)) in enumerate(runs.items())}
    base = rates["1 worker x 2 CPUs"]
    log.info("%s %d px, global batch %d, %d steps/epoch, median of epochs 2-%d:", args.model, args.image_size,
             args.batch, args.steps, args.epochs)
    for name, rate in rates.items():
        log.info("  %-20s %7.1f images/s  ratio to 1 worker x 2 CPUs: %.2f", name, rate, rate / base)
        if name != "1 worker x 2 CPUs":
            emit(Figure(script="task_cpus", figure=name, value=rate, baseline_name="1 worker x 2 CPUs", baseline=base,
                        unit="images/s", shape=f"{args.model} {args.image_size} px, global batch {args.batch}, "
                        f"{args.steps} steps/epoch, median of epochs 2-{args.epochs}, local[2]"))


if __name__ == "__main__":
    main()
