"""The trainer and the search never destroy the dataset and never publish garbage models (issue #14).

Real Spark (the shared local[2] session) and real TensorFlow on the tiny ``dataset`` fixture: model dirs that
overlap the data or belong to someone else are refused before any work and left byte-identical, one job per
model dir, non-finite settings refused at validation, a diverging run stopped with the step and the learning
rate (nothing exported, not retried, strict JSON left behind), and the search records a diverged trial and
goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imagenet_spark import jsonio, ownership
from imagenet_spark.config import ConfigError, PartitionConfig, resolve, to_dict, with_settings
from imagenet_spark.jobs.train import run_training
from imagenet_spark.train.divergence import DivergedError
from imagenet_spark.train.planning import check_model_dir
from imagenet_spark.train_config import TrainConfig


def _cfg(data: Path, model_dir: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), model_dir=str(model_dir), model="resnet_tiny", workers=1, backend="off", epochs=1,
                global_batch_size=16, base_lr=0.1, warmup_epochs=0, seed=1, progress_every_s=1, track=False)
    base.update(kw)
    return resolve(TrainConfig, explicit=base)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the hash of its bytes (and every directory), to prove nothing changed."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def _strict(path: Path):
    return jsonio.loads_strict(path.read_text())


# --------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", ".nan", "-.inf"])
def test_non_finite_settings_are_refused_at_validation(raw):
    with pytest.raises(ConfigError, match=r"must be a finite number") as info:
        resolve(TrainConfig, overrides=[f"recipe.base_lr={raw}"], explicit=dict(data="/d", model_dir="/m"))
    assert info.value.setting == "recipe.base_lr" and "Fix:" in str(info.value)
    with pytest.raises(ConfigError, match=r"recipe.step_epochs\[1\]"):
        resolve(TrainConfig, overrides=[f"recipe.step_epochs=[30, {raw}]"], explicit=dict(data="/d", model_dir="/m"))
    with pytest.raises(ConfigError) as info:
        resolve(PartitionConfig, overrides=[f"max_reject_fraction={raw}"], explicit=dict(input="/i", output="/o"))
    assert info.value.setting == "max_reject_fraction"


def test_non_finite_values_are_refused_however_the_config_was_built():
    cfg = resolve(TrainConfig, explicit=dict(data="/d", model_dir="/m", model="resnet_tiny"))
    for field, value in (("recipe.base_lr", math.nan), ("recipe.momentum", math.inf), ("epochs", math.inf),
                         ("recipe.step_epochs", (1.0, math.nan))):
        bad = with_settings(cfg, {field: value})
        with pytest.raises(ConfigError, match="finite") as info:
            bad.validate()
        assert info.value.setting == field


def test_absurd_but_finite_settings_stay_allowed():
    cfg = resolve(TrainConfig, overrides=["base_lr=1e9", "step_factor=1e9"],
                  explicit=dict(data="/d", model_dir="/m", model="resnet_tiny"))
    assert cfg.recipe.base_lr == 1e9


def test_json_files_users_read_are_strict():
    text = jsonio.dumps({"loss": math.nan, "top": [1.0, math.inf, -math.inf], "n": 3, "ok": 0.5})
    assert jsonio.loads_strict(text) == {"loss": None, "top": [1.0, None, None], "n": 3, "ok": 0.5}
    with pytest.raises(ValueError, match="NaN"):
        jsonio.loads_strict(json.dumps({"loss": math.nan}))


# --------------------------------------------------------------------------------------------------
# Model dirs


def test_model_dir_overlapping_the_data_is_refused_and_the_data_untouched(spark, dataset, tmp_path):
    """The issue's case (--model-dir equal to --data, rerun with --overwrite) and its relatives, for training and
    for the search: refused before any work, every byte of the dataset (and its parent) unchanged."""
    from imagenet_spark.jobs.tune import TuneConfig, run_search

    before = _snapshot(dataset.parent)
    cases = [(dataset, "is the same directory as"), (dataset / "models" / "m", "lies inside"),
             (dataset.parent, "contains")]
    for model_dir, relation in cases:
        for overwrite in (False, True):
            with pytest.raises(ConfigError, match=relation) as info:
                run_training(spark, _cfg(dataset, model_dir, overwrite=overwrite))
            assert info.value.setting == "model_dir" and "Fix: give model_dir a path outside data" in str(info.value)
    search = resolve(TuneConfig, explicit=dict(data=str(dataset), model_dir=str(dataset), overwrite=True,
                                               space={"base_lr": {"type": "loguniform", "low": 0.01, "high": 1}}))
    with pytest.raises(ConfigError, match="is the same directory as"):
        run_search(spark, search)
    assert _snapshot(dataset.parent) == before


def test_a_folder_the_trainer_did_not_make_is_never_written(spark, dataset, tmp_path):
    user = tmp_path / "photos"
    (user / "2024").mkdir(parents=True)
    (user / "cat.jpg").write_bytes(b"\xff\xd8 not really")
    (user / "2024" / "config.json").write_text('{"camera": "x"}')
    (user / "config.json").write_text('{"camera": "y"}')  # a config.json that is not ours is no proof
    before = _snapshot(user)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"is not empty \(.*cat.jpg.*\) and was not made by this job") as info:
            run_training(spark, _cfg(dataset, user, overwrite=overwrite))
        assert str(user) in str(info.value) and "Fix:" in str(info.value)
    assert _snapshot(user) == before
    # a search dir is not a model dir either (and vice versa)
    search = tmp_path / "search"
    ownership.write_mark(str(search), "search")
    with pytest.raises(ConfigError, match="holds an imagenet-spark search, not a model dir"):
        run_training(spark, _cfg(dataset, search, overwrite=True))


def test_model_dirs_from_before_the_marker_are_recognised_by_their_config(dataset, tmp_path):
    legacy = tmp_path / "old-run"
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.json").write_text(json.dumps(to_dict(_cfg(dataset, legacy))))
    assert check_model_dir(_cfg(dataset, legacy)) is True
    assert check_model_dir(_cfg(dataset, tmp_path / "new")) is False
    (legacy / "config.json").write_text(json.dumps({"model": "resnet_tiny"}))
    with pytest.raises(ConfigError, match="was not made by this job"):
        check_model_dir(_cfg(dataset, legacy))


def test_two_trainings_on_one_model_dir(spark, dataset, tmp_path):
    """The second is refused naming the holder while the first trains; the first finishes unharmed."""
    model_dir = tmp_path / "m"
    outcome: dict = {}

    def first() -> None:
        try:
            outcome["result"] = run_training(spark, _cfg(dataset, model_dir, epochs=2), label="first")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    lease = model_dir / ownership.LEASE
    deadline = time.monotonic() + 120
    while not lease.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease.exists(), outcome
    with pytest.raises(ownership.LeaseHeldError, match=r"is in use by imagenet-spark train \(first\) by .*\(pid "
                                                       rf"{os.getpid()}\)") as info:
        run_training(spark, _cfg(dataset, model_dir, epochs=2, overwrite=True))
    assert info.value.setting == "model_dir"
    thread.join(timeout=600)
    assert "error" not in outcome, outcome
    assert outcome["result"]["metrics"]["epoch"] == 2
    assert (model_dir / "saved_model" / "saved_model.pb").exists() and not lease.exists()
    assert ownership.read_mark(str(model_dir)).kind == "model_dir"
    _strict(model_dir / "metrics.json")
    _strict(model_dir / "config.json")


# --------------------------------------------------------------------------------------------------
# Divergence


def test_divergence_mid_run_stops_with_step_and_rate_and_exports_nothing(spark, dataset, tmp_path):
    """Epoch 1 trains at a sane rate; the step schedule then multiplies it by 1e9 (absurd but finite, so
    allowed): the run stops within a few steps of epoch 2, names the step and the rate, exports nothing,
    checkpoints nothing of the diverged state, and leaves a strict metrics.json with epoch 1 only."""
    model_dir = tmp_path / "m"
    cfg = _cfg(dataset, model_dir, epochs=3, schedule="step", step_epochs=(1.0,), step_factor=1e9)
    with pytest.raises(DivergedError) as info:
        run_training(spark, cfg)
    exc = info.value
    steps_per_epoch = 240 // 16
    assert steps_per_epoch < exc.step <= 2 * steps_per_epoch, exc.step
    first, last = map(int, re.search(r"first bad step between (\d+) and (\d+)", str(exc)).groups())
    assert last == exc.step and last - first < cfg.loop.divergence_check_steps == 10, "checked at most 10 steps apart"
    assert exc.learning_rate == pytest.approx(cfg.learning_rate * 1e9)
    text = str(exc)
    assert f"global step {exc.step}" in text and "learning rate" in text and "Fix: lower recipe.base_lr" in text
    assert not (model_dir / "saved_model").exists()
    history = _strict(model_dir / "metrics.json")
    assert [r["epoch"] for r in history] == [1] and math.isfinite(history[0]["loss"])
    ckpts = sorted(p.name for p in (model_dir / "checkpoints").glob("ckpt-*.index"))
    assert ckpts == [f"ckpt-{steps_per_epoch}.index"], "nothing past the last finite state was checkpointed"
    _strict(model_dir / "config.json")
    assert not (model_dir / ownership.LEASE).exists()


def test_divergence_via_the_cli_exits_non_zero_without_a_model(dataset, tmp_path):
    model_dir = tmp_path / "m"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    proc = subprocess.run([sys.executable, "-m", "imagenet_spark", "train", "--master", "local[2]", "--data",
                           str(dataset), "--model-dir", str(model_dir), "--model", "resnet_tiny", "--workers", "1",
                           "--backend", "off", "--epochs", "2", "--global-batch-size", "16", "--max-retries", "2",
                           "--set", "base_lr=1e9", "--set", "warmup_epochs=0", "--set", "track=false"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert "DivergedError: training diverged" in out and "learning rate" in out and "global step" in out, \
        out[-4000:]
    assert "retry 1/" not in out, "a diverged run is not relaunched"
    assert not (model_dir / "saved_model").exists()
    assert not list((model_dir / "checkpoints").glob("ckpt-*.index")) if (model_dir / "checkpoints").exists() \
        else True


def test_the_search_records_a_diverged_trial_and_goes_on(spark, dataset, tmp_path):
    """Trial 0 diverges (base_lr=1e9), trial 1 trains: the first is 'failed' with failure 'diverged' and does not
    count towards stop_after_failures=1; trials.json and trial.json are strict JSON."""
    from imagenet_spark.jobs.tune import TuneConfig, run_search

    search = tmp_path / "search"
    cfg = resolve(TuneConfig, explicit=dict(
        data=str(dataset), model_dir=str(search), max_trials=2, early_stopping="none", sampler="random",
        stop_after_failures=1,
        train={"model": "resnet_tiny", "workers": 1, "backend": "off", "epochs": 1, "global_batch_size": 16,
               "warmup_epochs": 0, "track": False, "progress_every_s": 1},
        space={"base_lr": {"type": "loguniform", "low": 0.01, "high": 1e9}},
        enqueue=({"base_lr": 1e9}, {"base_lr": 0.1})))
    result = run_search(spark, cfg)
    trials = {t["trial"]: t for t in result["trials"]}
    assert trials[0]["status"] == "failed" and trials[0]["failure"] == "diverged", trials[0]
    assert trials[0]["error"].startswith("DivergedError: training diverged"), trials[0]
    assert not (search / "trial-000" / "saved_model").exists()
    assert trials[1]["status"] == "completed" and result["best"]["trial"] == 1
    doc = _strict(search / "trials.json")
    assert [t["failure"] for t in doc["trials"]] == ["diverged", ""]
    _strict(search / "best" / "trial.json")
    assert ownership.read_mark(str(search)).kind == "search"
    assert ownership.read_mark(str(search / "trial-001")).kind == "model_dir"
    assert not (search / ownership.LEASE).exists()
