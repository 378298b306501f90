"""spark-submit jobs/partition.py --input SRC --output DST [--config conf/partition/...] [--set k=v ...]

Raw ImageNet in any of its shapes → Petastorm Parquet partitioned by synset, with labels.txt and
manifest.json. Thin entry point: the driver is imagenet_spark.jobs.partition (run_partition), over the
executor work in imagenet_spark.data (tasks, partition, manifest).
"""

import sys

from imagenet_spark.cli import partition_parser, run_command

if __name__ == "__main__":
    sys.exit(run_command("partition", partition_parser().parse_args()))
