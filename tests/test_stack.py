"""What each stack can do, and what it refuses with the stack named (README, "Stacks").

On the current stack (no Horovod, no petastorm) ``--backend horovod`` and ``train_reader=petastorm`` are
ConfigErrors before any Spark work; ``train_reader=auto`` reads with pyarrow. On the legacy stack the same
settings are accepted. On both, the training code gets the Keras 2 API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagenet_spark.config import ConfigError, resolve
from imagenet_spark.distribute import stack
from imagenet_spark.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.both_stacks
HAS_HOROVOD = stack.has_module("horovod")
HAS_PETASTORM = stack.has_module("petastorm")


def _cfg(tmp_path: Path, **kw: object) -> TrainConfig:
    base = dict(data=str(tmp_path / "ds"), model_dir=str(tmp_path / "m"), model="resnet_tiny", workers=2,
                backend="mwms", epochs=1, global_batch_size=16, warmup_epochs=0)
    base.update(kw)
    return resolve(TrainConfig, explicit=base)


def test_the_stack_is_named_and_matches_what_is_installed():
    name = stack.stack_name()
    assert name == ("legacy" if HAS_HOROVOD or HAS_PETASTORM else "current")
    line = stack.describe()
    assert line.startswith(f"{name} stack (Python {sys.version_info[0]}.{sys.version_info[1]}")
    assert stack.tensorflow_version() in line and stack.tensorflow_version() != "none"


def test_horovod_backend_on_a_stack_without_horovod_names_the_stack_and_the_fix(tmp_path):
    if HAS_HOROVOD:
        assert _cfg(tmp_path, backend="horovod").backend == "horovod"
        return
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, backend="horovod")
    message = str(err.value)
    assert err.value.setting == "backend" and err.value.value == "horovod"
    assert stack.describe() in message  # e.g. "current stack (Python 3.12.1, TensorFlow 2.21.0)"
    assert "make setup STACK=legacy" in message and "--backend mwms" in message


def test_train_reader_auto_follows_the_stack_and_petastorm_is_refused_without_it(tmp_path):
    assert _cfg(tmp_path).input.train_reader == "auto"
    assert stack.resolve_train_reader("auto") == ("petastorm" if HAS_PETASTORM else "parquet")
    assert stack.resolve_train_reader("parquet") == "parquet"
    with pytest.raises(ConfigError, match="train_reader"):
        _cfg(tmp_path, train_reader="pickle")
    if HAS_PETASTORM:
        assert _cfg(tmp_path, train_reader="petastorm").input.train_reader == "petastorm"
        return
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, train_reader="petastorm")
    assert stack.describe() in str(err.value) and "train_reader=auto or parquet" in str(err.value)


@pytest.mark.skipif(HAS_HOROVOD, reason="refusal only happens on a stack without Horovod")
def test_train_cli_refuses_horovod_before_spark_starts(tmp_path):
    """The command line fails in seconds with the one-line error, and no JVM was started for it."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "imagenet_spark", "train", "--data", str(tmp_path / "ds"),
                           "--model-dir", str(tmp_path / "m"), "--model", "resnet_tiny", "--workers", "2",
                           "--backend", "horovod", "--master", "local[2]"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    seconds = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "backend='horovod'" in output and "make setup STACK=legacy" in output, output[-2000:]
    assert "SparkContext" not in output and "Traceback" not in output, output[-2000:]
    assert seconds < 60, seconds


def test_training_code_gets_keras_2():
    """In a fresh process, as a worker starts: the package first, then TensorFlow and a model of the registry."""
    script = ("import importlib, imagenet_spark, tensorflow as tf; from imagenet_spark.models import build;"
              "m = build('resnet_tiny', num_classes=4); package = type(m).__module__.split('.')[0];"
              "print(importlib.import_module(package).__version__, package, isinstance(m, tf.keras.Model))")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version, package, is_model = proc.stdout.split()[-3:]
    assert version.startswith("2."), f"Keras {version}: the training code is written for the Keras 2 API"
    assert package == ("tf_keras" if stack.uses_legacy_keras() else "keras") and is_model == "True"
