"""spark-submit jobs/partition.py --input SRC --output DST [--config conf/partition/...] [--set k=v ...]

Raw ImageNet in any of its shapes → Petastorm Parquet partitioned by synset, with labels.txt and
manifest.json. Thin entry point: all the work is in imagenet_spark.data.partition.
"""

import sys

from imagenet_spark.cli import partition_parser, run_command

if __name__ == "__main__":
    sys.exit(run_command("partition", partition_parser().parse_args()))
