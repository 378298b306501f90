"""The serving signature's transform: an image of any format and size → what evaluation feeds the model.

Why a module of its own: evaluation reads the partition job's stored JPEGs, already resized; callers of an
exported model send originals (any size, JPEG, PNG, GIF or BMP). So serving first brings an image to the
dataset's pixels the way ``images.process_image`` did (:func:`to_dataset_pixels`), then applies exactly the eval
transform of ``data/augment.py`` (its centre window and its antialiased resize: train/serve parity,
tests/test_parity.py). Nothing here runs in the training or evaluation streams. TensorFlow is imported inside
the functions: the driver imports this package without loading TF.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imagenet_spark.data.augment import centre_crop_window, normalize, resize_eval_crop


def dataset_size(height: Any, width: Any, resize_short: int) -> tuple[Any, Any]:
    """``(height, width)`` after the partition job's resize (``images.target_size``): short side to
    ``resize_short``, never upscaled, long side ``round(long * resize_short / short)`` in float64 and rounded
    half to even, as Python's ``round`` does, so both give the same integer."""
    import tensorflow as tf

    short = tf.minimum(height, width)
    scale = tf.constant(float(resize_short), tf.float64) / tf.cast(short, tf.float64)

    def scaled(side: Any) -> Any:
        return tf.maximum(1, tf.cast(tf.round(tf.cast(side, tf.float64) * scale), tf.int32))

    keep = short <= resize_short
    out_h = tf.where(keep, height, tf.where(height <= width, resize_short, scaled(height)))
    out_w = tf.where(keep, width, tf.where(height <= width, scaled(width), resize_short))
    return out_h, out_w


def _draft_scale(height: Any, width: Any, out_h: Any, out_w: Any) -> Any:
    """The largest of 1, 2, 4, 8 that Pillow's JPEG draft mode decodes at for this target size: the image stays
    at least ``out_h x out_w`` (``min(w // out_w, h // out_h)`` rounded down to a power of two, at most 8)."""
    import tensorflow as tf

    room = tf.minimum(width // out_w, height // out_h)
    return tf.where(room >= 8, 8, tf.where(room >= 4, 4, tf.where(room >= 2, 2, 1)))


def to_dataset_pixels(image: Any, *, is_jpeg: Any, resize_short: int) -> Any:
    """A decoded image [H, W, 3] brought to what the partition job stores: short side ``resize_short`` the way
    ``images.process_image`` does it, then rounded to 8-bit levels as the stored JPEG holds them.

    The partition job decodes a JPEG in Pillow's draft mode (1/2, 1/4 or 1/8 scale in the DCT domain, which
    averages blocks: TensorFlow's ``area`` resize by the same power of two is its counterpart), then resizes
    with OpenCV: area averaging at 2x and more, bicubic below. Measured on the sklearn photographs and
    rescales of them (bench-style, against images.py at quality 100): this chain is 1.9 levels mean absolute
    error from the partition job's pixels, where the closest single ``tf.image.resize`` call (bicubic) is 2.5
    and the antialiased kernels 2.8-3.2 (they blur the 1.2-2x reductions the job does with plain bicubic).
    """
    import tensorflow as tf

    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    out_h, out_w = dataset_size(height, width, resize_short)
    pixels = tf.cast(image, tf.float32)

    def resized() -> Any:
        scale = tf.where(is_jpeg, _draft_scale(height, width, out_h, out_w), 1)
        drafted = tf.cond(scale > 1, lambda: tf.image.resize(pixels, [-(-height // scale), -(-width // scale)],
                                                             method="area"), lambda: pixels)
        factor = tf.cast(tf.shape(drafted)[1], tf.float32) / tf.cast(out_w, tf.float32)
        out = tf.cond(factor >= 2.0, lambda: tf.image.resize(drafted, [out_h, out_w], method="area"),
                      lambda: tf.image.resize(drafted, [out_h, out_w], method="bicubic"))
        return tf.round(tf.clip_by_value(out, 0.0, 255.0))

    return tf.cond(tf.logical_and(tf.equal(out_h, height), tf.equal(out_w, width)), lambda: pixels, resized)


def preprocess_any(image_bytes: Any, *, image_size: int, eval_resize: int, mean: Sequence[float],
                   std: Sequence[float], resize_short: int | None = None) -> Any:
    """The eval transform for images of any format Pillow-free TF decodes (JPEG, PNG, GIF, BMP): what the
    serving signature uses, since callers send whatever they have.

    ``resize_short``: the short side of the dataset the model was trained and evaluated on (its manifest's
    ``resize_short``). The image is first brought to that size the way the partition job did
    (:func:`to_dataset_pixels`), then given exactly ``augment.preprocess_eval``'s crop and resize. Why: without
    it, a 640x427 photo went from a 374 px crop to 64 px in one step, where evaluation saw the job's
    256 px image first; that difference cost 0.03 top-1 through the signature. None: the dataset kept the
    original sizes (``resize_short: none``), so nothing comes before the crop.
    """
    import tensorflow as tf

    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, 3), b"\xff\xd8\xff")
    # JPEGs with the accurate integer DCT, as preprocess_eval decodes the stored ones: decode_image's default
    # (the fast DCT) alone put 1.3 levels of mean absolute error between the two paths on identical bytes.
    image = tf.cond(is_jpeg, lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
    image = tf.ensure_shape(image, [None, None, 3])
    if resize_short is not None:
        image = to_dataset_pixels(image, is_jpeg=is_jpeg, resize_short=resize_short)
    shape = tf.shape(image)
    window = centre_crop_window(shape[0], shape[1], image_size=image_size, eval_resize=eval_resize)
    image = tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])
    return normalize(resize_eval_crop(image, image_size=image_size), mean, std)
