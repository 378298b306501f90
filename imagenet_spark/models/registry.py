"""Model registry: names -> input defaults (``info``) and Keras builders (``build``).

Why a registry rather than importing architectures directly: the driver validates ``model=...`` and
reads each model's input defaults (image size, eval resize, normalisation) while planning a job, long
before any executor starts TensorFlow. So this module, and the architecture modules it reads spec
tables from, never import TensorFlow at import time; TensorFlow is imported inside the build
functions only.

The architectures themselves live as spec tables in :mod:`.alexnet` and :mod:`.resnet`; the tiny
test variants are rows in the same tables, so tests exercise the same code path as the real models.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagenet_spark.errors import ImagenetSparkError

if TYPE_CHECKING:  # pragma: no cover - typing only; TensorFlow is never imported at runtime here.
    import tensorflow as tf

log = logging.getLogger(__name__)

#: ImageNet RGB statistics in 0..255 units (the torchvision convention, applied by the data pipeline).
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

#: Keras mixed-precision policies a model may be built under.
DTYPE_POLICIES: tuple[str, ...] = ("float32", "mixed_float16", "mixed_bfloat16")


class UnknownModelError(ImagenetSparkError, ValueError):
    """``model=<name>`` names no registered model. The message lists the known names."""

    def __init__(self, name: object, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(f"model={name!r}: unknown model; known: {', '.join(self.known)}")


class ModelOptionError(ImagenetSparkError, ValueError):
    """A build option has a value the chosen model cannot be built with.

    The message names the option, the value, the model and what would be accepted.
    """

    def __init__(self, model: str, option: str, value: object, problem: str) -> None:
        self.model = model
        self.option = option
        self.value = value
        super().__init__(f"{option}={value!r}: {problem} (model {model!r})")


@dataclass(frozen=True)
class ModelInfo:
    """What the driver and the data pipeline need to know about a model without building it.

    ``image_size`` is the train/eval crop; ``eval_resize`` the short side images are resized to before
    the centre crop at evaluation (224/256 = 0.875, the usual ImageNet protocol); ``mean``/``std`` are
    applied by the data pipeline, not inside the model, so the model consumes normalised float32.
    ``params`` is the published trainable parameter count for 1000 classes (None for tiny variants);
    the tests pin the built models to it.
    """

    name: str
    image_size: int
    eval_resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    params: int | None
    description: str


def eval_resize_for(image_size: int) -> int:
    """The eval short side for a crop of ``image_size`` other than the model's own: the crop is 0.875 of the short
    side (224 of 256), never smaller than the crop. One rule for the run plan and callers without one."""
    return max(image_size, round(image_size / 0.875))


@dataclass(frozen=True)
class BuildOptions:
    """Resolved, validated build options handed to an architecture's ``build_model``.

    ``batch_norm`` and ``dropout`` are already resolved against the spec's defaults by the time an
    architecture sees them, so architectures never deal with ``None``.
    """

    num_classes: int
    image_size: int
    batch_norm: bool
    dropout: float
    bn_momentum: float
    bn_epsilon: float
    zero_init_residual: bool


def _catalogue() -> Mapping[str, tuple[Any, Callable[[Any, BuildOptions], tf.keras.Model]]]:
    """Name -> (spec, builder), merged from the architecture modules' spec tables.

    Imported here rather than at module level because the architecture modules import
    :class:`ModelInfo` from this module. The merge is rebuilt per call (it is a handful of entries)
    so that there is no module-level mutable state.
    """
    from imagenet_spark.models import alexnet, resnet

    table: dict[str, tuple[Any, Callable[[Any, BuildOptions], tf.keras.Model]]] = {}
    for module in (alexnet, resnet):
        for name, spec in module.SPECS.items():
            if name in table:  # pragma: no cover - guards against a copy-paste slip in a spec table.
                raise RuntimeError(f"model name {name!r} is declared twice")
            table[name] = (spec, module.build_model)
    return table


def available() -> tuple[str, ...]:
    """All registered model names, sorted (tiny test variants included)."""
    return tuple(sorted(_catalogue()))


def _lookup(name: str) -> tuple[Any, Callable[[Any, BuildOptions], tf.keras.Model]]:
    table = _catalogue()
    if not isinstance(name, str) or name not in table:
        raise UnknownModelError(name, sorted(table))
    return table[name]


def info(name: str) -> ModelInfo:
    """Input defaults and published size of ``name``; raises :class:`UnknownModelError`."""
    spec, _ = _lookup(name)
    return spec.info


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _resolve_options(
    name: str,
    spec: Any,
    *,
    num_classes: int,
    image_size: int | None,
    batch_norm: bool | None,
    dropout: float | None,
    bn_momentum: float,
    bn_epsilon: float,
    zero_init_residual: bool,
) -> BuildOptions:
    """Validate the generic options and fill ``None`` from the spec's own defaults.

    Architecture-specific constraints (minimum image size, whether BN may be switched off) are
    checked by the architecture's ``build_model``, which knows its own geometry.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ModelOptionError(name, "num_classes", num_classes, "must be a positive integer")
    if image_size is None:
        image_size = spec.info.image_size
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ModelOptionError(name, "image_size", image_size, "must be a positive integer (pixels)")
    if batch_norm is None:
        batch_norm = spec.batch_norm
    if not isinstance(batch_norm, bool):
        raise ModelOptionError(name, "batch_norm", batch_norm, "must be true, false or unset")
    if dropout is None:
        dropout = spec.dropout
    if not _is_number(dropout) or not 0.0 <= float(dropout) < 1.0:
        raise ModelOptionError(name, "dropout", dropout, "must be a rate in [0, 1)")
    if not _is_number(bn_momentum) or not 0.0 <= float(bn_momentum) < 1.0:
        raise ModelOptionError(name, "bn_momentum", bn_momentum, "must be in [0, 1); 0.9 is the usual value")
    if not _is_number(bn_epsilon) or not (float(bn_epsilon) > 0.0 and math.isfinite(float(bn_epsilon))):
        raise ModelOptionError(name, "bn_epsilon", bn_epsilon, "must be a positive number, e.g. 1e-5")
    if not isinstance(zero_init_residual, bool):
        raise ModelOptionError(name, "zero_init_residual", zero_init_residual, "must be true or false")
    return BuildOptions(
        num_classes=int(num_classes),
        image_size=int(image_size),
        batch_norm=batch_norm,
        dropout=float(dropout),
        bn_momentum=float(bn_momentum),
        bn_epsilon=float(bn_epsilon),
        zero_init_residual=zero_init_residual,
    )


