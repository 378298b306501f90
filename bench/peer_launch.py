"""The peer's launch, for ``bench/launch.py --peer``: spark-tensorflow-distributor's ``MirroredStrategyRunner``.

Issue #13 goal 3 asks for a launch "ahead of the peer": this is the peer as its users run it, unmodified (the
wheel is pinned in both stacks' requirements, bench only): a plain ``SparkSession`` on ``local[2]``, the runner
with 2 CPU slots (one barrier task each, MultiWorkerMirroredStrategy made by the runner), and a training function
in the style of its README: a small CNN (one convolution, two dense layers) compiled and fitted on in-memory
data, here 28x28 random images (nothing downloads). A callback writes ``launch timing: rank R first step done at
T`` (wall-clock seconds) after each worker's first batch, the line ``bench/launch.py`` reads for our job.

Why this favours the peer: its model and data are smaller than ours (resnet_tiny on a partitioned dataset read
from disk), and it runs none of our checks (plan, cluster and data checks, model-dir claim).

    .venv/bin/python bench/peer_launch.py   # as bench/launch.py runs it, timed from process start
"""

from __future__ import annotations

import logging
import sys
import time


def train() -> None:
    """The training function each barrier task runs inside the runner's strategy scope."""
    import numpy as np
    import tensorflow as tf
    from pyspark import BarrierTaskContext

    rank = BarrierTaskContext.get().partitionId()

    class FirstStep(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            if batch == 0:
                sys.stderr.write(f"launch timing: rank {rank} first step done at {time.time():.3f}\n")
                sys.stderr.flush()

    rng = np.random.default_rng(rank)
    images = rng.random((2048, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, 2048)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(2048).repeat().batch(32)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(loss="sparse_categorical_crossentropy", optimizer=tf.keras.optimizers.SGD(0.001),
                  metrics=["accuracy"])
    model.fit(data.with_options(options), epochs=1, steps_per_epoch=5, callbacks=[FirstStep()], verbose=0)


def main() -> int:
    from pyspark.sql import SparkSession
    from spark_tensorflow_distributor import MirroredStrategyRunner

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spark = SparkSession.builder.master("local[2]").appName("peer-launch").getOrCreate()
    try:
        MirroredStrategyRunner(num_slots=2, use_gpu=False).run(train)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
