#!/usr/bin/env bash
# Creates .venv with the verified stack (requirements/lock.txt), then Horovod compiled against the installed
# TensorFlow, then this package in editable mode. Idempotent: keyed on the hash of the lock files and
# setup.cfg, so a second run with nothing changed returns in well under a second. The compiled Horovod wheel
# is cached outside the clone (~/.cache/imagenet-spark), so a fresh clone (CI) does not recompile it.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
GPU=${GPU:-0}
CACHE=${IMAGENET_SPARK_CACHE:-$HOME/.cache/imagenet-spark}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

log() { echo "[setup] $*" >&2; }

ensure_java() {
  if command -v java >/dev/null 2>&1; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "java not found: installing openjdk-17-jre-headless with apt-get (Spark needs a JVM)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    log "ERROR: java not found. Spark needs Java 8, 11 or 17 on PATH: install OpenJDK 17 (Debian/Ubuntu:"
    log "       'sudo apt-get install openjdk-17-jre-headless'; macOS: 'brew install openjdk@17'), then rerun make setup."
    exit 1
  fi
}

ensure_java
"$PYTHON" - <<'PY' || { log "ERROR: Python 3.11 is required (TensorFlow 2.15 + Horovod 0.28.1). Set PYTHON=/path/to/python3.11."; exit 1; }
import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY

key=$(cat requirements/lock.txt requirements/horovod.txt setup.cfg | sha256sum | cut -c1-16)-gpu$GPU
if [ -f "$VENV/.setup-key" ] && [ "$(cat "$VENV/.setup-key")" = "$key" ]; then
  log "up to date ($VENV, key $key)"
  exit 0
fi

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install "pip==24.2" >/dev/null
lock=requirements/lock.txt
if [ "$GPU" = 1 ]; then
  # GPU hosts: the CUDA build of the same TensorFlow version (CUDA 12.2, cuDNN 8.9).
  lock=$(mktemp); sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' requirements/lock.txt > "$lock"
fi
log "step 1/3: the pinned stack ($lock)"
$PIP install -r "$lock"

log "step 2/3: horovod, compiled against the installed TensorFlow"
tfver=$("$VENV/bin/python" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)
hvd_key=$(cat requirements/horovod.txt | sha256sum | cut -c1-12)-tf$tfver-gpu$GPU
wheeldir="$CACHE/wheels/$hvd_key"
if ! ls "$wheeldir"/horovod-*.whl >/dev/null 2>&1; then
  log "  compiling horovod (about 100 s on 2 cores; cached in $wheeldir for next time)"
  mkdir -p "$wheeldir"
  export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
  if [ "$GPU" = 1 ]; then export HOROVOD_GPU_OPERATIONS=NCCL; fi
  $PIP wheel --no-deps --no-build-isolation --no-cache-dir -w "$wheeldir" "$(grep -v '^#' requirements/horovod.txt | sed 's/\[spark\]//')"
fi
$PIP install --no-build-isolation -c requirements/lock.txt --find-links "$wheeldir" "$(grep -v '^#' requirements/horovod.txt)"

log "step 3/3: imagenet_spark (editable)"
$PIP install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check; log "ERROR: inconsistent environment"; exit 1; }
echo "$key" > "$VENV/.setup-key"
log "done in $(( $(date +%s) - start )) s"
