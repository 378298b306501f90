"""The learning-rate schedule: warmup that scales with the run (issue #11), and the Keras schedule the optimizer
uses equal to the Python one the driver logs and the report plots."""

from __future__ import annotations

import logging

import pytest

from imagenet_spark.config import WARMUP_MAX_FRACTION, ConfigError, resolve
from imagenet_spark.train.schedules import Schedule, effective_warmup_epochs, make_schedule, warmup_clamp_note
from imagenet_spark.train_config import TrainConfig

SPE = 40  # steps per epoch


def _default_recipe(epochs: float) -> Schedule:
    """The default recipe's schedule (warmup_epochs 5, cosine) for a run of ``epochs``."""
    cfg = TrainConfig(data="/d", model_dir="/m", epochs=epochs)
    cfg.validate()  # any positive --epochs is a valid run with the default warmup
    return make_schedule(peak_lr=0.1, steps_per_epoch=SPE, epochs=epochs, warmup_epochs=cfg.recipe.warmup_epochs,
                         warmup_max_fraction=cfg.recipe.warmup_max_fraction, kind="cosine")


@pytest.mark.parametrize("epochs, warmup_epochs", [(0.5, 0.5 / 3), (1, 1 / 3), (5, 5 / 3), (90, 5.0)])
def test_default_warmup_is_clamped_to_a_third_of_short_runs(epochs, warmup_epochs):
    schedule = _default_recipe(epochs)
    assert schedule.total_steps == round(epochs * SPE)
    assert schedule.warmup_steps == round(warmup_epochs * SPE)
    w = schedule.warmup_steps
    rates = [schedule(s) for s in range(schedule.total_steps)]
    assert all(0 < r <= 0.1 for r in rates[:-1])
    assert rates[:w] == sorted(rates[:w]), "warmup rises"
    assert rates[w - 1] == pytest.approx(0.1) and rates[w] == pytest.approx(0.1), "peak at the end of warmup"
    assert rates[w:] == sorted(rates[w:], reverse=True), "then cosine decays"
    assert schedule(schedule.total_steps) == pytest.approx(0.0, abs=1e-12), "and reaches 0 at the end of the run"


def test_clamp_note_and_a_short_warmup_is_kept():
    assert effective_warmup_epochs(5.0, 1.0, WARMUP_MAX_FRACTION) == pytest.approx(1 / 3)
    assert warmup_clamp_note(5.0, 1.0, WARMUP_MAX_FRACTION) == \
        "warmup: 5 epoch(s) asked, 0.333333 used: at most recipe.warmup_max_fraction=0.333333 of the 1-epoch run"
    assert effective_warmup_epochs(1.0, 3.0, WARMUP_MAX_FRACTION) == 1.0  # the smoke presets: unchanged
    assert effective_warmup_epochs(0.0, 0.5, WARMUP_MAX_FRACTION) == 0.0
    assert warmup_clamp_note(1.0, 3.0, WARMUP_MAX_FRACTION) is None
    assert warmup_clamp_note(0.0, 0.5, WARMUP_MAX_FRACTION) is None


def test_building_a_clamped_schedule_logs_nothing(caplog):
    """Every rank builds the schedule: the clamp is said once, by the driver's plan (tests/test_train.py)."""
    with caplog.at_level(logging.DEBUG, logger="imagenet_spark"):
        schedule = make_schedule(peak_lr=0.1, steps_per_epoch=SPE, epochs=1, warmup_epochs=5,
                                 warmup_max_fraction=WARMUP_MAX_FRACTION, kind="cosine")
    assert schedule.warmup_steps == round(SPE / 3)
    assert not caplog.text


def test_one_step_run_has_no_warmup_step():
    schedule = make_schedule(peak_lr=0.2, steps_per_epoch=1, epochs=1, warmup_epochs=5, warmup_max_fraction=0.5,
                             kind="cosine")
    assert (schedule.total_steps, schedule.warmup_steps) == (1, 0)
    assert schedule(0) == pytest.approx(0.2)


@pytest.mark.parametrize("overrides, setting", [(["recipe.warmup_epochs=-1"], "recipe.warmup_epochs"),
                                                (["recipe.warmup_max_fraction=1"], "recipe.warmup_max_fraction"),
                                                (["recipe.warmup_max_fraction=-0.1"], "recipe.warmup_max_fraction")])
def test_bad_warmup_settings_are_refused(overrides, setting):
    with pytest.raises(ConfigError) as info:
        resolve(TrainConfig, overrides=overrides, explicit={"data": "/d", "model_dir": "/m"}).validate()
    assert info.value.setting == setting and f"{setting}=" in str(info.value)


@pytest.mark.parametrize("kind, warmup", [("cosine", 0.25), ("cosine", 0.0), ("step", 0.5), ("step", 0.0),
                                         ("constant", 0.5)])
def test_optimizer_learning_rate_equals_the_python_schedule(kind, warmup):
    """The rate the optimizer actually applies (graph ops, float32) is what metrics.json logs and the report plots:
    a plain SGD step on a variable with gradient 1 moves it by exactly the rate, read at the warmup's edges, the
    step boundaries and the last step (and past it)."""
    tf = pytest.importorskip("tensorflow")
    from imagenet_spark.train.schedules import keras_schedule

    schedule = make_schedule(peak_lr=0.4, steps_per_epoch=10, epochs=3, warmup_epochs=warmup,
                             warmup_max_fraction=WARMUP_MAX_FRACTION, kind=kind, step_epochs=(1, 2))
    w, total = schedule.warmup_steps, schedule.total_steps
    steps = sorted({0, 1, max(w - 1, 0), w, w + 1, 9, 10, 11, 19, 20, total - 1, total, total + 5})
    optimizer = tf.keras.optimizers.SGD(learning_rate=keras_schedule(schedule))
    weight = tf.Variable(0.0)
    applied = []
    for step in steps:
        optimizer.iterations.assign(step)
        weight.assign(0.0)
        optimizer.apply_gradients([(tf.constant(1.0), weight)])
        applied.append(-float(weight.numpy()))
    expected = [schedule(s) for s in steps]
    assert applied == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert expected[-2] == pytest.approx({"cosine": 0.0, "step": 0.004, "constant": 0.4}[kind], abs=1e-12), \
        "the run ends at the schedule's floor"
