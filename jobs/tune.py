"""spark-submit jobs/tune.py --data DATASET --model-dir SEARCH_DIR --config conf/tune/resnet18_imagenet.yaml
       [--max-trials N] [--max-parallel-trials P] [--sampler tpe|random] [--set space.base_lr.high=0.8 ...]

Hyperparameter search: each trial a full barrier training in SEARCH_DIR/trial-NNN, trials stopped early at
epoch checkpoints when clearly behind, a summary in SEARCH_DIR/trials.csv|json, and the best trial's model in
SEARCH_DIR/best/saved_model. Thin entry point: the work is in imagenet_spark.jobs.tune.
"""

import sys

from imagenet_spark.cli import run_command, tune_parser

if __name__ == "__main__":
    sys.exit(run_command("tune", tune_parser().parse_args()))
