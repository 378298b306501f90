"""Our training step vs plain ``model.fit`` on in-memory tensors, and barrier launch latency.

    .venv/bin/python bench/train_step.py [--model resnet_tiny] [--image-size 32] [--batch 64] [--steps 60]
                                         [--skip-launch] [--quick: 30 steps, --skip-launch]

* step: the step the jobs run (``steps.make_step_functions``: n steps in one tf.function, Sum metrics, L2 on
  kernels only) vs ``model.fit`` with the same model, optimizer, loss and data, both from the same in-memory
  tf.data stream; the figure is the ratio of time per step (target <= 1.10). Runs alternate, median of 3.
* launch: submit -> first training step of a 2-worker MWMS run in local[2] (in this process) and in
  local-cluster[2,1,1024] (spark-submit), as reported by the trainer's attempt record.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from figures import Figure, emit, parse_sized

REPO = Path(__file__).resolve().parents[1]


def step_ratio(model_name: str, image_size: int, batch: int, steps: int) -> None:
    import numpy as np
    import tensorflow as tf

    from imagenet_spark.distribute.backends import make_backend
    from imagenet_spark.distribute.context import WorkerContext
    from imagenet_spark.models import build, decay_variables
    from imagenet_spark.train.steps import make_step_functions
    from imagenet_spark.train_config import Recipe, TrainConfig

    classes = 10
    cfg = TrainConfig(data="-", model_dir="-", model=model_name, workers=1, backend="off", global_batch_size=batch,
                      recipe=Recipe(weight_decay=1e-4, label_smoothing=0.1))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 8, image_size, image_size, 3)).astype("float32")
    y = tf.one_hot(rng.integers(0, classes, size=batch * 8), classes).numpy()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat().prefetch(4)
    backend = make_backend("off", WorkerContext())

    def ours() -> float:
        model = build(model_name, num_classes=classes, image_size=image_size)
        opt = tf.keras.optimizers.SGD(0.01, momentum=0.9)
        sums = {n: tf.keras.metrics.Sum(name=n) for n in ("loss", "top1", "top5", "count", "val_loss", "val_top1",
                                                           "val_top5", "val_count")}
        train_steps, _ = make_step_functions(cfg, backend, model, opt, sums, num_classes=classes,
                                             mean=(0.0,) * 3, std=(1.0,) * 3)  # normal data: identity, still timed
        it = iter(ds)
        train_steps(it, tf.constant(5))  # trace + warm up
        float(sums["loss"].result())
        start = time.perf_counter()
        train_steps(it, tf.constant(steps))
        float(sums["loss"].result())
        return (time.perf_counter() - start) / steps

    def fit() -> float:
        model = build(model_name, num_classes=classes, image_size=image_size)
        kernels = decay_variables(model)  # the same L2 on conv/dense kernels as our step, so both do the same work
        model.add_loss(lambda: cfg.recipe.weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in kernels]))
        model.compile(optimizer=tf.keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                      metrics=[tf.keras.metrics.CategoricalAccuracy(), tf.keras.metrics.TopKCategoricalAccuracy(5)])
        model.fit(ds, steps_per_epoch=5, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        return (time.perf_counter() - start) / steps

    mine, theirs = [], []
    for _ in range(3):
        mine.append(ours())
        theirs.append(fit())
    m, f = statistics.median(mine), statistics.median(theirs)
    print(f"step   {model_name} {image_size}px batch {batch}: ours {m * 1000:.1f} ms/step, model.fit {f * 1000:.1f} "
          f"ms/step, ratio ours/fit {m / f:.2f} (target <= 1.10)")
    emit(Figure(script="train_step", figure="our training step", value=m * 1000, baseline_name="model.fit",
                baseline=f * 1000, unit="ms/step", better="lower",
                shape=f"{model_name} {image_size} px, batch {batch}, {steps} steps from memory, median of 3"))


def launch_latency() -> None:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from imagenet_spark.config import PartitionConfig, resolve
    from imagenet_spark.data.fake import FakeSpec, write_ilsvrc
    from imagenet_spark.jobs.partition import run_partition
    from imagenet_spark.jobs.train import run_training
    from imagenet_spark.spark.session import build_session
    from imagenet_spark.train_config import TrainConfig

    work = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    write_ilsvrc(work / "raw", FakeSpec(num_classes=4, train_per_class=40, val_per_class=8, image_size=(40, 40)))
    spark = build_session("bench-launch", master="local[2]", conf={"spark.ui.showConsoleProgress": "false"})
    run_partition(spark, resolve(PartitionConfig, explicit=dict(input=str(work / "raw"), output=str(work / "ds"),
                                                                resize_short=40, images_per_task=16,
                                                                rows_per_row_group=8)))
    for i in range(2):
        cfg = resolve(TrainConfig, explicit=dict(data=str(work / "ds"), model_dir=str(work / f"m{i}"),
                                                 model="resnet_tiny", workers=2, epochs=1, warmup_epochs=0,
                                                 global_batch_size=32))
        start = time.monotonic()
        result = run_training(spark, cfg)
        print(f"launch local[2] run {i + 1}: first training step {result['attempts'][-1]['launch_to_first_step_s']} s "
              f"after the call (whole 1-epoch run {time.monotonic() - start:.1f} s)")
    spark.stop()
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    start = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "spark-submit"), "--master", "local-cluster[2,1,1024]",
                           "--conf", "spark.scheduler.barrier.maxConcurrentTasksCheck.interval=1s",
                           str(REPO / "jobs/train_barrier.py"), "--data", str(work / "ds"), "--model-dir",
                           str(work / "mc"), "--model", "resnet_tiny", "--workers", "2", "--epochs", "1",
                           "--global-batch-size", "32", "--set", "warmup_epochs=0"],
                          capture_output=True, text=True, env=env, timeout=900)
    total = time.monotonic() - start
    m = re.search(r"launch to first step ([\d.]+) s", proc.stdout + proc.stderr)
    print(f"launch local-cluster[2,1,1024] via spark-submit: first training step {m.group(1) if m else '?'} s after "
          f"the training call; whole spark-submit {total:.1f} s (rc {proc.returncode})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet_tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip-launch", action="store_true", help="bench/launch.py measures the launch per phase")
    args = parse_sized(parser, quick={"steps": 30, "skip_launch": True})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    step_ratio(args.model, args.image_size, args.batch, args.steps)
    if not args.skip_launch:
        launch_latency()
    return 0


if __name__ == "__main__":
    sys.exit(main())
