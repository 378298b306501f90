"""RandAugment (Cubuk et al. 2020, "RandAugment: Practical automated data augmentation with a reduced search
space") as TensorFlow graph ops on one uint8 image, for the training map.

Why this shape: the policy is two numbers (``layers`` N ops per image, each drawn uniformly from :data:`OPS`, all
at one ``magnitude`` M), which is what makes it a setting rather than a searched policy. Everything runs inside
the tf.data map: no Python per image, no ``tf.py_function``, no tensorflow_addons (not installed, and dead on
TF >= 2.16); the geometric ops use ``ImageProjectiveTransformV3``, present in TF 2.15 and 2.21 alike. Every
random choice is a stateless op keyed by the element's seed, so a run is reproducible under its seed.

Magnitude scale: 0..10, where 10 is the end of each op's range in AutoAugment's table (Cubuk et al. 2019), the
scale RandAugment's ImageNet ResNet-50 result (N=2, M=9) is quoted on: rotate up to 30 degrees, shear up to
0.3, translate up to 45% of the side (150 of 331 px), colour/contrast/brightness/sharpness factors 1 +- 0.9,
solarize threshold 256 down to 0, posterize down to 4 bits. Signed ops pick their sign at random. Pixels a
geometric op moves in from outside the image are mid-grey (128), as in the reference implementation.

TensorFlow is imported inside the functions: the driver imports this package without loading TF.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# The op subset, in the order the op index draws them. "equalize" is histogram equalisation per channel
# (PIL's ImageOps.equalize rule), cheap here: one 256-bin count per channel.
OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "posterize", "color", "contrast",
       "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
MAX_MAGNITUDE = 10.0
MAX_LAYERS = 10
_FILL = 128.0
_MAX_ROTATE_DEG = 30.0
_MAX_SHEAR = 0.3
_MAX_TRANSLATE = 0.45
_MAX_ENHANCE = 0.9


def _quantize(image: Any) -> Any:
    """float [0, 255] → uint8, rounded: every op returns what a uint8 image can hold."""
    import tensorflow as tf

    return tf.saturate_cast(tf.round(image), tf.uint8)


def _blend(degenerate: Any, image: Any, factor: Any) -> Any:
    """PIL ImageEnhance's rule: ``degenerate + factor * (image - degenerate)``; factor 1 is the identity."""
    return degenerate + factor * (image - degenerate)


def _grey(image: Any) -> Any:
    import tensorflow as tf

    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def _sharpness_degenerate(image: Any) -> Any:
    """PIL's SMOOTH filter (3x3, centre weight 5, total 13) inside, the original one-pixel border (as PIL)."""
    import tensorflow as tf

    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, strides=[1, 1, 1, 1], padding="VALID")[0]
    mask = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
    return tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]) * mask + image * (1.0 - mask)


def _autocontrast(image: Any) -> Any:
    """Stretch each channel's [min, max] to [0, 255]; a flat channel is left as it is."""
    import tensorflow as tf

    # Reduced as [3, H*W]: TF's CPU reduction over the leading axes with 3 innermost runs ~4x slower.
    channels = tf.transpose(tf.reshape(image, [-1, 3]))
    lo = tf.reduce_min(channels, axis=1)
    hi = tf.reduce_max(channels, axis=1)
    span = hi - lo
    stretched = (image - lo) * (255.0 / tf.maximum(span, 1.0))
    return tf.where(span > 0, stretched, image)


def _equalize_channel(channel: Any) -> Any:
    """PIL's equalize on one uint8-valued channel: lut = (cumsum + step // 2) // step, shifted by one bin, where
    step = (pixels - count of the last used level) // 255; step 0 (one level, or nearly) leaves it unchanged."""
    import tensorflow as tf

    values = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
    last_used = tf.reduce_max(tf.where(hist > 0)[:, 0])
    step = (tf.reduce_sum(hist) - tf.gather(hist, last_used)) // 255
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(hist) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], axis=0), 0, 255)
    equalized = tf.cast(tf.gather(lut, values), tf.float32)
    return tf.where(step > 0, equalized, channel)


def _equalize(image: Any) -> Any:
    import tensorflow as tf

    return tf.stack([_equalize_channel(image[:, :, c]) for c in range(3)], axis=-1)


def _transform(image: Any, matrix: Any) -> Any:
    """Apply the projective transform ``matrix`` (8 floats, output pixel → input pixel) with a grey fill.

    Nearest-neighbour sampling, as the reference implementation (PIL's ``rotate``/``transform`` defaults):
    measured here 1.6x faster than bilinear at 224 px, and the op's cost dominates RandAugment's."""
    import tensorflow as tf

    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.reshape(tf.cast(matrix, tf.float32), [1, 8]),
        output_shape=shape[:2], fill_value=_FILL, interpolation="NEAREST", fill_mode="CONSTANT")
    return out[0]


def _centre(image: Any) -> tuple[Any, Any, Any, Any]:
    """(cx, cy, width, height) of the image as float32 scalars."""
    import tensorflow as tf

    shape = tf.cast(tf.shape(image), tf.float32)
    return (shape[1] - 1.0) / 2.0, (shape[0] - 1.0) / 2.0, shape[1], shape[0]


