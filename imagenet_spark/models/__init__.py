"""Image classification models: a registry of spec-table architectures (AlexNet, ResNet v1.5).

``available()``/``info(name)`` answer without TensorFlow (the driver validates names and reads
input defaults with them); ``build(name, num_classes=...)`` imports TensorFlow and returns an
uncompiled ``tf.keras.Model`` from normalised float32 images to float32 logits;
``decay_variables(model)`` lists the kernels the optimizer should apply weight decay to.
"""

from imagenet_spark.models.registry import (
    DTYPE_POLICIES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelInfo,
    ModelOptionError,
    UnknownModelError,
    available,
    build,
    count_trainable,
    decay_variables,
    eval_resize_for,
    info,
)

__all__ = [
    "DTYPE_POLICIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelInfo",
    "ModelOptionError",
    "UnknownModelError",
    "available",
    "eval_resize_for",
    "build",
    "count_trainable",
    "decay_variables",
    "info",
]
