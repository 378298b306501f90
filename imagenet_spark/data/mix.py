"""Mixup and CutMix on training batches: a ``tf.data`` map after batching, with stateless random ops.

Why batches, not images: both methods combine two images and their labels, so they need a partner image;
pairing each image with its mirror in the batch (``images[::-1]``, as timm's ``Mixup`` does) needs no second
stream and no extra reading, and costs one elementwise op per batch, negligible beside JPEG decoding.

* **Mixup** (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization"): ``λ ~ Beta(α, α)``, images
  ``λ·x + (1-λ)·x'``, labels ``λ·y + (1-λ)·y'``.
* **CutMix** (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
  Features"): ``λ ~ Beta(α, α)``; a box of ``sqrt(1-λ)`` of each side, centred uniformly and clipped to the
  image, is pasted from ``x'``; ``λ`` is then recomputed as the part of the area left to ``x`` (the clipped box
  is often smaller), so the labels always weigh each image by the pixels it shows.
* With both on, each batch uses one of them with probability 1/2 (timm's ``switch_prob`` default); each batch is
  mixed at all with probability ``mix_prob`` (λ = 1 otherwise: the batch passes unchanged, bit for bit).

One λ per batch (timm's default "batch" mode). Labels stay one-hot rows that sum to 1; label smoothing is applied
by the loss (``categorical_crossentropy(label_smoothing=...)``), which is linear in the labels, so smoothing a
mixed label equals mixing the smoothed labels: nothing to do here.

Deterministic under the seed: every random draw is a stateless op keyed by ``(key, batch index)``, where the
key comes from the run's seed and the worker's rank (``reader._mix_seed``).

TensorFlow is imported inside the functions (this module is imported on the driver too).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from imagenet_spark.train_config import TrainConfig

# Probability that a batch uses CutMix rather than Mixup when both are on (timm Mixup's switch_prob default).
SWITCH_PROB = 0.5
# Seeds per batch: [key, index * _DRAWS + j] for draw j (apply?, which method, two gammas per Beta, box centre).
_DRAWS = 8


@dataclasses.dataclass(frozen=True)
class MixSettings:
    """What mixes the training batches; ``alpha == 0`` turns a method off. Plain values: picklable."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0

    @classmethod
    def of(cls, cfg: TrainConfig) -> MixSettings:
        return cls(mixup_alpha=cfg.recipe.mixup_alpha, cutmix_alpha=cfg.recipe.cutmix_alpha, prob=cfg.recipe.mix_prob)

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


def _beta(alpha: float, seeds: tuple[Any, Any]) -> Any:
    """One draw of Beta(alpha, alpha) as G1 / (G1 + G2) with stateless gammas (TensorFlow has no stateless beta)."""
    import tensorflow as tf

    g1 = tf.random.stateless_gamma([], seed=seeds[0], alpha=alpha, dtype=tf.float32)
    g2 = tf.random.stateless_gamma([], seed=seeds[1], alpha=alpha, dtype=tf.float32)
    return g1 / tf.maximum(g1 + g2, 1e-12)


