#!/usr/bin/env bash
# Spark GPU discovery script: prints the GPUs of this host as Spark's resource JSON.
#   --conf spark.executor.resource.gpu.discoveryScript=conf/spark/getGpusResources.sh
# Requires nvidia-smi. The indices it prints are those CUDA sees in this process (within any inherited
# CUDA_VISIBLE_DEVICES), which is how imagenet-spark maps a task's addresses to CUDA_VISIBLE_DEVICES.
set -euo pipefail
ids=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e ':a' -e 'N' -e '$!ba' -e 's/\n/","/g')
echo "{\"name\": \"gpu\", \"addresses\": [\"$ids\"]}"
