"""Workers sized to their task (issue #11 item 5): the sizing rule, and what it does to TensorFlow and tf.data.

The rule is pure (distribute/threads.py size_threads); that a real training run logs and applies it is
checked by test_train.py's single-worker run (its worker's log line)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imagenet_spark.config import ConfigError, resolve
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.distribute.threads import ThreadSizing, size_threads
from imagenet_spark.train_config import TrainConfig


@pytest.mark.parametrize("setting,task_cpus,gpus,host,local_size,expected", [
    (None, 2, 0, 16, 8, ThreadSizing(2, "spark.task.cpus")),      # CPU task: what Spark reserved
    (None, 1, 0, 16, 1, ThreadSizing(1, "spark.task.cpus")),      # even alone on a big host
    (None, 1, 1, 32, 4, ThreadSizing(8, "gpu host share")),       # GPU task, task.cpus left at 1: a quarter
    (None, 12, 1, 32, 4, ThreadSizing(12, "gpu host share")),     # ... unless Spark reserved more
    (None, None, 0, 8, 1, ThreadSizing(8, "host share")),         # one worker on the driver: the host
    (None, None, 0, 3, 4, ThreadSizing(1, "host share")),         # never below one
    (3, 2, 1, 32, 4, ThreadSizing(3, "cpus_per_worker")),         # the setting wins
    (0, 2, 0, 16, 8, ThreadSizing(0, "unsized")),                 # 0: TensorFlow's defaults
])
def test_sizing_rule(setting, task_cpus, gpus, host, local_size, expected):
    assert size_threads(setting, task_cpus=task_cpus, gpus=gpus, host=host, local_size=local_size) == expected


def test_log_line_names_the_numbers_and_where_they_came_from():
    assert ThreadSizing(2, "spark.task.cpus").describe(0, 2) == \
        "rank 0: 2 CPUs (spark.task.cpus=2): intra-op 2, inter-op 2, tf.data 2"
    assert ThreadSizing(8, "gpu host share").describe(3, 1) == \
        "rank 3: 8 CPUs (gpu host share, spark.task.cpus=1): intra-op 8, inter-op 8, tf.data 8"
    assert "unsized" in ThreadSizing(0, "unsized").describe(0, None)


def test_the_sizing_crosses_the_process_boundary_as_plain_values():
    ctx = WorkerContext(rank=1, size=2, cpus=3, cpus_source="spark.task.cpus", task_cpus=3)
    assert WorkerContext.from_dict(ctx.to_dict()) == ctx
    assert WorkerContext().cpus == 0  # built by hand (tests, benches): TensorFlow's defaults, as before


def test_negative_cpus_per_worker_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"cpus_per_worker=-1: must be 0 \(unsized\) or more. Fix: leave it unset"):
        resolve(TrainConfig, explicit=dict(data="/d", model_dir="/m", model="resnet_tiny", cpus_per_worker=-1))


def test_configure_sizes_tensorflow_and_tf_data():
    """In a fresh process (TensorFlow takes the sizes only before its runtime starts)."""
    script = ("from imagenet_spark.distribute.threads import configure, data_options\n"
              "import tensorflow as tf\n"
              "assert configure(3)\n"
              "ds = tf.data.Dataset.range(4).map(lambda x: x * 2).with_options(data_options(3))\n"
              "assert list(ds.as_numpy_iterator()) == [0, 2, 4, 6]\n"
              "assert not configure(2)  # started: refused, the first sizing stays\n"
              "print(tf.config.threading.get_intra_op_parallelism_threads(),\n"
              "      tf.config.threading.get_inter_op_parallelism_threads(),\n"
              "      ds.options().threading.private_threadpool_size)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["3", "3", "3"]