def _rotate(image: Any, level: Any, sign: Any) -> Any:
    import tensorflow as tf

    angle = sign * level * (_MAX_ROTATE_DEG * math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy, _, _ = _centre(image)
    return _transform(image, [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])


def _shear(image: Any, level: Any, sign: Any, *, axis: str) -> Any:
    """Shear about the centre (the content stays in view): x_in = x + s (y - cy), or the same for y."""
    s = sign * level * _MAX_SHEAR
    cx, cy, _, _ = _centre(image)
    if axis == "x":
        return _transform(image, [1.0, s, -s * cy, 0.0, 1.0, 0.0, 0.0, 0.0])
    return _transform(image, [1.0, 0.0, 0.0, s, 1.0, -s * cx, 0.0, 0.0])


def _translate(image: Any, level: Any, sign: Any, *, axis: str) -> Any:
    _, _, width, height = _centre(image)
    if axis == "x":
        return _transform(image, [1.0, 0.0, -sign * level * _MAX_TRANSLATE * width, 0.0, 1.0, 0.0, 0.0, 0.0])
    return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, -sign * level * _MAX_TRANSLATE * height, 0.0, 0.0])


def _solarize(image: Any, level: Any) -> Any:
    import tensorflow as tf

    threshold = 256.0 - level * 256.0
    return tf.where(image >= threshold, 255.0 - image, image)


def _posterize(image: Any, level: Any) -> Any:
    """Keep the top ``8 - round(4 level)`` bits of each value (8 bits at level 0, 4 at level 1)."""
    import tensorflow as tf

    shift = tf.cast(tf.round(level * 4.0), tf.int32)
    values = tf.cast(image, tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(values, shift), shift), tf.float32)


def _enhance(kind: str) -> Callable[[Any, Any, Any], Any]:
    """PIL ImageEnhance's Color / Contrast / Brightness / Sharpness at factor ``1 +- 0.9 level``."""
    import tensorflow as tf

    def op(image: Any, level: Any, sign: Any) -> Any:
        factor = 1.0 + sign * level * _MAX_ENHANCE
        if kind == "color":
            degenerate = _grey(image)
        elif kind == "contrast":
            degenerate = tf.fill(tf.shape(image), tf.reduce_mean(tf.round(tf.image.rgb_to_grayscale(image))))
        elif kind == "brightness":
            degenerate = tf.zeros_like(image)
        else:
            degenerate = _sharpness_degenerate(image)
        return _blend(degenerate, image, factor)

    return op


def _op_table() -> list[Callable[[Any, Any, Any], Any]]:
    """One function per name in :data:`OPS`, each ``(float image [0, 255], level in [0, 1], sign +-1) → float``."""
    table: dict[str, Callable[[Any, Any, Any], Any]] = {
        "identity": lambda image, level, sign: image,
        "autocontrast": lambda image, level, sign: _autocontrast(image),
        "equalize": lambda image, level, sign: _equalize(image),
        "rotate": _rotate,
        "solarize": lambda image, level, sign: _solarize(image, level),
        "posterize": lambda image, level, sign: _posterize(image, level),
        "color": _enhance("color"),
        "contrast": _enhance("contrast"),
        "brightness": _enhance("brightness"),
        "sharpness": _enhance("sharpness"),
        "shear_x": lambda image, level, sign: _shear(image, level, sign, axis="x"),
        "shear_y": lambda image, level, sign: _shear(image, level, sign, axis="y"),
        "translate_x": lambda image, level, sign: _translate(image, level, sign, axis="x"),
        "translate_y": lambda image, level, sign: _translate(image, level, sign, axis="y"),
    }
    return [table[name] for name in OPS]


def apply_op(image: Any, name: str, *, magnitude: float, sign: float = 1.0) -> Any:
    """One named op on a uint8 [H, W, 3] image at ``magnitude`` (0..10): for tests and for looking at what each
    op does; the training map uses :func:`randaugment`."""
    import tensorflow as tf

    op = _op_table()[OPS.index(name)]
    level = tf.constant(magnitude / MAX_MAGNITUDE, tf.float32)
    return _quantize(op(tf.cast(image, tf.float32), level, tf.constant(sign, tf.float32)))


def randaugment(image: Any, *, layers: int, magnitude: float, seed: Any) -> Any:
    """``layers`` ops drawn uniformly from :data:`OPS` (with replacement), each at ``magnitude`` with a random
    sign, applied in turn to ``image`` (uint8 [H, W, 3]) → uint8 [H, W, 3] of the same shape.

    ``seed``: a shape-[2] integer tensor; the op choices and signs are stateless functions of it (split into
    one seed per draw), so the same seed gives the same image.
    """
    import tensorflow as tf

    if layers <= 0:
        return image
    static_shape = image.shape
    draws = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2 * layers)
    level = tf.constant(magnitude / MAX_MAGNITUDE, tf.float32)
    ops = _op_table()
    for layer in range(layers):
        index = tf.random.stateless_uniform([], seed=draws[2 * layer], minval=0, maxval=len(ops), dtype=tf.int32)
        sign = tf.where(tf.random.stateless_uniform([], seed=draws[2 * layer + 1]) < 0.5, -1.0, 1.0)
        current = tf.cast(image, tf.float32)
        branches = [(lambda op=op, current=current, sign=sign: _quantize(op(current, level, sign))) for op in ops]
        image = tf.ensure_shape(tf.switch_case(index, branches), static_shape)
    return image
