"""The train transform as settings (issue #11): presets and overrides, RandAugment, seeds, and the config checks.

Real photographs (sklearn's two sample JPEGs, re-encoded small), real TensorFlow ops, no mocks. Each test runs in
a second or two: the images are about 100 px and the crops 32 px.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import sklearn.datasets as sklearn_datasets  # both locks pin it: a missing one is a setup bug, not a skip
from PIL import Image

from imagenet_spark.config import ConfigError, from_dict, resolve, to_dict
from imagenet_spark.data.augment import PRESETS, AugmentSpec, augment_spec, preprocess_eval, preprocess_train
from imagenet_spark.train_config import Input, TrainConfig

tf = pytest.importorskip("tensorflow")

SIZE = 32
UNIT = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # pixel units: outputs read as 8-bit levels
DRAWS = 300


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """The two real photographs (640x427) re-encoded at 120x80 and 90x90 (JPEG q90)."""
    out = []
    for path, size in zip(sklearn_datasets.load_sample_images().filenames, [(120, 80), (90, 90)]):
        buf = io.BytesIO()
        Image.open(path).convert("RGB").resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _spec(**overrides) -> AugmentSpec:
    cfg = resolve(TrainConfig, explicit={"data": "/d", "model_dir": "/m", **overrides})
    return augment_spec(cfg, eval_resize=37)


def _train(data: bytes, spec: AugmentSpec, seed: tuple[int, int]) -> np.ndarray:
    return preprocess_train(tf.constant(data), image_size=SIZE, seed=tf.constant(seed, tf.int64), spec=spec,
                            **UNIT).numpy()


def _crop_stats(data: bytes, spec: AugmentSpec) -> tuple[np.ndarray, np.ndarray]:
    """Area share and aspect (w/h) of DRAWS crop windows, drawn in the graph as the training map does."""
    from imagenet_spark.data.augment import random_crop_window

    height, width = Image.open(io.BytesIO(data)).size[::-1]
    windows = tf.data.Dataset.range(DRAWS).map(lambda i: random_crop_window(
        tf.constant(data), tf.stack([tf.constant(11, tf.int64), i * 2]), area_range=spec.area_range,
        aspect_range=spec.aspect_range))
    win = np.stack([w.numpy() for w in windows]).astype(float)
    return win[:, 2] * win[:, 3] / (height * width), win[:, 3] / win[:, 2]


@pytest.mark.parametrize("overrides", [{}, {"augment": "light"}, {"crop_area": (0.3, 0.5), "crop_aspect": (1, 1.5)}])
def test_crops_fall_inside_the_preset_ranges(photos, overrides):
    spec = _spec(**overrides)
    for square, data in zip([False, True], photos):
        area, aspect = _crop_stats(data, spec)
        lo, hi = spec.area_range
        whole = area > 0.999  # TF's fallback after 10 failed attempts: the whole image (documented behaviour)
        assert whole.mean() < 0.05, whole.mean()
        # pixel rounding of ~100 px sides moves a window's share by a few percent
        assert np.all((area[~whole] >= lo - 0.04) & (area[~whole] <= hi + 0.001)), (area.min(), area.max())
        assert np.all((aspect[~whole] >= spec.aspect_range[0] * 0.93) & (aspect[~whole] <= spec.aspect_range[1] * 1.07))
        # and on the square photo, where every share in the range fits every aspect, the draws spread over the range
        # (on the 3:2 one a near-square crop cannot exceed 0.76 of it: light's crops there lie in 0.64-0.76)
        if square:
            assert area[~whole].min() < lo + 0.1 * (hi - lo) and area[~whole].max() > hi - 0.1 * (hi - lo)
            assert lo + 0.3 * (hi - lo) < np.median(area[~whole]) < lo + 0.7 * (hi - lo)


def test_imagenet_preset_keeps_the_old_stream(photos):
    """The default preset draws exactly what the hard-coded transform drew: crop with the element seed, flip with
    ``tf.image.stateless_random_flip_left_right`` on ``[seed0, seed1 + 1]``; old runs replay identically."""
    from imagenet_spark.data.augment import normalize, random_crop_window

    assert _spec() == dataclasses.replace(PRESETS["imagenet"], eval_resize=37)
    flips = 0
    for i in range(12):
        seed = tf.constant([5, 2 * i], tf.int64)
        data = tf.constant(photos[i % 2])
        window = random_crop_window(data, seed)
        crop = tf.image.decode_and_crop_jpeg(data, window, channels=3, dct_method="INTEGER_FAST")
        # the same draws; the resize is antialiased where the crop shrinks 2x or more (as evaluation's is)
        old = tf.image.resize(crop, [SIZE, SIZE], antialias=bool(min(window[2], window[3]) >= 2 * SIZE))
        flipped = tf.image.stateless_random_flip_left_right(old, seed=tf.stack([seed[0], seed[1] + 1]))
        flips += int(not np.array_equal(flipped.numpy(), old.numpy()))
        new = preprocess_train(data, image_size=SIZE, seed=seed, spec=PRESETS["imagenet"], **UNIT)
        np.testing.assert_array_equal(new.numpy(), normalize(flipped, **UNIT).numpy())
    assert 0 < flips < 12


def test_flip_probability_zero_and_one(photos):
    never, always = _spec(flip_prob=0.0), _spec(flip_prob=1.0)
    for i in range(4):
        plain, mirrored = _train(photos[0], never, (3, 2 * i)), _train(photos[0], always, (3, 2 * i))
        np.testing.assert_array_equal(mirrored, plain[:, ::-1, :])


@pytest.mark.parametrize("overrides", [{}, {"augment": "light", "randaugment_layers": 2}])
def test_same_seed_same_tensor_other_seed_other_tensor(photos, overrides):
    spec = _spec(**overrides)
    a, b, c = (_train(photos[0], spec, s) for s in [(7, 10), (7, 10), (7, 12)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_none_is_the_eval_transform(photos):
    spec = _spec(augment="none")
    for i, data in enumerate(photos):
        train = _train(data, spec, (1, i))
        evaluation = preprocess_eval(tf.constant(data), image_size=SIZE, eval_resize=37, **UNIT).numpy()
        np.testing.assert_array_equal(train, evaluation)


def test_randaugment_in_the_training_map_is_deterministic_and_in_range(photos):
    """N=2, M=9 inside a tf.data map (graph, parallel): uint8-valued pixels, the crop's shape, reproducible, and
    different from the same crops without it."""
    with_ra, without = _spec(randaugment_layers=2, randaugment_magnitude=9), _spec()

    def run(spec: AugmentSpec) -> np.ndarray:
        ds = tf.data.Dataset.range(16).map(lambda i: preprocess_train(
            tf.constant(photos[0]), image_size=SIZE, seed=tf.stack([tf.constant(9, tf.int64), i * 2]), spec=spec,
            **UNIT), num_parallel_calls=4, deterministic=True)
        return np.stack([x.numpy() for x in ds])

    first, second, plain = run(with_ra), run(with_ra), run(without)
    assert first.shape == (16, SIZE, SIZE, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert first.min() >= 0 and first.max() <= 255 and np.array_equal(first, np.round(first))
    changed = [not np.array_equal(first[k], np.round(plain[k])) for k in range(16)]
    assert sum(changed) >= 8, changed  # 2 ops of 14, identity among them: most images change


def test_each_randaugment_op(photos):
    """Every op keeps shape and dtype; at magnitude 0 the parametrised ones are the identity (autocontrast and
    equalize have no magnitude), and at 10 each changes the (low-contrast) photo."""
    from imagenet_spark.data.randaugment import OPS, apply_op

    image = tf.io.decode_jpeg(photos[0], channels=3) // 2 + 64  # levels 64-191: room for autocontrast to act
    original = image.numpy().astype(int)
    for name in OPS:
        full = apply_op(image, name, magnitude=10.0, sign=-1.0)
        assert full.dtype == tf.uint8 and full.shape == image.shape, name
        if name != "identity":
            assert np.abs(full.numpy().astype(int) - original).mean() > 0.5, name
        if name not in ("autocontrast", "equalize"):
            zero = apply_op(image, name, magnitude=0.0).numpy().astype(int)
            assert np.abs(zero - original).max() <= 1, name


@pytest.mark.parametrize("overrides, setting", [
    ({"augment": "heavy"}, "augment"),
    ({"crop_area": (0.0, 1.0)}, "crop_area"),
    ({"crop_area": (0.5, 0.4)}, "crop_area"),
    ({"crop_area": (0.5, 1.2)}, "crop_area"),
    ({"crop_aspect": (0.75,)}, "crop_aspect"),
    ({"flip_prob": 1.5}, "flip_prob"),
    ({"randaugment_layers": -1}, "randaugment_layers"),
    ({"randaugment_magnitude": 12}, "randaugment_magnitude"),
    ({"augment": "none", "randaugment_layers": 2}, "randaugment_layers"),
    ({"augment": "none", "crop_area": (0.5, 1.0)}, "crop_area"),
])
def test_bad_augment_settings_are_refused_naming_setting_and_value(overrides, setting):
    with pytest.raises(ConfigError) as info:
        TrainConfig(data="/d", model_dir="/m", input=Input(**overrides)).validate()
    assert info.value.setting == f"input.{setting}"
    assert str(info.value).startswith(f"input.{setting}={info.value.value!r}: ")


def test_settings_from_the_command_line_and_epochs_one_with_the_default_warmup():
    cfg = resolve(TrainConfig, overrides=["input.augment=light", "input.crop_area=0.5,1", "input.flip_prob=0",
                                          "input.randaugment_layers=2"],
                  explicit={"data": "/d", "model_dir": "/m", "epochs": 1})
    cfg.validate()
    spec = augment_spec(cfg, eval_resize=256)
    assert (spec.area_range, spec.aspect_range, spec.flip_prob) == ((0.5, 1.0), PRESETS["light"].aspect_range, 0.0)
    assert (spec.randaugment_layers, spec.randaugment_magnitude, cfg.recipe.warmup_epochs) == (2, 9.0, 5.0)
    assert from_dict(AugmentSpec, json.loads(json.dumps(to_dict(spec)))) == spec  # as the run plan ships it


def test_training_crops_shrunk_2x_or_more_are_antialiased():
    """A 1-pixel checkerboard shrunk 6.4x must come out flat grey (what evaluation's antialiased resize gives), not
    the aliased pattern plain bilinear samples; a crop shrunk less than 2x keeps plain bilinear (ImageNet's speed)."""
    from imagenet_spark.data.augment import resize_crop

    board = np.indices((256, 256)).sum(axis=0) % 2 * 255
    image = tf.constant(np.repeat(board[..., None], 3, axis=2), tf.uint8)
    small = resize_crop(image, tf.constant(256), 40).numpy()
    assert np.abs(small - 127.5).max() < 2, np.abs(small - 127.5).max()
    plain = tf.image.resize(image, [40, 40], method="bilinear").numpy()
    assert np.abs(plain - 127.5).max() > 50  # what training saw before: the pattern aliased into stripes
    near = resize_crop(image[:200, :200], tf.constant(200), 128).numpy()
    np.testing.assert_array_equal(near, tf.image.resize(image[:200, :200], [128, 128], method="bilinear").numpy())


@pytest.fixture(scope="module")
def dataset_photos() -> list[bytes]:
    """The two photographs as the partition job stores them by default: short side 256, JPEG q90."""
    out = []
    for path in sklearn_datasets.load_sample_images().filenames:
        image = Image.open(path).convert("RGB")
        scale = 256 / min(image.size)
        buf = io.BytesIO()
        image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.Resampling.BICUBIC).save(
            buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("overrides", [{}, {"augment": "light"}, {"augment": "none"}, {"randaugment_layers": 2}])
@pytest.mark.parametrize("size", [SIZE, 224])
def test_uint8_stream_normalised_by_the_step_equals_the_float_path(photos, dataset_photos, overrides, size):
    """The training stream's uint8 crops (``augment_train``), normalised as a batch the way the step does, are the
    old float path (``preprocess_train``: normalised on the CPU, unrounded) within half a level: the same crops and
    flips for each seed. With RandAugment, whose input was already rounded, they agree to float precision."""
    from imagenet_spark.data.augment import augment_train, normalize

    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # ImageNet's, as the models use
    spec = dataclasses.replace(_spec(**overrides), eval_resize=round(size / 0.875))
    sources = dataset_photos if size == 224 else photos
    seeds = [tf.constant([13, 2 * i], tf.int64) for i in range(6)]
    crops = [augment_train(tf.constant(sources[i % 2]), image_size=size, seed=s, spec=spec)
             for i, s in enumerate(seeds)]
    assert all(c.dtype == tf.uint8 and c.shape == (size, size, 3) for c in crops)
    stepped = normalize(tf.stack(crops), mean, std).numpy()
    old = np.stack([preprocess_train(tf.constant(sources[i % 2]), image_size=size, seed=s, spec=spec, mean=mean,
                                     std=std).numpy() for i, s in enumerate(seeds)])
    tolerance = 1e-5 if spec.randaugment_layers else 0.5 / min(std) + 1e-5
    difference = np.abs(stepped - old)
    assert difference.max() <= tolerance, difference.max()
    assert difference.mean() < 0.3 / min(std), difference.mean()
    if spec.crop == "random" and not spec.randaugment_layers:  # rounding really happened: the bound is not vacuous
        assert difference.mean() > 0.1 / max(std), difference.mean()  # (224 of 256 at eval: 1:1, nothing to round)
    # ... and the crops are the seeds' own: another seed's crop is far away
    assert np.abs(stepped[0] - old[2]).mean() > 10 * difference.mean() or spec.crop == "centre"
