"""ImageNet preprocessing in TensorFlow: the standard train and eval transforms, on encoded JPEG bytes.

Why on bytes and in TF: decoding is the most expensive step of the input pipeline, and
``tf.image.decode_and_crop_jpeg`` decodes only the crop window, which for the random-resized crop of
training is on average a fraction of the image. Everything here runs inside tf.data map functions (and,
for eval, inside the exported serving signature), so it parallelises across cores and never holds the GIL.

Train: what an :class:`AugmentSpec` says, resolved on the driver from the config (:func:`augment_spec`); the
default preset, ``imagenet``, is the Inception-style random-resized crop (area 8%-100%, aspect 3/4-4/3;
Szegedy et al. 2015) resized to ``image_size`` and a horizontal flip; RandAugment (``randaugment.py``) can
follow on the uint8 crop; ``none`` is the eval transform. Eval: resize the short side to ``eval_resize`` and
take the centre ``image_size`` crop (224 of 256), done as one centre decode-and-crop plus one antialiased resize.
The serving signature first brings an original image to the dataset's size as the partition job did, then
applies the same eval transform (``data/serving_transform.py``; train/serve parity: tests/test_parity.py).

Output: the training and evaluation streams take uint8 crops (:func:`augment_train`, :func:`crop_eval`) and the
steps normalise them on the device with :func:`normalize` (issue #13: the CPUs skip the cast and the float
passes, tf.data moves a quarter of the bytes); the serving signature and float consumers take
:func:`preprocess_eval` / :func:`preprocess_train`, normalised here with the same :func:`normalize`.

TensorFlow is imported inside the functions: the driver imports this package without loading TF.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from imagenet_spark.config import AugmentPreset

if TYPE_CHECKING:  # pragma: no cover - typing only
    from imagenet_spark.train_config import TrainConfig

AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
Crop = typing.Literal["random", "centre"]


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """The train transform as plain values: resolved once on the driver, carried to every worker in the run plan.

    ``crop="random"``: random-resized crop with ``area_range`` (share of the image area) and ``aspect_range``
    (width/height), then a flip with ``flip_prob``; ``crop="centre"``: the eval transform (short side to
    ``eval_resize``, centre crop), nothing random. ``randaugment_layers`` > 0 adds RandAugment on the crop.
    """

    preset: AugmentPreset = "imagenet"
    crop: Crop = "random"
    area_range: tuple[float, float] = AREA_RANGE
    aspect_range: tuple[float, float] = ASPECT_RANGE
    flip_prob: float = 0.5
    randaugment_layers: int = 0
    randaugment_magnitude: float = 9.0
    eval_resize: int = 0  # used by crop="centre" only

    def describe(self) -> str:
        """One line for the logs."""
        if self.crop == "centre":
            what = f"centre crop (the eval transform, short side {self.eval_resize})"
        else:
            what = (f"random-resized crop area {self.area_range[0]:g}-{self.area_range[1]:g}, aspect "
                    f"{self.aspect_range[0]:.3g}-{self.aspect_range[1]:.3g}, flip {self.flip_prob:g}")
        extra = (f", RandAugment N={self.randaugment_layers} M={self.randaugment_magnitude:g}"
                 if self.randaugment_layers else "")
        return f"augment={self.preset}: {what}{extra}"


# The presets (README "Training recipes"). light: the crops of the two standard recipes for small images, taken
# as one range: BiT's HyperRule (Kolesnikov et al. 2020) takes 128-px crops of images resized to 160 (64% of the
# area, square), CIFAR ResNets (He et al. 2016) a 32-px crop of the 4-px-padded image (77-100% of the content,
# aspect 7/8-8/7); both flip. Small or centred objects survive it, where the Inception crop's 8% often cuts
# them out.
PRESETS: Mapping[str, AugmentSpec] = MappingProxyType({
    "imagenet": AugmentSpec(preset="imagenet"),
    "light": AugmentSpec(preset="light", area_range=(0.64, 1.0), aspect_range=(7.0 / 8.0, 8.0 / 7.0)),
    "none": AugmentSpec(preset="none", crop="centre", flip_prob=0.0),
})


def augment_spec(cfg: TrainConfig, *, eval_resize: int) -> AugmentSpec:
    """The config's preset with its explicit overrides applied (``cfg`` already validated)."""
    spec = PRESETS[cfg.input.augment]
    return dataclasses.replace(
        spec,
        area_range=cfg.input.crop_area or spec.area_range,
        aspect_range=cfg.input.crop_aspect or spec.aspect_range,
        flip_prob=spec.flip_prob if cfg.input.flip_prob is None else cfg.input.flip_prob,
        randaugment_layers=cfg.input.randaugment_layers,
        randaugment_magnitude=cfg.input.randaugment_magnitude,
        eval_resize=eval_resize,
    )