def cutmix_mask(height: Any, width: Any, lam: Any, seed: Any) -> tuple[Any, Any]:
    """The CutMix box for a draw ``lam``: a ``[H, W, 1]`` float mask (1 inside the box) and the λ it leaves,
    ``1 - box area / image area``. Box sides ``int(side * sqrt(1-λ))``, centre uniform over the image, clipped
    (timm's ``rand_bbox``)."""
    import tensorflow as tf

    h = tf.cast(height, tf.int32)
    w = tf.cast(width, tf.int32)
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(h, tf.float32) * ratio, tf.int32)
    cut_w = tf.cast(tf.cast(w, tf.float32) * ratio, tf.int32)
    centre = tf.random.stateless_uniform([2], seed=seed, minval=0.0, maxval=1.0)
    cy = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32)
    cx = tf.cast(centre[1] * tf.cast(w, tf.float32), tf.int32)
    y1, y2 = tf.clip_by_value(cy - cut_h // 2, 0, h), tf.clip_by_value(cy + cut_h // 2, 0, h)
    x1, x2 = tf.clip_by_value(cx - cut_w // 2, 0, w), tf.clip_by_value(cx + cut_w // 2, 0, w)
    rows = tf.range(h)
    cols = tf.range(w)
    inside_rows = tf.logical_and(rows >= y1, rows < y2)
    inside_cols = tf.logical_and(cols >= x1, cols < x2)
    mask = tf.cast(tf.logical_and(inside_rows[:, None], inside_cols[None, :]), tf.float32)[:, :, None]
    area = tf.cast((y2 - y1) * (x2 - x1), tf.float32)
    return mask, 1.0 - area / tf.cast(h * w, tf.float32)


def mix_batch(images: Any, labels: Any, settings: MixSettings, key: Any, index: Any) -> tuple[Any, Any, Any]:
    """Mix one batch: ``(images [b, H, W, C], labels [b, K] one-hot float, λ)``; λ = 1 means unchanged.

    Each image ``i`` is mixed with image ``b-1-i``; the returned λ is the weight of the image's own label
    (for CutMix, the share of its pixels left after pasting the box). Integer images (the uint8 crops of the
    training stream) come out as float32 in the same 0..255 units, every batch alike, mixed or not: a blend
    is not a level, and the step normalises either dtype (``augment.normalize``).
    """
    import tensorflow as tf

    if images.dtype.is_integer:
        images = tf.cast(images, tf.float32)

    seeds = [tf.stack([tf.cast(key, tf.int64), tf.cast(index, tf.int64) * _DRAWS + j]) for j in range(_DRAWS)]
    apply = tf.random.stateless_uniform([], seed=seeds[0]) < settings.prob
    if settings.mixup_alpha > 0 and settings.cutmix_alpha > 0:
        use_cutmix = tf.random.stateless_uniform([], seed=seeds[1]) < SWITCH_PROB
    else:
        use_cutmix = tf.constant(settings.cutmix_alpha > 0)
    partner_images, partner_labels = images[::-1], labels[::-1]
    one = tf.constant(1.0, tf.float32)
    mixup_lam = _beta(settings.mixup_alpha, (seeds[2], seeds[3])) if settings.mixup_alpha > 0 else one
    cutmix_draw = _beta(settings.cutmix_alpha, (seeds[4], seeds[5])) if settings.cutmix_alpha > 0 else one
    shape = tf.shape(images)
    # An unapplied batch draws λ = 1: an empty box and a weight of exactly 1 leave the batch bit for bit.
    mask, cutmix_lam = cutmix_mask(shape[1], shape[2], tf.where(apply, cutmix_draw, one), seeds[6])
    lam = tf.where(apply, tf.where(use_cutmix, cutmix_lam, mixup_lam), one)
    dtype = images.dtype
    cut = tf.cast(mask, dtype)
    cutmixed = images * (1 - cut) + partner_images * cut
    mixed_up = images * tf.cast(lam, dtype) + partner_images * tf.cast(1.0 - lam, dtype)
    out_images = tf.where(use_cutmix, cutmixed, mixed_up)
    out_labels = labels * tf.cast(lam, labels.dtype) + partner_labels * tf.cast(1.0 - lam, labels.dtype)
    return out_images, out_labels, lam


def mix_batches(ds: Any, settings: MixSettings, *, key: int) -> Any:
    """Mixup/CutMix every batch of a ``(images, labels)`` dataset; the dataset itself when mixing is off (so a run
    without it keeps exactly today's stream). ``key``: a per-worker seed, e.g. ``reader._mix_seed(...)``. Images
    come out float32 in 0..255 units when they went in as uint8 (:func:`mix_batch`)."""
    if not settings.enabled:
        return ds
    import tensorflow as tf

    key_tensor = tf.constant(key, tf.int64)

    def mix(index: Any, batch: tuple[Any, Any]) -> tuple[Any, Any]:
        images, labels, _lam = mix_batch(batch[0], batch[1], settings, key_tensor, index)
        return images, labels

    # No autograph: mix branches on settings and dtypes only, never on a tensor.
    return ds.enumerate().map(tf.autograph.experimental.do_not_convert(mix), num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
