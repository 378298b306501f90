"""The exponential moving average of the weights (imagenet_spark/train/ema.py) against a numpy reference.

Real TensorFlow, the jobs' own training step (``steps.make_step_functions``) on a tiny model with batch norm,
under the ``off`` backend; the distributed run (MWMS, resume, export) is in tests/test_train.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from imagenet_spark.train.ema import WeightAverage, averaged_weights, decay_at, make_swapper
from imagenet_spark.train_config import Recipe, TrainConfig

tf = pytest.importorskip("tensorflow")

CLASSES, SIZE, BATCH = 3, 8, 4


def _model(seed: int) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((SIZE, SIZE, 3))
    x = tf.keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = tf.keras.layers.BatchNormalization(momentum=0.9)(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.ReLU()(x))
    return tf.keras.Model(inputs, tf.keras.layers.Dense(CLASSES)(x))


def _data() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * 4, SIZE, SIZE, 3)).astype("float32")
    y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, BATCH * 4)]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()


def _steps(model: tf.keras.Model, average: WeightAverage | None) -> tuple[object, object]:
    from imagenet_spark.distribute.backends import make_backend
    from imagenet_spark.distribute.context import WorkerContext
    from imagenet_spark.train.steps import make_step_functions

    cfg = TrainConfig(data="-", model_dir="-", model="resnet_tiny", workers=1, backend="off",
                      global_batch_size=BATCH, recipe=Recipe(weight_decay=1e-4, label_smoothing=0.1))
    backend = make_backend("off", WorkerContext())
    sums = {n: tf.keras.metrics.Sum(name=n) for n in ("loss", "top1", "top5", "count", "nonfinite")}
    optimizer = tf.keras.optimizers.SGD(0.1, momentum=0.9)
    train_steps, _ = make_step_functions(cfg, backend, model, optimizer, sums, num_classes=CLASSES, average=average,
                                         mean=(0.0,) * 3, std=(1.0,) * 3)  # the data is already normal
    return train_steps, backend


def _reference(history: list[list[np.ndarray]], initial: list[np.ndarray], decay: float, warmup: bool,
               first_update: int = 1) -> list[np.ndarray]:
    """shadow <- d * shadow + (1 - d) * w after each step, in float64."""
    shadow = [w.astype(np.float64) for w in initial]
    for k, weights in enumerate(history, start=first_update):
        d = decay_at(decay, k, warmup=warmup)
        shadow = [d * s + (1 - d) * w for s, w in zip(shadow, weights)]
    return shadow


@pytest.mark.parametrize("warmup", [True, False])
def test_average_of_the_training_step_matches_numpy(warmup):
    model = _model(1)
    initial = model.get_weights()
    average = WeightAverage(model, decay=0.8, warmup=warmup, strategy=tf.distribute.get_strategy())
    train_steps, _ = _steps(model, average)
    iterator = iter(_data())
    history = []
    for _ in range(5):
        train_steps(iterator, tf.constant(1))
        history.append(model.get_weights())
    expected = _reference(history, initial, 0.8, warmup)
    got = average.values()
    assert len(got) == len(initial) == 7, "conv kernel, BN gamma/beta/moving mean/variance, dense kernel+bias"
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    moving_mean = next(i for i, v in enumerate(model.weights) if "moving_mean" in v.name)
    assert not np.allclose(got[moving_mean], history[-1][moving_mean]), "the BN moving statistics are averaged too"
    assert int(average.updates.numpy()) == 5


def test_decay_zero_reproduces_the_plain_weights_and_swapping_twice_restores_them():
    model = _model(2)
    average = WeightAverage(model, decay=0.0, warmup=False, strategy=tf.distribute.get_strategy())
    train_steps, backend = _steps(model, average)
    train_steps(iter(_data()), tf.constant(3))
    raw = model.get_weights()
    for a, b in zip(average.values(), raw):
        np.testing.assert_array_equal(a, b)
    # with a real average, the swap shows it inside the block and gives the raw weights back after
    other = WeightAverage(model, decay=0.5, warmup=False, strategy=tf.distribute.get_strategy())
    for v in other.shadows:
        v.assign(tf.zeros_like(v))
    with averaged_weights(make_swapper(backend, other)):
        assert all(not np.any(w) for w in model.get_weights())
    for a, b in zip(model.get_weights(), raw):
        np.testing.assert_array_equal(a, b)


def test_a_restored_average_continues_where_it_stopped(tmp_path):
    """Checkpoint after 3 updates, restore into a fresh model and average, 2 more updates: the same shadows as 5
    uninterrupted updates (the update count, and so the warmup decay, is restored too)."""
    model = _model(3)
    initial = model.get_weights()
    average = WeightAverage(model, decay=0.9, warmup=True, strategy=tf.distribute.get_strategy())
    rng = np.random.default_rng(1)
    steps = [[rng.normal(size=w.shape).astype(np.float32) for w in initial] for _ in range(5)]
    update = tf.function(average.update)
    for weights in steps[:3]:
        model.set_weights(weights)
        update()
    path = tf.train.Checkpoint(model=model, ema=average.trackable).save(str(tmp_path / "ckpt"))

    fresh = _model(4)
    resumed = WeightAverage(fresh, decay=0.9, warmup=True, strategy=tf.distribute.get_strategy())
    tf.train.Checkpoint(model=fresh, ema=resumed.trackable).restore(path).assert_consumed()
    assert int(resumed.updates.numpy()) == 3
    update_resumed = tf.function(resumed.update)
    for weights in steps[3:]:
        fresh.set_weights(weights)
        update_resumed()
    for g, e in zip(resumed.values(), _reference(steps, initial, 0.9, True)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_decay_warmup_rule():
    assert decay_at(0.999, 1, warmup=True) == pytest.approx(2 / 11)
    assert decay_at(0.999, 10_000, warmup=True) == 0.999
    assert decay_at(0.999, 1, warmup=False) == 0.999
