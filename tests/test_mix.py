"""Mixup and CutMix on batches (imagenet_spark/data/mix.py): real TensorFlow ops on tiny batches, no Spark.

What must hold: mixed labels are probability rows (sum to 1) that weigh each image by exactly the λ (Mixup) or
the pixel share (CutMix) used on the images; the draws depend only on the seed and the batch index; a run with
mixing off gets its batches untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

from imagenet_spark.config import ConfigError, resolve
from imagenet_spark.data.mix import MixSettings, mix_batch, mix_batches
from imagenet_spark.train_config import TrainConfig

tf = pytest.importorskip("tensorflow")

B, H, W, K = 6, 12, 10, 4


def _batch() -> tuple[np.ndarray, np.ndarray]:
    """Image i is filled with the value i + 1, so every output pixel tells which image it came from."""
    images = np.stack([np.full((H, W, 3), i + 1.0, np.float32) for i in range(B)])
    labels = np.eye(K, dtype=np.float32)[np.arange(B) % K]
    return images, labels


def _mix(settings: MixSettings, key: int = 7, index: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    images, labels = _batch()
    out_images, out_labels, lam = mix_batch(tf.constant(images), tf.constant(labels), settings,
                                            tf.constant(key, tf.int64), tf.constant(index, tf.int64))
    return out_images.numpy(), out_labels.numpy(), float(lam)


def test_mixup_images_and_labels_use_the_same_lambda():
    images, labels = _batch()
    for index in range(5):
        out_images, out_labels, lam = _mix(MixSettings(mixup_alpha=0.4), index=index)
        assert 0.0 <= lam <= 1.0
        np.testing.assert_allclose(out_labels.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(out_labels, lam * labels + (1 - lam) * labels[::-1], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out_images, lam * images + (1 - lam) * images[::-1], rtol=1e-6, atol=1e-6)


def test_cutmix_label_weight_is_the_share_of_pixels_kept():
    images, labels = _batch()
    seen = set()
    for index in range(8):
        out_images, out_labels, lam = _mix(MixSettings(cutmix_alpha=1.0), index=index)
        np.testing.assert_allclose(out_labels.sum(axis=1), 1.0, rtol=1e-6)
        for i in range(B // 2):  # pairs i, B-1-i differ: every pixel is exactly one of the two images
            own = out_images[i, :, :, 0] == images[i, 0, 0, 0]
            partner = out_images[i, :, :, 0] == images[B - 1 - i, 0, 0, 0]
            assert np.all(own | partner)
            assert own.mean() == pytest.approx(lam, abs=1e-6), "λ is the area left to the image after the box"
            box_rows, box_cols = np.nonzero(partner)
            if box_rows.size:  # the pasted region is one rectangle
                assert partner[box_rows.min():box_rows.max() + 1, box_cols.min():box_cols.max() + 1].all()
        expected = lam * labels + (1 - lam) * labels[::-1]
        np.testing.assert_allclose(out_labels, expected, rtol=1e-6, atol=1e-7)
        seen.add(round(lam, 4))
    assert len(seen) > 3, "boxes differ from batch to batch"


def test_draws_are_deterministic_under_the_key_and_differ_across_batches_and_keys():
    settings = MixSettings(mixup_alpha=0.4, cutmix_alpha=1.0)
    first = [_mix(settings, key=7, index=i) for i in range(6)]
    again = [_mix(settings, key=7, index=i) for i in range(6)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert len({round(m[2], 6) for m in first}) > 1
    other = [_mix(settings, key=8, index=i)[2] for i in range(6)]
    assert [round(m[2], 6) for m in first] != [round(x, 6) for x in other]


def test_both_methods_alternate_and_mix_prob_leaves_batches_untouched():
    images, labels = _batch()
    both = MixSettings(mixup_alpha=0.4, cutmix_alpha=1.0)
    kinds = set()
    for index in range(24):
        out_images, _, lam = _mix(both, index=index)
        if lam < 1.0:  # a box gives two values per image; mixup blends every pixel alike
            kinds.add("cutmix" if len(np.unique(out_images[0])) == 2 else "mixup")
    assert kinds == {"cutmix", "mixup"}
    untouched = 0
    for index in range(20):
        out_images, out_labels, lam = _mix(MixSettings(mixup_alpha=0.4, cutmix_alpha=1.0, prob=0.5), index=index)
        if lam == 1.0:
            untouched += 1
            np.testing.assert_array_equal(out_images, images)
            np.testing.assert_array_equal(out_labels, labels)
    assert 3 <= untouched <= 17
    out_images, out_labels, lam = _mix(MixSettings(mixup_alpha=0.4, prob=0.0))
    assert lam == 1.0
    np.testing.assert_array_equal(out_images, images)


def test_mix_batches_on_a_dataset_is_reproducible_and_off_returns_the_stream_itself():
    images, labels = _batch()
    ds = tf.data.Dataset.from_tensors((images, labels)).repeat(3)
    assert mix_batches(ds, MixSettings(), key=1) is ds, "mixing off: today's stream, untouched"
    mixed = mix_batches(ds, MixSettings(mixup_alpha=0.4), key=1)
    first = [(x.numpy(), y.numpy()) for x, y in mixed]
    second = [(x.numpy(), y.numpy()) for x, y in mixed]
    assert len(first) == 3
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_allclose(y1.sum(axis=1), 1.0, rtol=1e-6)
    assert not np.array_equal(first[0][1], first[1][1]), "each batch draws its own λ"


def test_settings_are_validated_with_the_fix():
    base = dict(data="d", model_dir="m", model="resnet_tiny", epochs=2, warmup_epochs=0)
    cfg = resolve(TrainConfig, overrides=["mixup_alpha=0.2", "cutmix_alpha=1.0", "mix_prob=0.5"], explicit=base)
    assert MixSettings.of(cfg) == MixSettings(mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.5)
    assert not MixSettings.of(resolve(TrainConfig, explicit=base)).enabled
    with pytest.raises(ConfigError, match=r"mixup_alpha=-0.1: must be 0 \(off\) or positive"):
        resolve(TrainConfig, overrides=["mixup_alpha=-0.1"], explicit=base)
    with pytest.raises(ConfigError, match=r"mix_prob=1.5: must be in \[0, 1\]"):
        resolve(TrainConfig, overrides=["mix_prob=1.5"], explicit=base)
    with pytest.raises(ConfigError, match=r"ema_decay=1.0: must be in \[0, 1\)"):
        resolve(TrainConfig, overrides=["ema_decay=1"], explicit=base)


def test_uint8_batches_come_out_float_in_level_units_mixed_or_not():
    """The training stream's uint8 crops: mixing casts them to float32 0..255 (the step normalises either dtype);
    the result is what the same batch as floats gives, and an unmixed batch keeps its levels exactly."""
    levels = np.stack([np.full((H, W, 3), 40 * i, np.uint8) for i in range(B)])
    labels = np.eye(K, dtype=np.float32)[np.arange(B) % K]
    for settings, index in [(MixSettings(mixup_alpha=0.4), 3), (MixSettings(cutmix_alpha=1.0), 5),
                            (MixSettings(mixup_alpha=0.4, prob=0.0), 3)]:
        out, out_labels, lam = mix_batch(tf.constant(levels), tf.constant(labels), settings, 9, index)
        ref, ref_labels, ref_lam = mix_batch(tf.constant(levels.astype(np.float32)), tf.constant(labels), settings, 9,
                                             index)
        assert out.dtype == tf.float32
        np.testing.assert_array_equal(out.numpy(), ref.numpy())
        np.testing.assert_array_equal(out_labels.numpy(), ref_labels.numpy())
        assert float(lam) == float(ref_lam)
        if settings.prob == 0.0:
            np.testing.assert_array_equal(out.numpy(), levels.astype(np.float32))
