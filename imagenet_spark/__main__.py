"""``python -m imagenet_spark`` = the ``imagenet-spark`` console command."""

import sys

from imagenet_spark.cli import main

sys.exit(main())
