#!/usr/bin/env bash
# Creates the venv of one of the two verified stacks (README, "Stacks"), then this package in editable mode:
#   STACK=current (default): .venv, Python 3.12, requirements/current.lock (TensorFlow 2.21 + tf-keras,
#                            pyspark 4, numpy 2, pyarrow >= 15; no Horovod, no petastorm)
#   STACK=legacy:            .venv-legacy, Python 3.11, requirements/legacy.lock (TensorFlow 2.15, pyspark 3.5,
#                            petastorm), then Horovod compiled against the installed TensorFlow
# Idempotent: keyed on the hash of the stack's lock files and setup.cfg, so a second run with nothing changed
# returns in well under a second. The compiled Horovod wheel is cached outside the clone
# (~/.cache/imagenet-spark), so a fresh clone (CI) does not recompile it.
set -euo pipefail
cd "$(dirname "$0")/.."

STACK=${STACK:-current}
GPU=${GPU:-0}
CACHE=${IMAGENET_SPARK_CACHE:-$HOME/.cache/imagenet-spark}

log() { echo "[setup] $*" >&2; }

case "$STACK" in
  current) VENV=${VENV:-.venv}; PYVER=3.12; lockfile=requirements/current.lock; keyfiles="$lockfile" ;;
  legacy)  VENV=${VENV:-.venv-legacy}; PYVER=3.11; lockfile=requirements/legacy.lock
           keyfiles="$lockfile requirements/horovod.txt" ;;
  *) log "ERROR: STACK=$STACK: must be 'current' (default) or 'legacy'."; exit 1 ;;
esac

ensure_java() {
  if command -v java >/dev/null 2>&1; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "java not found: installing openjdk-17-jre-headless with apt-get (Spark needs a JVM)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    log "ERROR: java not found. Spark needs Java 17 on PATH (Spark 4 needs 17; Spark 3.5 takes 8, 11 or 17):"
    log "       install OpenJDK 17 (Debian/Ubuntu: 'sudo apt-get install openjdk-17-jre-headless'; macOS:"
    log "       'brew install openjdk@17'), then rerun make setup STACK=$STACK."
    exit 1
  fi
}

# The interpreter: $PYTHON if given, else the first python$PYVER that really runs (a pyenv shim for a version
# that is installed but not selected exists on PATH and fails), else pyenv's own copy.
find_python() {
  local cand
  for cand in ${PYTHON:-} "python$PYVER" "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/"$PYVER".*/bin/python"$PYVER" \
              "/usr/bin/python$PYVER" "/usr/local/bin/python$PYVER"; do
    [ -n "$cand" ] || continue
    if "$cand" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$PYVER' else 1)" >/dev/null 2>&1; then
      command -v "$cand" 2>/dev/null || echo "$cand"
      return 0
    fi
  done
  return 1
}

if [ "${1:-}" = --print-python ]; then find_python; exit; fi  # for `make lock`: the stack's interpreter
ensure_java
PYTHON=$(find_python) || {
  if [ "$STACK" = legacy ]; then why="TensorFlow 2.15 + Horovod 0.28.1 need it"; else why="the current stack's lock is for it"; fi
  log "ERROR: Python $PYVER is required for STACK=$STACK ($why) and none was found (tried \$PYTHON, python$PYVER,"
  log "       pyenv's versions, /usr/bin). Fix: install it (pyenv install $PYVER, or apt-get install python$PYVER-venv)"
  log "       or pass PYTHON=/path/to/python$PYVER."
  exit 1
}

key=$(cat $keyfiles setup.cfg | sha256sum | cut -c1-16)-$STACK-gpu$GPU
if [ -f "$VENV/.setup-key" ] && [ "$(cat "$VENV/.setup-key")" = "$key" ]; then
  log "up to date ($VENV, $STACK stack, key $key)"
  exit 0
fi

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install "pip==24.2" >/dev/null
lock=$lockfile
if [ "$GPU" = 1 ]; then
  # GPU hosts: the CUDA build of the same TensorFlow version (legacy: CUDA 12.2, cuDNN 8.9; current: the
  # CUDA libraries tensorflow[and-cuda] pulls for 2.21).
  lock=$(mktemp)
  sed -e 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' -e 's/^tensorflow==/tensorflow[and-cuda]==/' "$lockfile" > "$lock"
fi
steps=2; [ "$STACK" = legacy ] && steps=3
log "step 1/$steps: the pinned $STACK stack ($lock) into $VENV with $PYTHON"
$PIP install -r "$lock"

if [ "$STACK" = legacy ]; then
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
  $PIP install --no-build-isolation -c "$lockfile" --find-links "$wheeldir" "$(grep -v '^#' requirements/horovod.txt)"
fi

log "step $steps/$steps: imagenet_spark (editable)"
$PIP install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check; log "ERROR: inconsistent environment"; exit 1; }
echo "$key" > "$VENV/.setup-key"
log "done in $(( $(date +%s) - start )) s ($STACK stack in $VENV)"
