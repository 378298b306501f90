"""Which of the two verified stacks this interpreter runs, and what it can do (Horovod, petastorm).

Why: one code base runs on two stacks (README, "Stacks"). The *current* stack (Python 3.12, TensorFlow 2.21
with tf-keras, pyspark 4, numpy 2, pyarrow >= 15) cannot have Horovod (0.28.1 does not build against TF >= 2.19)
nor petastorm (0.13.1 does not import with pyarrow >= 15); the *legacy* stack (Python 3.11, TensorFlow 2.15,
Horovod, petastorm) has both. A setting that needs what this stack lacks must fail on the driver, before any
Spark work, with a message that names the stack and the fix, instead of deep inside an executor.

Everything here looks at installed distributions only (``importlib``), never imports TensorFlow, Horovod or
petastorm: the driver calls it while validating the configuration.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import typing
from typing import Any

_TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel")


def has_module(name: str) -> bool:
    """True when ``name`` can be imported here (found on the path; not imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def tensorflow_version() -> str:
    """The installed TensorFlow's version from its distribution metadata, or ``"none"``."""
    for dist in _TF_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


def stack_name() -> str:
    """``legacy`` where Horovod or petastorm can be imported (only the legacy stack installs them), else
    ``current``."""
    return "legacy" if has_module("horovod") or has_module("petastorm") else "current"


def describe() -> str:
    """One line for messages: ``current stack (Python 3.12.1, TensorFlow 2.21.0)``."""
    return f"{stack_name()} stack (Python {platform.python_version()}, TensorFlow {tensorflow_version()})"


def uses_legacy_keras() -> bool:
    """Whether ``tf.keras`` must be routed to tf-keras (Keras 2) by ``TF_USE_LEGACY_KERAS``: where tf-keras is
    installed (TensorFlow >= 2.16). TensorFlow 2.15 ships Keras 2 itself and must not get the variable: it then
    looks for tf-keras, which the legacy stack does not install."""
    return has_module("tf_keras")


def check_backend(backend: str) -> None:
    """Refuse ``--backend horovod`` on a stack without Horovod, naming the stack and the two ways out."""
    if backend == "horovod" and not has_module("horovod"):
        from imagenet_spark.config import ConfigError

        raise ConfigError("backend", backend, f"Horovod is not installed on the {describe()}: Horovod 0.28.1 "
                          "builds only against TensorFlow <= 2.18, so the current stack has none.",
                          "train with --backend mwms (MultiWorkerMirroredStrategy), or use the legacy stack: "
                          "`make setup STACK=legacy` and run with .venv-legacy/bin/python.")


def resolve_train_reader(value: str) -> str:
    """``auto`` becomes ``petastorm`` where petastorm can be imported, else ``parquet`` (the pyarrow reader);
    a spelled-out ``petastorm`` on a stack without it is a ConfigError naming the stack and the fix."""
    from imagenet_spark.config import ConfigError, TrainReader

    if value not in typing.get_args(TrainReader):
        raise ConfigError("input.train_reader", value, f"must be one of {', '.join(typing.get_args(TrainReader))}.")
    if value == "auto":
        return "petastorm" if has_module("petastorm") else "parquet"
    if value == "petastorm" and not has_module("petastorm"):
        raise ConfigError("input.train_reader", value, f"petastorm is not installed on the {describe()}: petastorm "
                          "0.13.1 does not import with pyarrow >= 15.",
                          "use --set input.train_reader=auto or parquet (the pyarrow reader, same rows), or the legacy "
                          "stack: `make setup STACK=legacy`.")
    return value


def check_train_config(cfg: Any) -> None:
    """What the stack itself rules out in a TrainConfig (called by ``TrainConfig.validate``)."""
    check_backend(cfg.backend)
    resolve_train_reader(cfg.input.train_reader)
