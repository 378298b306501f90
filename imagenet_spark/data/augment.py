"""ImageNet preprocessing in TensorFlow: the standard train and eval transforms, on encoded JPEG bytes.

Why on bytes and in TF: decoding is the most expensive step of the input pipeline, and
``tf.image.decode_and_crop_jpeg`` decodes only the crop window, which for the random-resized crop of
training is on average a fraction of the image. Everything here runs inside tf.data map functions (and,
for eval, inside the exported serving signature), so it parallelises across cores and never holds the GIL.

Train: what an :class:`AugmentSpec` says, resolved on the driver from the config (:func:`augment_spec`); the
default preset, ``imagenet``, is the Inception-style random-resized crop (area 8%-100%, aspect 3/4-4/3;
Szegedy et al. 2015) resized to ``image_size`` and a horizontal flip; RandAugment (``randaugment.py``) can
follow on the uint8 crop; ``none`` is the eval transform. Eval: resize the short side to ``eval_resize`` and take the centre
``image_size`` crop (224 of 256), done as one centre decode-and-crop plus one antialiased resize. The serving
signature first brings an original image to the dataset's size as the partition job did, then applies the
same eval transform (train/serve parity: tests/test_parity.py).
Both end with per-channel normalisation by the model's mean/std.

TensorFlow is imported inside the functions: the driver imports this package without loading TF.
"""

from __future__ import annotations

import dataclasses
import typing
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from imagenet_spark.config import AugmentPreset

if TYPE_CHECKING:  # pragma: no cover - typing only
    from imagenet_spark.config import TrainConfig

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

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "AugmentSpec":
        """Rebuild from ``dataclasses.asdict`` output after JSON (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

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
    spec = PRESETS[cfg.augment]
    return dataclasses.replace(
        spec,
        area_range=tuple(cfg.crop_area or spec.area_range),
        aspect_range=tuple(cfg.crop_aspect or spec.aspect_range),
        flip_prob=spec.flip_prob if cfg.flip_prob is None else cfg.flip_prob,
        randaugment_layers=cfg.randaugment_layers,
        randaugment_magnitude=cfg.randaugment_magnitude,
        eval_resize=eval_resize,
    )


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
    """
    import tensorflow as tf

    size = [image_size, image_size]
    return tf.cond(crop_short >= 2 * image_size,
                   lambda: tf.image.resize(image, size, method="bilinear", antialias=True),
                   lambda: tf.image.resize(image, size, method="bilinear"))


def preprocess_train(image_bytes: Any, *, image_size: int, mean: Sequence[float], std: Sequence[float],
                     seed: Any = None, spec: AugmentSpec = PRESETS["imagenet"]) -> Any:
    """The train transform ``spec`` describes → float32 [S, S, 3]: random-resized crop (decoding only the crop),
    flip, optional RandAugment on the uint8 crop, normalise; for ``crop="centre"``, :func:`preprocess_eval`.

    ``seed`` (a shape-[2] int tensor) makes every draw reproducible (stateless ops): the crop uses it as it is,
    the flip ``[seed[0], seed[1] + 1]`` (as before RandAugment existed), RandAugment a seed split from it; None
    uses TF's global seed state.
    """
    import tensorflow as tf

    if spec.crop == "centre":
        return preprocess_eval(image_bytes, image_size=image_size, eval_resize=spec.eval_resize, mean=mean, std=std)
    crop_seed = flip_seed = augment_seed = None
    if seed is not None:
        crop_seed = seed
        flip_seed = tf.stack([seed[0], seed[1] + 1])
        augment_seed = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=1)[0]
    window = random_crop_window(image_bytes, crop_seed, area_range=spec.area_range, aspect_range=spec.aspect_range)
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method="INTEGER_FAST")
    image = resize_crop(image, tf.minimum(window[2], window[3]), image_size)
    image = _flip(image, spec.flip_prob, flip_seed)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    if spec.randaugment_layers:
        from imagenet_spark.data.randaugment import randaugment

        if augment_seed is None:
            augment_seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
        image = randaugment(tf.saturate_cast(tf.round(image), tf.uint8), layers=spec.randaugment_layers,
                            magnitude=spec.randaugment_magnitude, seed=augment_seed)
        image = tf.cast(image, tf.float32)
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


def _eval_finish(crop: Any, *, image_size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Centre crop → ``image_size`` → normalised: the last step of the eval transform, shared by evaluation on
    the stored dataset and the serving signature so the two cannot drift apart. Antialiased: the crop is
    usually several times larger than ``image_size`` (224 px of a 256 px dataset image to 64 px), and plain
    bilinear then samples 4 of every ~12 pixels, which aliases fine texture."""
    import tensorflow as tf

    image = tf.image.resize(crop, [image_size, image_size], method="bilinear", antialias=True)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return normalize(image, mean, std)


def preprocess_eval(image_bytes: Any, *, image_size: int, eval_resize: int, mean: Sequence[float],
                    std: Sequence[float]) -> Any:
    """Resize short side to ``eval_resize``, centre crop ``image_size``, normalise → float32 [S, S, 3].

    JPEG only (the dataset guarantees it); decodes only the centre window."""
    import tensorflow as tf

    shape = tf.image.extract_jpeg_shape(image_bytes)
    window = centre_crop_window(shape[0], shape[1], image_size=image_size, eval_resize=eval_resize)
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method="INTEGER_ACCURATE")
    return _eval_finish(image, image_size=image_size, mean=mean, std=std)


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
    (:func:`to_dataset_pixels`), then given exactly :func:`preprocess_eval`'s crop and resize. Why: without
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
    return _eval_finish(image, image_size=image_size, mean=mean, std=std)
