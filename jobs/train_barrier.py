"""spark-submit jobs/train_barrier.py --data DATASET --model-dir DIR --model resnet50 --workers N --backend mwms
       --epochs E --global-batch-size B [--image-size S] [--config conf/train/...] [--set k=v ...]

Trains in a Spark barrier stage, one TensorFlow worker per task, resuming from checkpoints after failures,
and exports a serving SavedModel. Thin entry point: the work is in imagenet_spark.jobs.train
(the driver: attempts and retries) and imagenet_spark.spark.barrier (one attempt's barrier stage).
"""

import sys

from imagenet_spark.cli import run_command, train_parser

if __name__ == "__main__":
    sys.exit(run_command("train", train_parser().parse_args()))