@contextlib.contextmanager
def _policy_scope(name: str, dtype_policy: str | None) -> Iterator[None]:
    """Build under ``dtype_policy`` and put the caller's global policy back afterwards.

    Keras layers read the global policy when they are constructed, so a temporary switch is enough
    to build a mixed-precision model; restoring it keeps ``build`` free of lasting side effects.
    """
    if dtype_policy is None:
        yield
        return
    if dtype_policy not in DTYPE_POLICIES:
        raise ModelOptionError(
            name, "dtype_policy", dtype_policy, f"unknown policy; known: {', '.join(DTYPE_POLICIES)}"
        )
    import tensorflow as tf

    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(dtype_policy)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def build(
    name: str,
    *,
    num_classes: int,
    image_size: int | None = None,
    batch_norm: bool | None = None,
    dropout: float | None = None,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    zero_init_residual: bool = True,
    dtype_policy: str | None = None,
) -> tf.keras.Model:
    """Build an uncompiled ``tf.keras.Model`` mapping normalised float32 images to float32 logits.

    Input: ``(batch, image_size, image_size, 3)`` channels-last, already mean/std-normalised (see
    :func:`info`). Output: ``(batch, num_classes)`` logits, float32 even under a mixed policy, so the
    loss is computed in full precision. ``None`` for ``image_size``/``batch_norm``/``dropout`` means
    the model's own default. BN momentum defaults to 0.9 (Keras' 0.99 lags badly on small datasets
    and short runs). There is deliberately no weight-decay option: the optimizer applies decoupled
    decay to :func:`decay_variables`, so the model carries no kernel regularizers.
    """
    spec, builder = _lookup(name)
    options = _resolve_options(
        name,
        spec,
        num_classes=num_classes,
        image_size=image_size,
        batch_norm=batch_norm,
        dropout=dropout,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        zero_init_residual=zero_init_residual,
    )
    with _policy_scope(name, dtype_policy):
        model = builder(spec, options)
    log.info(
        "built %s: %d classes, %dpx input, %s trainable parameters, policy %s",
        name,
        options.num_classes,
        options.image_size,
        f"{count_trainable(model):,}",
        dtype_policy or "global",
    )
    return model


def _layer_tree(layer: Any) -> Iterator[Any]:
    """The layer and every layer nested inside it (nested models included), depth first."""
    yield layer
    for child in getattr(layer, "layers", ()):
        yield from _layer_tree(child)


#: Attribute names under which Keras layers keep their weight matrices (as opposed to biases and
#: normalisation scales/offsets, which are not decayed).
_KERNEL_ATTRIBUTES: tuple[str, ...] = ("kernel", "depthwise_kernel", "pointwise_kernel")


def decay_variables(model: tf.keras.Model) -> list:
    """The trainable variables that should receive weight decay: conv and dense kernels only.

    Why: decaying BN gammas/betas and biases hurts accuracy and is excluded by the standard ImageNet
    recipes (Goyal et al. 2017, "Bag of Tricks"). The optimizer applies decoupled or explicit L2 decay
    to exactly this list. Order follows ``model.trainable_variables`` so it is deterministic.
    """
    kernel_ids: set[int] = set()
    for layer in _layer_tree(model):
        if not getattr(layer, "trainable", True):
            continue
        for attribute in _KERNEL_ATTRIBUTES:
            variable = getattr(layer, attribute, None)
            if variable is not None and hasattr(variable, "trainable"):
                kernel_ids.add(id(variable))
    return [v for v in model.trainable_variables if id(v) in kernel_ids]


def count_trainable(model: tf.keras.Model) -> int:
    """Number of trainable scalars: what torchvision's published parameter counts measure.

    Keras BN layers also hold moving mean/variance (non-trainable, 2 per channel); torchvision keeps
    those as buffers, outside ``parameters()``, so only trainable weights are comparable.
    """
    return int(sum(math.prod(int(d) for d in v.shape) for v in model.trainable_variables))

