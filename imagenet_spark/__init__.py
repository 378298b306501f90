"""imagenet-spark: prepare ImageNet with Spark and train image classifiers in a Spark barrier stage."""

import os as _os

from imagenet_spark.distribute.stack import uses_legacy_keras as _uses_legacy_keras

__version__ = "0.1.0"

# One training code path for both stacks is written against the Keras 2 API (``tf.keras``). On TensorFlow
# >= 2.16 that name is Keras 3 unless TF_USE_LEGACY_KERAS is set before TensorFlow is imported; tf-keras
# then serves it. Set here, so every process that imports this package (driver, barrier workers launched with
# this environment, tests, benchmarks, notebooks, predict) gets Keras 2. TF 2.15 (legacy stack) has Keras 2
# built in and must not see the variable. README, "Stacks", says why not Keras 3.
if _uses_legacy_keras():
    _os.environ["TF_USE_LEGACY_KERAS"] = "1"
else:  # inherited from a process of the other stack, it would send TF 2.15 looking for tf-keras
    _os.environ.pop("TF_USE_LEGACY_KERAS", None)