def normalize(image: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """``(x - mean) / std`` in float32, as ``x * scale + offset``, for an image ``[H, W, 3]`` or a batch
    ``[B, H, W, 3]`` of any dtype (uint8 crops, or mixed batches in float 0..255 units).

    The one normalisation: the training and evaluation steps apply it on the device to the uint8 batches the
    streams emit; the serving signature and whoever wants float images on the CPU call it too. Why the form:
    broadcasting over an innermost dimension of 3 is slow in TensorFlow's CPU kernels, so when the image's
    last three dimensions are static the constants are full ``[H, W, 3]`` arrays (broadcast over a batch's
    outer dimension, which is cheap); this measured ~1.5x faster for the whole train transform on CPU.
    """
    import numpy as np
    import tensorflow as tf

    image = tf.cast(image, tf.float32)
    std_arr = np.asarray(std, np.float32)
    scale = 1.0 / std_arr
    offset = -np.asarray(mean, np.float32) / std_arr
    pixel = image.shape[-3:]
    if image.shape.rank in (3, 4) and pixel.is_fully_defined():
        shape = pixel.as_list()
        return image * tf.constant(np.broadcast_to(scale, shape)) + tf.constant(np.broadcast_to(offset, shape))
    return image * tf.constant(scale) + tf.constant(offset)


def to_uint8(image: Any) -> Any:
    """A resized image (float, values in [0, 255]) → uint8, rounded half to even.

    Why a plain cast after ``tf.round`` and no ``saturate_cast``: bilinear and antialiased resizes take convex
    combinations of uint8 pixels, so the values never leave [0, 255] beyond float error, which rounding absorbs;
    the clip would be two more passes over the image. For such inputs the result equals
    ``saturate_cast(round(x))``, what RandAugment's input was rounded with before, so its streams are unchanged.
    At most 0.5 of a level from the float: 0.5 / std (0.0087 for ImageNet's) after normalisation.
    """
    import tensorflow as tf

    return tf.cast(tf.round(image), tf.uint8)


def random_crop_window(image_bytes: Any, seed: Any = None, *, area_range: Sequence[float] = AREA_RANGE,
                       aspect_range: Sequence[float] = ASPECT_RANGE) -> Any:
    """[y, x, h, w] of an Inception-style random crop, from the JPEG header alone; whole image as fallback."""
    import tensorflow as tf

    shape = tf.image.extract_jpeg_shape(image_bytes)
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    kwargs: dict[str, Any] = dict(
        bounding_boxes=bbox,
        min_object_covered=0.1,
        aspect_ratio_range=tuple(aspect_range),
        area_range=tuple(area_range),
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


def _flip(image: Any, prob: float, seed: Any) -> Any:
    """Horizontal flip with probability ``prob``: the draw ``tf.image.stateless_random_flip_left_right`` makes
    (one uniform in [0, 1) compared with the probability), so at 0.5 the stream is the one it gave before."""
    import tensorflow as tf

    if prob <= 0:
        return image
    if seed is not None:
        draw = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=1.0)
    else:
        draw = tf.random.uniform([], minval=0, maxval=1.0)
    return tf.cond(draw < prob, lambda: tf.image.flip_left_right(image), lambda: image)


def resize_crop(image: Any, crop_short: Any, image_size: int) -> Any:
    """Resize a training crop to ``image_size``: antialiased when it shrinks by 2x or more, plain bilinear below.

    Why: evaluation and the serving signature resize with ``antialias=True`` (train/serve parity); a crop shrunk
    4x by plain bilinear (a 256 px crop for a 64 px model) samples 4 of every 16 pixels and trains on aliased
    textures evaluation never shows. Below 2x bilinear already reads every source pixel and the two agree
    closely, while the antialiased kernel costs ~40% of the transform at 224 px; so ImageNet at 224 from
    256 px images keeps its speed, and small-image training gets evaluation's filter.

    The crop is cast to float32 first: both kernels compute in float32 whatever the input type, so the result
    is bit-identical, but TensorFlow's bilinear kernel reads float32 pixels faster than uint8 ones (issue #13:
    0.54 -> 0.39 ms for a 190x200 crop to 224 px, one thread, cast included).
    """
    import tensorflow as tf

    size = [image_size, image_size]
    pixels = tf.cast(image, tf.float32)
    return tf.cond(crop_short >= 2 * image_size,
                   lambda: tf.image.resize(pixels, size, method="bilinear", antialias=True),
                   lambda: tf.image.resize(pixels, size, method="bilinear"))


def _train_seeds(seed: Any) -> tuple[Any, Any, Any]:
    """(crop, flip, RandAugment) seeds from an element's seed: the crop uses it as it is, the flip
    ``[seed[0], seed[1] + 1]`` (as before RandAugment existed), RandAugment a seed split from it."""
    import tensorflow as tf

    if seed is None:
        return None, None, tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    return seed, tf.stack([seed[0], seed[1] + 1]), tf.random.experimental.stateless_split(
        tf.cast(seed, tf.int64), num=1)[0]


def _random_resized_crop(image_bytes: Any, *, image_size: int, spec: AugmentSpec, seed: Any) -> Any:
    """The random crop window decoded alone (decode and crop in one op), resized to ``image_size``: float32."""
    import tensorflow as tf

    window = random_crop_window(image_bytes, seed, area_range=spec.area_range, aspect_range=spec.aspect_range)
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method="INTEGER_FAST")
    return resize_crop(image, tf.minimum(window[2], window[3]), image_size)


