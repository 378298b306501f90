#!/usr/bin/env bash
# `make demo`: the whole product on generated data, on one machine, in a few minutes:
#   fake ImageNet (with quirks and broken files) -> partition job (spark-submit) -> a two-worker barrier training
#   of a tiny ResNet (spark-submit, MultiWorkerMirroredStrategy) -> SavedModel export -> predict on two images
#   -> the report (curves, LR, throughput, prediction grid, HTML); then where each output is.
# Run by the Makefile after `make setup`; VENV and DEMO come from it (defaults .venv and demo/).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
DEMO=${DEMO:-demo}
EPOCHS=${DEMO_EPOCHS:-10}  # ~1 s each after the first on 2 cores; 3 epochs left it near 50% top-1
PY="$VENV/bin/python"
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }

# Spark's executors and the TensorFlow workers must run this venv's Python; keep Spark on loopback.
export PATH="$(cd "$VENV/bin" && pwd):$PATH" PYSPARK_PYTHON="$(cd "$VENV/bin" && pwd)/python"
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1} TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# The driver JVM's class archive (make setup wrote it; spark/jvm.py): spark-submit starts the JVM before our code
# runs, so its options go on the command line.
JVM_OPTS=$("$PY" -m imagenet_spark jvm-archive --print-options)
SUBMIT=("$VENV/bin/spark-submit" --master 'local[2]'
        --driver-java-options "-Dlog4j2.configurationFile=conf/spark/log4j2.properties $JVM_OPTS")

rm -rf "$DEMO"
step "1/6 fake ImageNet: 10 classes, 40 train + 10 validation images each, plus quirky and broken files"
"$PY" -m imagenet_spark fake-data --output "$DEMO/raw" --classes 10 --train-per-class 40 --val-per-class 10 \
  --size 96x72 --quirks --broken

step "2/6 partition job (spark-submit, local[2]): clean, resize, write Parquet by synset, quarantine the bad files"
"${SUBMIT[@]}" jobs/partition.py --config conf/partition/smoke.yaml \
  --input "$DEMO/raw" --output "$DEMO/dataset" --set max_reject_fraction=0.05
"$PY" -m imagenet_spark summary "$DEMO/dataset"

step "3/6 training (spark-submit, local[2]): barrier stage, 2 TensorFlow workers (MWMS), resnet_tiny, $EPOCHS epochs"
"${SUBMIT[@]}" --conf spark.dynamicAllocation.enabled=false jobs/train_barrier.py \
  --config conf/train/resnet18_smoke.yaml --data "$DEMO/dataset" --model-dir "$DEMO/model" \
  --workers 2 --backend mwms --epochs "$EPOCHS" --set track=false

step "4/6 export: the SavedModel the training wrote (serving_default: image_bytes, key -> classes, probabilities)"
ls "$DEMO/model/saved_model"

step "5/6 predict: two validation images the model never trained on"
images=("$DEMO/raw/validation/ILSVRC2012_val_00000001.JPEG" "$DEMO/raw/validation/ILSVRC2012_val_00000002.JPEG")
echo "their true classes (validation labels file): $(head -n 2 "$DEMO/raw/synset_labels.txt" | tr '\n' ' ')"
"$PY" -m imagenet_spark predict --model-dir "$DEMO/model" --top-k 3 "${images[@]}"

step "6/6 report: curves, learning rate, throughput, prediction grid, HTML page"
"$PY" -m imagenet_spark report --model-dir "$DEMO/model" --data "$DEMO/dataset"

step "done in $(( $(date +%s) - start ))s. Where everything is:"
cat <<EOF
  raw images (ImageNet layout, with bad files)   $DEMO/raw/
  dataset (Parquet by synset, labels, manifest)  $DEMO/dataset/  (manifest: $DEMO/dataset/manifest.json)
  quarantined inputs with reasons                $DEMO/dataset/rejects/
  model dir (checkpoints, metrics, TensorBoard)  $DEMO/model/  (per epoch: $DEMO/model/metrics.json)
  exported SavedModel                            $DEMO/model/saved_model/
  report                                         $DEMO/model/report/report.html (+ curves.png, lr.png, throughput.png, predictions.png)
EOF
