#!/bin/bash
# Databricks cluster-scoped init script: installs the imagenet-spark wheel on every node (driver and workers)
# before Spark starts, into the runtime's own Python, and moves none of the runtime's packages.
#
# Why an init script and not only `%pip install`: barrier training starts TensorFlow workers on the executors,
# and jobs (spark-submit / Python-script tasks) have no notebook to run %pip in. A cluster-scoped init script
# puts the package on every node for notebooks, jobs and spark-submit alike, before any executor starts.
#
# How it keeps the runtime intact: the runtime's installed distributions (`pip list --format=freeze`, exact
# versions, pip and setuptools included) become pip constraints for the install. pip may then only ADD
# distributions the runtime lacks; if the wheel needed a different version of anything the runtime ships
# (pyspark, TensorFlow, pyarrow, numpy, MLflow, ...), pip refuses and this script exits non-zero, so the
# cluster fails to start with pip's message in the init script log, instead of running on a changed runtime.
# On TensorFlow >= 2.16 without tf-keras it also adds tf-keras of the same minor version (the Keras 2 API the
# training code uses; TF_USE_LEGACY_KERAS=1 in the cluster spec selects it).
#
# Settings (cluster `spark_env_vars`):
#   IMAGENET_SPARK_WHEEL   path of the wheel, e.g. /Volumes/main/imagenet_spark/libs/imagenet_spark-0.1.0-py3-none-any.whl
#   IMAGENET_SPARK_PYTHON  the runtime's Python (default /databricks/python/bin/python); the proof sets it
set -euo pipefail

PY=${IMAGENET_SPARK_PYTHON:-/databricks/python/bin/python}
WHEEL=${IMAGENET_SPARK_WHEEL:-}
log() { echo "[init-imagenet-spark] $*"; }

if [ -z "$WHEEL" ]; then
  log "ERROR: IMAGENET_SPARK_WHEEL is not set: add it to the cluster's spark_env_vars (the wheel's path in a volume)"
  exit 2
fi
if [ ! -f "$WHEEL" ]; then
  log "ERROR: IMAGENET_SPARK_WHEEL=$WHEEL: no such file on this node (upload the wheel to that volume path)"
  exit 2
fi
if [ ! -x "$PY" ]; then
  log "ERROR: $PY not found: set IMAGENET_SPARK_PYTHON to the runtime's Python"
  exit 2
fi

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
constraints="$workdir/runtime-constraints.txt"
# Every installed distribution at its exact version; an earlier imagenet-spark is the one thing allowed to change.
"$PY" -m pip list --disable-pip-version-check --format=freeze \
  | grep -v -i -E '^imagenet[-_]spark==' > "$constraints"
log "runtime: $("$PY" -c 'import sys; print(sys.version.split()[0])'), $(wc -l < "$constraints") distributions held at their versions"

# tf-keras of TensorFlow's own minor version where TensorFlow >= 2.16 (Keras 3 built in) ships without it.
extra=$("$PY" - <<'PY'
import importlib.metadata as md

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None

tf = version("tensorflow") or version("tensorflow-cpu")
if tf and version("tf-keras") is None:
    major, minor = (int(p) for p in tf.split(".")[:2])
    if (major, minor) >= (2, 16):
        print(f"tf-keras=={major}.{minor}.*")
PY
)
[ -n "$extra" ] && log "adding $extra (TensorFlow's Keras 2 API)"

# shellcheck disable=SC2086  # $extra is empty or one requirement without spaces
if ! "$PY" -m pip install --disable-pip-version-check --no-input -c "$constraints" "$WHEEL" $extra; then
  log "ERROR: installing $(basename "$WHEEL") would change packages this runtime ships (pip's reason above)."
  log "       Nothing was changed. Use the runtime this release supports (README, Databricks) or report the conflict."
  exit 1
fi
log "installed $(basename "$WHEEL"); no runtime package moved"
