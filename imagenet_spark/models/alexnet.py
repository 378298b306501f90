"""AlexNet (Krizhevsky et al. 2012), single-tower, as in torchvision, described as a spec table.

The network is a table of conv rows (filters, kernel, stride, padding, max pool after?) followed by
a feature grid and dense widths. torchvision's layout at 224 px: 64@11x11/4 (pad 2) -> pool 3/2 ->
192@5x5 (pad 2) -> pool -> 384@3x3 -> 256@3x3 -> 256@3x3 -> pool 3/2 -> 6x6x256 = 9216 features ->
dropout, dense 4096, ReLU -> dropout, dense 4096, ReLU -> dense logits.

Other input sizes: torchvision puts an ``AdaptiveAvgPool2d(6)`` before the classifier so the dense
weights do not depend on the image size. Keras has no adaptive pool, so we build one from two stock
layers (keeping saved models free of custom objects): for a feature map of side ``s`` and grid
``g``, nearest-upsample by ``g / gcd(s, g)`` and average-pool by ``s / gcd(s, g)``. That is exactly
area-weighted adaptive average pooling; it equals torchvision's when one of ``s``, ``g`` divides the
other (at 224 px ``s == g`` and both layers are skipped), and otherwise differs only in that
torchvision rounds bin edges to whole pixels. The classifier therefore always sees ``g*g*C``
features and the parameter count is the same at every image size. (The upsampled map is at most
``grid`` times wider than the feature map, e.g. 78x78 for a 13x13 map; negligible next to conv1.)

``batch_norm=True`` inserts BN between each conv and its ReLU (convs then drop their bias).

TensorFlow is imported inside :func:`build_model` only; importing this module is free.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from imagenet_spark.models.registry import IMAGENET_MEAN, IMAGENET_STD, BuildOptions, ModelInfo, ModelOptionError

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

log = logging.getLogger(__name__)

#: Max pooling used after the conv rows that ask for it (overlapping 3x3/2, as in the paper).
POOL_SIZE = 3
POOL_STRIDE = 2


@dataclass(frozen=True)
class ConvRow:
    """One conv layer: ``filters`` @ ``kernel`` x ``kernel`` / ``stride``, zero ``padding`` each side,
    followed by ReLU and, if ``pool``, a 3x3/2 max pool."""

    filters: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: bool = False


@dataclass(frozen=True)
class AlexNetSpec:
    """One row of the AlexNet table: conv rows, the pooled feature grid side, hidden dense widths.

    ``batch_norm``/``dropout`` are the defaults ``build`` falls back on.
    """

    info: ModelInfo
    convs: tuple[ConvRow, ...]
    grid: int
    dense: tuple[int, ...]
    batch_norm: bool = False
    dropout: float = 0.5


SPECS: Mapping[str, AlexNetSpec] = MappingProxyType(
    {
        "alexnet": AlexNetSpec(
            info=ModelInfo(
                name="alexnet",
                image_size=224,
                eval_resize=256,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                params=61_100_840,  # torchvision alexnet, 1000 classes
                description="AlexNet (2012), single tower as in torchvision; 6x6x256 features, 2x4096 dense",
            ),
            convs=(
                ConvRow(64, 11, stride=4, padding=2, pool=True),
                ConvRow(192, 5, padding=2, pool=True),
                ConvRow(384, 3, padding=1),
                ConvRow(256, 3, padding=1),
                ConvRow(256, 3, padding=1, pool=True),
            ),
            grid=6,
            dense=(4096, 4096),
        ),
        # Test variant: same five-conv/three-pool/two-dense shape, 32 px (-> 3x3 feature grid).
        "alexnet_tiny": AlexNetSpec(
            info=ModelInfo(
                name="alexnet_tiny",
                image_size=32,
                eval_resize=36,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                params=None,
                description="test variant: 5 convs 16-48 wide, 3x3x32 features, 2x64 dense, 32 px",
            ),
            convs=(
                ConvRow(16, 5, padding=2, pool=True),
                ConvRow(32, 3, padding=1, pool=True),
                ConvRow(48, 3, padding=1),
                ConvRow(48, 3, padding=1),
                ConvRow(32, 3, padding=1, pool=True),
            ),
            grid=3,
            dense=(64, 64),
        ),
    }
)


def feature_side(spec: AlexNetSpec, image_size: int) -> int | None:
    """Side of the last conv/pool feature map for ``image_size`` px input, or None if it vanishes.

    Pure arithmetic (the same floor rules as Keras' ``valid`` convs and pools), so the size check
    and the pooling plan are known before any layer is built.
    """
    side = image_size
    for row in spec.convs:
        side = (side + 2 * row.padding - row.kernel) // row.stride + 1
        if side < 1:
            return None
        if row.pool:
            if side < POOL_SIZE:
                return None
            side = (side - POOL_SIZE) // POOL_STRIDE + 1
    return side


def min_image_size(spec: AlexNetSpec) -> int:
    """Smallest input side for which the conv stack leaves at least a 1x1 feature map."""
    size = 1
    while feature_side(spec, size) is None:
        size += 1
    return size


def adaptive_pool_plan(side: int, grid: int) -> tuple[int, int]:
    """(upsampling factor, pool size) turning a ``side`` x ``side`` map into ``grid`` x ``grid``.

    Upsampling by ``grid/g`` then average pooling by ``side/g`` (``g = gcd``) is exact area-weighted
    adaptive average pooling; (1, 1) means the map is already ``grid`` wide.
    """
    common = math.gcd(side, grid)
    return grid // common, side // common


def build_model(spec: AlexNetSpec, options: BuildOptions) -> tf.keras.Model:
    """Build the network described by ``spec``; layer names are ``conv{n}``, ``bn{n}``, ``pool{n}``, ``fc{n}``."""
    name = spec.info.name
    side = feature_side(spec, options.image_size)
    if side is None:
        raise ModelOptionError(
            name,
            "image_size",
            options.image_size,
            f"too small for the conv stack; the smallest usable size is {min_image_size(spec)} "
            f"(default {spec.info.image_size})",
        )
    import tensorflow as tf

    layers = tf.keras.layers

    # Fresh initialiser instances per layer: Keras 2 repeats the values of an unseeded initializer
    # instance that is called twice. Biases start at zero.
    def init() -> tf.keras.initializers.Initializer:
        """He et al. 2015 (fan_in, normal) for convs and hidden dense layers.

        Why not torchvision's default U(+-1/sqrt(fan_in)): without BN its variance shrinks ~6x per
        ReLU layer, so after eight layers the signal (and gradient) nearly vanishes and the net
        barely trains unless the learning rate is tuned around it. He init keeps it at unit scale.
        """
        return tf.keras.initializers.VarianceScaling(scale=2.0, mode="fan_in", distribution="untruncated_normal")

    def logits_init() -> tf.keras.initializers.Initializer:
        """Small logits at init, so the initial loss is ~log(num_classes)."""
        return tf.keras.initializers.RandomNormal(stddev=0.01)

    inputs = layers.Input(shape=(options.image_size, options.image_size, 3), dtype="float32", name="images")
    x = inputs
    pools = 0
    for index, row in enumerate(spec.convs, start=1):
        if row.padding:
            x = layers.ZeroPadding2D(row.padding, name=f"conv{index}_pad")(x)
        x = layers.Conv2D(
            row.filters,
            row.kernel,
            strides=row.stride,
            padding="valid",
            use_bias=not options.batch_norm,  # BN's beta replaces the bias
            kernel_initializer=init(),
            name=f"conv{index}",
        )(x)
        if options.batch_norm:
            x = layers.BatchNormalization(
                axis=-1, momentum=options.bn_momentum, epsilon=options.bn_epsilon, name=f"bn{index}"
            )(x)
        x = layers.ReLU(name=f"relu{index}")(x)
        if row.pool:
            pools += 1
            x = layers.MaxPooling2D(POOL_SIZE, strides=POOL_STRIDE, padding="valid", name=f"pool{pools}")(x)

    upsample, pool = adaptive_pool_plan(side, spec.grid)
    if upsample > 1:
        x = layers.UpSampling2D(upsample, interpolation="nearest", name="grid_upsample")(x)
    if pool > 1:
        x = layers.AveragePooling2D(pool, strides=pool, padding="valid", name="grid_pool")(x)
    if (upsample, pool) != (1, 1):
        log.info(
            "%s at %dpx: %dx%d feature map pooled to %dx%d (upsample x%d, average pool %d)",
            name, options.image_size, side, side, spec.grid, spec.grid, upsample, pool,
        )
    x = layers.Flatten(name="flatten")(x)

    for index, width in enumerate(spec.dense, start=1):
        if options.dropout > 0.0:
            x = layers.Dropout(options.dropout, name=f"dropout{index}")(x)
        x = layers.Dense(width, kernel_initializer=init(), name=f"fc{index}")(x)
        x = layers.ReLU(name=f"fc{index}_relu")(x)
    # float32 logits even under a mixed policy: softmax/cross-entropy must not run in float16.
    logits = layers.Dense(options.num_classes, kernel_initializer=logits_init(), dtype="float32", name="logits")(x)
    return tf.keras.Model(inputs, logits, name=name)