def _randaugment(image: Any, spec: AugmentSpec, seed: Any) -> Any:
    from imagenet_spark.data.randaugment import randaugment

    return randaugment(image, layers=spec.randaugment_layers, magnitude=spec.randaugment_magnitude, seed=seed)


def augment_train(image_bytes: Any, *, image_size: int, seed: Any = None,
                  spec: AugmentSpec = PRESETS["imagenet"]) -> Any:
    """The train transform ``spec`` describes → uint8 [S, S, 3], not normalised: what the training stream emits.

    Random-resized crop (decoding only the crop), rounded to uint8 (:func:`to_uint8`), flip, optional RandAugment;
    for ``crop="centre"``, :func:`crop_eval`. Why uint8: the step normalises on the device
    (:func:`normalize`), so the CPU skips a cast and two passes over float pixels and tf.data moves 4x fewer
    bytes. The same crops as :func:`preprocess_train` for a seed: its output is this one's normalised, within
    half a level before normalisation (identical with RandAugment, whose input was rounded the same way).

    ``seed`` (a shape-[2] int tensor) makes every draw reproducible (stateless ops); None uses TF's global seed
    state.
    """
    import tensorflow as tf

    if spec.crop == "centre":
        return crop_eval(image_bytes, image_size=image_size, eval_resize=spec.eval_resize)
    crop_seed, flip_seed, augment_seed = _train_seeds(seed)
    image = to_uint8(_random_resized_crop(image_bytes, image_size=image_size, spec=spec, seed=crop_seed))
    image = _flip(image, spec.flip_prob, flip_seed)  # on uint8: a quarter of the bytes to move
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    if spec.randaugment_layers:
        image = _randaugment(image, spec, augment_seed)
    return image


def preprocess_train(image_bytes: Any, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                     seed: Any = None, spec: AugmentSpec = PRESETS["imagenet"]) -> Any:
    """The train transform with float32 output normalised on the CPU: the training stream before it emitted
    uint8 (:func:`augment_train`), kept for consumers that want float images (the benchmark's baseline, tests).

    The same draws as :func:`augment_train`; the resized crop is normalised unrounded (RandAugment, when on, works
    on the rounded uint8 crop as there). For ``crop="centre"``, :func:`preprocess_eval`.
    """
    import tensorflow as tf

    if spec.crop == "centre":
        return preprocess_eval(image_bytes, image_size=image_size, eval_resize=spec.eval_resize, mean=mean, std=std)
    crop_seed, flip_seed, augment_seed = _train_seeds(seed)
    image = _random_resized_crop(image_bytes, image_size=image_size, spec=spec, seed=crop_seed)
    image = _flip(image, spec.flip_prob, flip_seed)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    if spec.randaugment_layers:
        image = tf.cast(_randaugment(to_uint8(image), spec, augment_seed), tf.float32)
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


def resize_eval_crop(crop: Any, *, image_size: int) -> Any:
    """Centre crop → ``image_size`` (float32): the last step of the eval transform, shared by evaluation on the
    stored dataset and the serving signature so the two cannot drift apart. Antialiased: the crop is usually
    several times larger than ``image_size`` (224 px of a 256 px dataset image to 64 px), and plain bilinear
    then samples 4 of every ~12 pixels, which aliases fine texture."""
    import tensorflow as tf

    image = tf.image.resize(crop, [image_size, image_size], method="bilinear", antialias=True)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _decode_centre(image_bytes: Any, *, image_size: int, eval_resize: int) -> Any:
    """The stored JPEG's centre window, decoded alone."""
    import tensorflow as tf

    shape = tf.image.extract_jpeg_shape(image_bytes)
    window = centre_crop_window(shape[0], shape[1], image_size=image_size, eval_resize=eval_resize)
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method="INTEGER_ACCURATE")


def crop_eval(image_bytes: Any, *, image_size: int, eval_resize: int) -> Any:
    """The eval transform → uint8 [S, S, 3], not normalised: what the evaluation stream emits (the step
    normalises on the device). :func:`preprocess_eval` rounded to levels (at most half a level apart)."""
    crop = _decode_centre(image_bytes, image_size=image_size, eval_resize=eval_resize)
    return to_uint8(resize_eval_crop(crop, image_size=image_size))


def preprocess_eval(image_bytes: Any, *, image_size: int, eval_resize: int, mean: Sequence[float],
                    std: Sequence[float]) -> Any:
    """Resize short side to ``eval_resize``, centre crop ``image_size``, normalise → float32 [S, S, 3].

    JPEG only (the dataset guarantees it); decodes only the centre window. Float and unrounded, as the serving
    signature's ``serving_transform.preprocess_any`` ends (train/serve parity: tests/test_parity.py)."""
    crop = _decode_centre(image_bytes, image_size=image_size, eval_resize=eval_resize)
    return normalize(resize_eval_crop(crop, image_size=image_size), mean, std)
