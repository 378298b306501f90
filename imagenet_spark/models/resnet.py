"""ResNet v1.5 (He et al. 2016, with torchvision's / tf-models' stride placement) as a spec table.

"v1.5": in a bottleneck block the stride-2 downsampling sits in the 3x3 conv, not in the first 1x1
(as in the original v1). It costs a little more compute and gives ~0.5% top-1 over v1; it is what
torchvision's ``resnet50`` and the MLPerf reference train, so published accuracies are comparable.

Layout (torchvision naming in brackets): 7x7/2 stem conv + BN + ReLU + 3x3/2 max pool; four stages
[layer1..layer4] of basic (18/34) or bottleneck (50/101/152) blocks, the first block of stages 2-4
striding by 2; a projection shortcut (1x1 conv + BN) wherever the shape changes; global average pool;
dense logits. Convs carry no bias (BN follows each). Padding is explicit and symmetric so feature
maps line up pixel for pixel with torchvision's (Keras' ``same`` pads stride-2 convs asymmetrically).

TensorFlow is imported inside :func:`build_model` only; importing this module is free.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from imagenet_spark.models.registry import IMAGENET_MEAN, IMAGENET_STD, BuildOptions, ModelInfo, ModelOptionError

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

log = logging.getLogger(__name__)

BlockKind = Literal["basic", "bottleneck"]

#: Output channels of a block relative to its inner width.
EXPANSION: Mapping[str, int] = MappingProxyType({"basic": 1, "bottleneck": 4})


@dataclass(frozen=True)
class ResNetSpec:
    """One row of the ResNet table.

    ``widths`` are the inner widths of the four stages (a bottleneck's output is 4x its width);
    ``stem_width`` the channels of the 7x7 stem conv. ``batch_norm``/``dropout`` are the defaults
    ``build`` falls back on; ResNet is only defined with batch norm.
    """

    info: ModelInfo
    block: BlockKind
    blocks: tuple[int, int, int, int]
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_width: int = 64
    batch_norm: bool = True
    dropout: float = 0.0


#: Input defaults of the test variants: 32 px crops from a 36 px short side (the 0.875 ratio of 224/256).
_TINY_INPUT: Mapping[str, int] = MappingProxyType({"image_size": 32, "eval_resize": 36})


def _info(
    name: str, params: int | None, description: str, *, image_size: int = 224, eval_resize: int = 256
) -> ModelInfo:
    return ModelInfo(
        name=name,
        image_size=image_size,
        eval_resize=eval_resize,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        params=params,
        description=description,
    )


#: The ResNet family. Parameter counts are torchvision's (1000 classes), pinned by the tests.
SPECS: Mapping[str, ResNetSpec] = MappingProxyType(
    {
        "resnet18": ResNetSpec(
            _info("resnet18", 11_689_512, "ResNet-18 v1.5: basic blocks 2-2-2-2"), "basic", (2, 2, 2, 2)
        ),
        "resnet34": ResNetSpec(
            _info("resnet34", 21_797_672, "ResNet-34 v1.5: basic blocks 3-4-6-3"), "basic", (3, 4, 6, 3)
        ),
        "resnet50": ResNetSpec(
            _info("resnet50", 25_557_032, "ResNet-50 v1.5: bottleneck blocks 3-4-6-3"), "bottleneck", (3, 4, 6, 3)
        ),
        "resnet101": ResNetSpec(
            _info("resnet101", 44_549_160, "ResNet-101 v1.5: bottleneck blocks 3-4-23-3"),
            "bottleneck",
            (3, 4, 23, 3),
        ),
        "resnet152": ResNetSpec(
            _info("resnet152", 60_192_808, "ResNet-152 v1.5: bottleneck blocks 3-8-36-3"),
            "bottleneck",
            (3, 8, 36, 3),
        ),
        # Test variants: same code path (stem, max pool, 4 stages, projections), 32 px, tens of
        # thousands of parameters, so CPU tests can build, run and overfit them in seconds.
        "resnet_tiny": ResNetSpec(
            _info("resnet_tiny", None, "test variant: basic blocks 1-1-1-1, widths 8-64, 32 px", **_TINY_INPUT),
            "basic",
            (1, 1, 1, 1),
            widths=(8, 16, 32, 64),
            stem_width=8,
        ),
        "resnet50_tiny": ResNetSpec(
            _info("resnet50_tiny", None, "test variant: bottleneck blocks 1-1-1-1, widths 4-32, 32 px", **_TINY_INPUT),
            "bottleneck",
            (1, 1, 1, 1),
            widths=(4, 8, 16, 32),
            stem_width=8,
        ),
    }
)


class _Layers:
    """Layer factories closed over one build's options (TensorFlow is imported by the caller).

    Keeps initialisers and BN settings in one place so every conv/BN in the network agrees.
    """

    def __init__(self, tf: Any, options: BuildOptions) -> None:
        self.layers = tf.keras.layers
        self.initializers = tf.keras.initializers
        self.options = options

    # Initialisers are created per layer: Keras 2 returns the SAME values from an unseeded
    # initializer instance that is called twice, which would give equally shaped layers equal weights.
    def conv_init(self) -> Any:
        """He et al. 2015 init, fan_out, as torchvision does for ResNet convs (kaiming_normal_)."""
        return self.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")

    def dense_init(self) -> Any:
        """Small logits at init, so the initial loss is ~log(num_classes) (the tf-models / Caffe choice)."""
        return self.initializers.RandomNormal(stddev=0.01)

    def conv(self, x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
        """Conv without bias; symmetric explicit padding for strided convs (torchvision alignment)."""
        padding = "same"
        if kernel == 1:
            padding = "valid"
        elif stride > 1:
            x = self.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
            padding = "valid"
        return self.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding=padding,
            use_bias=False,
            kernel_initializer=self.conv_init(),
            name=name,
        )(x)

    def bn(self, x: Any, name: str, *, zero_gamma: bool = False) -> Any:
        return self.layers.BatchNormalization(
            axis=-1,
            momentum=self.options.bn_momentum,
            epsilon=self.options.bn_epsilon,
            gamma_initializer="zeros" if zero_gamma else "ones",
            name=name,
        )(x)

    def relu(self, x: Any, name: str) -> Any:
        return self.layers.ReLU(name=name)(x)


def _block(f: _Layers, x: Any, *, kind: BlockKind, width: int, stride: int, name: str) -> Any:
    """One residual block; the last BN's gamma starts at zero when ``zero_init_residual``.

    Zero-initialising the residual branch's last scale makes every block start as the identity
    (Goyal et al. 2017), which stabilises the first epochs of large-batch training.
    """
    out_channels = width * EXPANSION[kind]
    zero = f.options.zero_init_residual
    shortcut = x
    if stride != 1 or int(x.shape[-1]) != out_channels:
        shortcut = f.conv(x, out_channels, 1, stride, f"{name}_proj_conv")
        shortcut = f.bn(shortcut, f"{name}_proj_bn")
    if kind == "basic":
        y = f.relu(f.bn(f.conv(x, width, 3, stride, f"{name}_conv1"), f"{name}_bn1"), f"{name}_relu1")
        y = f.bn(f.conv(y, width, 3, 1, f"{name}_conv2"), f"{name}_bn2", zero_gamma=zero)
    else:
        y = f.relu(f.bn(f.conv(x, width, 1, 1, f"{name}_conv1"), f"{name}_bn1"), f"{name}_relu1")
        # v1.5: the stride lives here, in the 3x3, not in conv1.
        y = f.relu(f.bn(f.conv(y, width, 3, stride, f"{name}_conv2"), f"{name}_bn2"), f"{name}_relu2")
        y = f.bn(f.conv(y, out_channels, 1, 1, f"{name}_conv3"), f"{name}_bn3", zero_gamma=zero)
    y = f.layers.Add(name=f"{name}_add")([shortcut, y])
    return f.relu(y, f"{name}_out")


def build_model(spec: ResNetSpec, options: BuildOptions) -> tf.keras.Model:
    """Build the network described by ``spec``; layer names follow ``stage{1-4}_block{n}_{conv,bn}{k}``."""
    name = spec.info.name
    if not options.batch_norm:
        raise ModelOptionError(
            name, "batch_norm", options.batch_norm, "ResNet is only defined with batch norm; leave it unset or true"
        )
    import tensorflow as tf

    f = _Layers(tf, options)
    layers = f.layers
    inputs = layers.Input(shape=(options.image_size, options.image_size, 3), dtype="float32", name="images")
    x = f.conv(inputs, spec.stem_width, 7, 2, "stem_conv")
    x = f.relu(f.bn(x, "stem_bn"), "stem_relu")
    # Zero padding is equivalent to -inf padding here because the input is post-ReLU (>= 0).
    x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="stem_pool")(x)
    for stage, (width, count) in enumerate(zip(spec.widths, spec.blocks), start=1):
        for index in range(1, count + 1):
            stride = 2 if stage > 1 and index == 1 else 1
            x = _block(f, x, kind=spec.block, width=width, stride=stride, name=f"stage{stage}_block{index}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if options.dropout > 0.0:
        x = layers.Dropout(options.dropout, name="dropout")(x)
    # float32 logits even under a mixed policy: softmax/cross-entropy must not run in float16.
    logits = layers.Dense(
        options.num_classes, kernel_initializer=f.dense_init(), dtype="float32", name="logits"
    )(x)
    log.debug("resnet %s: final feature map %s", name, x.shape)
    return tf.keras.Model(inputs, logits, name=name)
