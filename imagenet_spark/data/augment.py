"""ImageNet preprocessing in TensorFlow: the standard train and eval transforms, on encoded JPEG bytes.

Why on bytes and in TF: decoding is the most expensive step of the input pipeline, and
``tf.image.decode_and_crop_jpeg`` decodes only the crop window, which for the random-resized crop of
training is on average a fraction of the image. Everything here runs inside tf.data map functions (and,
for eval, inside the exported serving signature), so it parallelises across cores and never holds the GIL.

Train: Inception-style random-resized crop (area 8%-100%, aspect 3/4-4/3), resize to ``image_size``,
random horizontal flip. Eval: resize the short side to ``eval_resize`` and take the centre
``image_size`` crop (224 of 256), done as one centre decode-and-crop plus one resize.
Both end with per-channel normalisation by the model's mean/std.

TensorFlow is imported inside the functions: the driver imports this package without loading TF.
"""

from __future__ import annotations

from typing import Any, Sequence

AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)


def normalize(image: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``(x - mean) / std`` as ``x * scale + offset`` with full-size constants when the shape is static.

    Why: broadcasting over an innermost dimension of 3 is slow in TensorFlow's CPU kernels; this form measured
    ~1.5x faster for the whole train transform (bench/input_pipeline.py), and input pipelines run on CPU.
    """
    import numpy as np
    import tensorflow as tf

    image = tf.cast(image, tf.float32)
    std_arr = np.asarray(std, np.float32)
    scale = 1.0 / std_arr
    offset = -np.asarray(mean, np.float32) / std_arr
    if image.shape.is_fully_defined():
        shape = image.shape.as_list()
        return image * tf.constant(np.broadcast_to(scale, shape)) + tf.constant(np.broadcast_to(offset, shape))
    return image * tf.constant(scale) + tf.constant(offset)


def random_crop_window(image_bytes: Any, seed: Any = None) -> Any:
    """[y, x, h, w] of an Inception-style random crop, from the JPEG header alone; whole image as fallback."""
    import tensorflow as tf

    shape = tf.image.extract_jpeg_shape(image_bytes)
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    kwargs: dict[str, Any] = dict(
        bounding_boxes=bbox,
        min_object_covered=0.1,
        aspect_ratio_range=ASPECT_RANGE,
        area_range=AREA_RANGE,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    if seed is not None:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(shape, seed=seed, **kwargs)
    else:
        begin, size, _ = tf.image.sample_distorted_bounding_box(shape, **kwargs)
    y, x, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(size)
    return tf.stack([y, x, h, w])


def preprocess_train(image_bytes: Any, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                     seed: Any = None) -> Any:
    """Random-resized crop (decoding only the crop) + flip + normalise → float32 [S, S, 3].

    ``seed`` (a shape-[2] int tensor) makes the crop and flip reproducible (stateless ops); None uses TF's
    global seed state.
    """
    import tensorflow as tf

    crop_seed = flip_seed = None
    if seed is not None:
        crop_seed = seed
        flip_seed = tf.stack([seed[0], seed[1] + 1])
    window = random_crop_window(image_bytes, crop_seed)
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method="INTEGER_FAST")
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    if flip_seed is not None:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    else:
        image = tf.image.random_flip_left_right(image)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return normalize(image, mean, std)


def centre_crop_window(height: Any, width: Any, *, image_size: int, eval_resize: int) -> Any:
    """The window of the original image that becomes the centre ``image_size`` crop after resizing the short
    side to ``eval_resize``: a square of side ``short * image_size / eval_resize``."""
    import tensorflow as tf

    short = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.cast(tf.round(short * image_size / eval_resize), tf.int32)
    side = tf.maximum(side, 1)
    y = (height - side) // 2
    x = (width - side) // 2
    return tf.stack([y, x, side, side])


def preprocess_eval(image_bytes: Any, *, image_size: int, eval_resize: int, mean: Sequence[float],
                    std: Sequence[float]) -> Any:
    """Resize short side to ``eval_resize``, centre crop ``image_size``, normalise → float32 [S, S, 3].

    JPEG only (the dataset guarantees it); decodes only the centre window."""
    import tensorflow as tf

    shape = tf.image.extract_jpeg_shape(image_bytes)
    window = centre_crop_window(shape[0], shape[1], image_size=image_size, eval_resize=eval_resize)
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method="INTEGER_ACCURATE")
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return normalize(image, mean, std)


def preprocess_any(image_bytes: Any, *, image_size: int, eval_resize: int, mean: Sequence[float],
                   std: Sequence[float]) -> Any:
    """The eval transform for images of any format Pillow-free TF decodes (JPEG, PNG, GIF, BMP): what the
    serving signature uses, since callers send whatever they have."""
    import tensorflow as tf

    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    shape = tf.shape(image)
    window = centre_crop_window(shape[0], shape[1], image_size=image_size, eval_resize=eval_resize)
    image = tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return normalize(image, mean, std)
