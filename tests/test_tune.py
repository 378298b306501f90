"""Hyperparameter search: the space, the samplers and the stopping rules (real Optuna, no Spark), then a whole
search with spark-submit on a local-cluster: 4 trials, 2 at once, one stopped early, one failing, the best
model kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagenet_spark.config import ConfigError, FlatSettingWarning, resolve
from imagenet_spark.search import (
    TrialRecord,
    TuneConfig,
    ask_trial,
    failure_streak,
    make_study,
    parse_param,
    plan_parallel,
    rungs,
    summary_table,
    trial_config,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]


def _cfg(**kw) -> TuneConfig:
    base = dict(data="/d", model_dir="/s", space={"recipe.base_lr": {"type": "loguniform", "low": 0.01, "high": 1.0}})
    base.update(kw)
    return resolve(TuneConfig, explicit=base)


@pytest.mark.parametrize("key, spec, match", [
    ("learning_rate_x", {"type": "uniform", "low": 0, "high": 1}, r"space.learning_rate_x=.*not a training setting"),
    ("base_lr", {"low": 0.1, "high": 1}, r"space.base_lr=.*expected a mapping with type"),
    ("base_lr", {"type": "uniform", "low": 1, "high": 1}, r"space.base_lr=.*needs low < high"),
    ("base_lr", {"type": "loguniform", "low": 0, "high": 1}, r"space.base_lr=.*log-uniform range must be positive"),
    ("model", {"type": "choice", "values": []}, r"space.model=.*non-empty list"),
    ("base_lr", {"type": "uniform", "low": "a", "high": 1}, r"space.base_lr=.*not a valid range"),
])
def test_bad_space_entries_name_the_key_and_the_fix(key, spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_param(key, spec)


def test_space_entries_become_distributions():
    assert parse_param("base_lr", {"type": "loguniform", "low": 0.01, "high": 1}).log
    assert parse_param("warmup_epochs", {"type": "int", "low": 1, "high": 5}).high == 5
    assert parse_param("model", {"type": "choice", "values": ["resnet18", "resnet34"]}).choices == \
        ("resnet18", "resnet34")


def test_search_settings_are_validated_up_front():
    with pytest.raises(ConfigError, match=r"space.model_dir=.*the search sets this itself"):
        _cfg(space={"model_dir": {"type": "choice", "values": ["a"]}})
    with pytest.raises(ConfigError, match=r"enqueue\[0\]=.*keys from the space"):
        _cfg(enqueue=[{"momentum": 0.8}])
    with pytest.raises(ConfigError, match=r"metric='accuracy'"):
        _cfg(metric="accuracy")
    with pytest.raises(ConfigError, match=r"space=\{\}: nothing to search"):
        _cfg(space={})
    # dotted --set overrides build the space as a user types it; search keys are the settings' dotted keys
    cfg = resolve(TuneConfig, overrides=["space.recipe.label_smoothing.low=0", "space.recipe.label_smoothing.high=0.2",
                                         "max_trials=3"],  # merged with the same key written dotted
                  explicit=dict(data="/d", model_dir="/s", space={"recipe.label_smoothing": {"type": "uniform"}}))
    assert cfg.space == {"recipe.label_smoothing": {"type": "uniform", "low": 0, "high": 0.2}} and cfg.max_trials == 3
    with pytest.warns(FlatSettingWarning, match="label_smoothing -> recipe.label_smoothing"):  # the old flat key
        old = _cfg(space={"label_smoothing": {"type": "uniform", "low": 0, "high": 0.2}},
                   enqueue=[{"label_smoothing": 0.1}])
    assert set(old.space) == {"recipe.label_smoothing"} and old.enqueue == ({"recipe.label_smoothing": 0.1},)


def test_rungs_are_geometric_and_stop_before_the_last_epoch():
    assert rungs(epochs=30, min_epochs=3, reduction_factor=3, early_stopping="successive_halving") == [3, 9, 27]
    assert rungs(epochs=3, min_epochs=1, reduction_factor=2, early_stopping="median") == [1, 2]
    assert rungs(epochs=4, min_epochs=2, reduction_factor=2, early_stopping="median") == [2]
    assert rungs(epochs=30, min_epochs=3, reduction_factor=3, early_stopping="none") == []


def test_trial_config_layers_preset_fixed_sampled_and_owned_settings():
    cfg = _cfg(train={"workers": 2, "epochs": 4, "recipe": {"base_lr": 0.2, "warmup_epochs": 1}}, metric="val_loss",
               inject_failure_trial=5)
    preset = {"model": "resnet_tiny", "recipe": {"base_lr": 0.1, "momentum": 0.8}, "global_batch_size": 64}
    t = trial_config(cfg, preset, {"recipe.base_lr": 0.05}, number=5)
    assert (t.model, t.workers, t.recipe.base_lr, t.global_batch_size) == ("resnet_tiny", 2, 0.05, 64)
    assert (t.recipe.momentum, t.recipe.warmup_epochs) == (0.8, 1.0), "sections merge, not replace"
    assert t.model_dir.rstrip("/").endswith("trial-005") and t.output.export == "best"
    assert t.output.best_metric == "val_loss"
    assert (t.faults.fail_at_step, t.launch.max_retries) == (1, 0), "the fault-injection trial crashes once, unretried"
    assert trial_config(cfg, preset, {}, number=4).faults.fail_at_step is None
    with pytest.raises(ConfigError, match="global_batch_size=65"):  # a sampled value the trainer cannot take
        trial_config(cfg, preset, {"global_batch_size": 65}, number=1)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_samplers_stay_in_the_space_and_try_enqueued_values_first(sampler):
    from imagenet_spark.search import parse_param as p

    cfg = _cfg(sampler=sampler, startup_trials=2, space={
        "recipe.base_lr": {"type": "loguniform", "low": 0.01, "high": 1.0},
        "global_batch_size": {"type": "choice", "values": [32, 64]}},
        enqueue=[{"recipe.base_lr": 0.4, "global_batch_size": 64}])
    study = make_study(cfg, direction="maximize")
    dists = {k: p(k, v) for k, v in cfg.space.items()}
    seen = []
    for i in range(8):
        trial = ask_trial(study, dists, cfg.enqueue[i] if i < len(cfg.enqueue) else None)
        seen.append(trial.params)
        study.tell(trial, 1.0 - abs(trial.params["recipe.base_lr"] - 0.3))  # an objective with a clear optimum
    assert seen[0] == {"recipe.base_lr": 0.4, "global_batch_size": 64}
    assert all(0.01 <= s["recipe.base_lr"] <= 1.0 and s["global_batch_size"] in (32, 64) for s in seen)
    assert len({round(s["recipe.base_lr"], 8) for s in seen}) == 8, "fresh values, not repeats"


def test_median_rule_stops_a_trial_behind_at_the_rung():
    cfg = _cfg(early_stopping="median")
    study = make_study(cfg, direction="maximize")
    dists = {"recipe.base_lr": parse_param("recipe.base_lr", cfg.space["recipe.base_lr"])}
    import optuna

    for value in (0.6, 0.7):
        trial = study.ask(dists)
        trial.report(value, step=1)
        study.tell(trial, value)
    behind, ahead = study.ask(dists), study.ask(dists)
    behind.report(0.25, step=1)
    ahead.report(0.8, step=1)
    assert behind.should_prune() and not ahead.should_prune()
    study.tell(behind, state=optuna.trial.TrialState.PRUNED)


def test_parallel_trials_fit_the_slots_and_the_driver_says_which():
    assert plan_parallel(slots=4, workers=2, max_parallel_trials=2, max_trials=8) == \
        (2, "2 trials run at once, 2 worker(s) each")
    assert plan_parallel(slots=6, workers=2, max_parallel_trials=4, max_trials=8) == \
        (3, "3 trials run at once, 2 worker(s) each (the cluster's 6 slots fit 3)")
    assert plan_parallel(slots=2, workers=2, max_parallel_trials=2, max_trials=8) == \
        (1, "trials run one after another: the cluster has 2 slots, room for one barrier stage of 2 workers "
            "(max_parallel_trials=2 needs 4)")
    assert plan_parallel(slots=8, workers=1, max_parallel_trials=1, max_trials=8)[1] == "trials run one after another"


def test_a_run_of_failures_stops_the_search_but_one_does_not():
    ok, bad = TrialRecord(trial=0, params={}, status="completed"), TrialRecord(trial=1, params={}, status="failed",
                                                                                error="X: y")
    assert failure_streak([ok, bad, bad], 3) == ""
    assert "3 trials in a row failed (stop_after_failures=3)" in failure_streak([ok, bad, bad, bad], 3)
    assert failure_streak([bad, TrialRecord(trial=2, params={}, status="running")], 1)


def test_results_table_csv_and_json(tmp_path):
    cfg = _cfg(model_dir=str(tmp_path))
    records = [TrialRecord(trial=0, params={"base_lr": 0.1}, status="completed", best=0.75, best_epoch=3,
                           epochs_run=3, model_dir="m0"),
               TrialRecord(trial=1, params={"base_lr": 0.5, "label_smoothing": 0.1}, status="failed",
                           error="TrainingFailedError: boom")]
    write_results(cfg, records, {"status": "done"})
    lines = (tmp_path / "trials.csv").read_text().splitlines()
    assert lines[0].endswith("param.base_lr,param.label_smoothing") and lines[1].startswith("0,completed,0.75,3,3,")
    doc = json.loads((tmp_path / "trials.json").read_text())
    assert doc["trials"][1]["error"] == "TrainingFailedError: boom" and doc["status"] == "done"
    table = summary_table(records, "val_top1")
    assert "0.7500" in table and "(TrainingFailedError: boom)" in table


@pytest.mark.slow
@pytest.mark.cluster
def test_search_on_local_cluster_stops_early_survives_a_failure_and_keeps_the_best(dataset, tmp_path):
    """4 trials of 3 epochs, 1 worker each, 2 at once on local-cluster[2,1,1024] through spark-submit: trial 2
    crashes (fault injection), trial 3 cannot learn (tiny learning rate) and is stopped at the epoch-1 rung."""
    search = tmp_path / "search"
    enqueue = ("enqueue=[{recipe: {base_lr: 0.4, label_smoothing: 0.1}}, "
               "{recipe: {base_lr: 0.25, label_smoothing: 0.0}}, {recipe: {base_lr: 0.3, label_smoothing: 0.05}}, "
               "{recipe: {base_lr: 0.00001, label_smoothing: 0.0}}]")
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local-cluster[2,1,1024]",
           "--driver-java-options", f"-Dlog4j2.configurationFile={REPO / 'conf/spark/log4j2.properties'}",
           "--conf", "spark.scheduler.barrier.maxConcurrentTasksCheck.interval=1s",
           "--conf", "spark.barrier.sync.timeout=300s",
           str(REPO / "jobs/tune.py"), "--config", str(REPO / "conf/tune/smoke.yaml"), "--data", str(dataset),
           "--model-dir", str(search), "--set", "space.recipe.base_lr.low=0.00001", "--set", enqueue,
           "--set", "inject_failure_trial=2", "--set", "train.launch.slots_wait_s=90"]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "search: 4 trials, 2 trials run at once, 1 worker(s) each;" in out
    assert "trial 3: epoch 1/3 done" in out, "progress lines say which trial they belong to"

    doc = json.loads((search / "trials.json").read_text())
    trials = {t["trial"]: t for t in doc["trials"]}
    assert doc["rungs"] == [1, 2] and doc["parallel_trials"] == 2
    assert trials[2]["status"] == "failed" and "TrainingFailedError" in trials[2]["error"], trials[2]
    assert trials[3]["status"] == "pruned" and trials[3]["epochs_run"] < 3, trials[3]
    assert not (search / "trial-003" / "saved_model").exists(), "a stopped trial exports nothing"
    completed = [t for t in trials.values() if t["status"] == "completed"]
    assert {t["trial"] for t in completed} <= {0, 1} and completed
    for t in completed:
        history = json.loads((Path(t["model_dir"]) / "metrics.json").read_text())
        assert [r["epoch"] for r in history] == [1, 2, 3], "paused at the rungs, resumed, each epoch once"
        assert t["best"] == max(r["val_top1"] for r in history) and t["epochs_run"] == 3 and t["launches"] == 3
    best = max(completed, key=lambda t: t["best"])
    assert doc["best"]["trial"] == best["trial"] and doc["best"]["value"] == best["best"]
    kept = json.loads((search / "best" / "trial.json").read_text())
    assert kept["trial"] == best["trial"]
    assert (search / "best" / "labels.txt").read_text() == (dataset / "labels.txt").read_text()
    assert (search / "best" / "saved_model" / "saved_model.pb").read_bytes() == \
        (Path(best["model_dir"]) / "saved_model" / "saved_model.pb").read_bytes()
    csv_lines = (search / "trials.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("trial,status,val_top1,")


@pytest.mark.slow
@pytest.mark.cluster
def test_search_driver_killed_mid_trial_then_resumed(dataset, tmp_path):
    """spark-submit (local[2]) is SIGKILLed while trial 1 trains; the same command with --resume keeps trial 0 as
    it was, resumes trial 1 with the same values from its checkpoint (no epoch recorded twice), runs trial 2."""
    import signal
    import time

    search = tmp_path / "search"
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]",
           "--driver-java-options", f"-Dlog4j2.configurationFile={REPO / 'conf/spark/log4j2.properties'}",
           str(REPO / "jobs/tune.py"), "--config", str(REPO / "conf/tune/smoke.yaml"), "--data", str(dataset),
           "--model-dir", str(search), "--max-trials", "3", "--max-parallel-trials", "1", "--sampler", "random",
           "--set", "early_stopping=none", "--set", "train.epochs=4"]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    log_file = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                             start_new_session=True)
    metrics = search / "trial-001" / "metrics.json"
    deadline = time.monotonic() + 600
    try:
        while not (metrics.exists() and json.loads(metrics.read_text())):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "trial 1 never finished an epoch"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = json.loads((search / "trials.json").read_text())
    assert [(t["trial"], t["status"]) for t in before["trials"]] == [(0, "completed"), (1, "running")]
    trial0_mtime = (search / "trial-000" / "metrics.json").stat().st_mtime_ns

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    out = again.stdout + again.stderr
    assert again.returncode == 1 and "pass --resume to continue it" in out, out[-3000:]
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-5000:]
    assert "resuming the search: 1 trial(s) finished before, 1 to continue (1)" in out
    doc = json.loads((search / "trials.json").read_text())
    trials = {t["trial"]: t for t in doc["trials"]}
    assert [t["status"] for t in doc["trials"]] == ["completed"] * 3
    assert trials[0] == before["trials"][0], "a finished trial is kept as it was"
    assert trials[1]["params"] == before["trials"][1]["params"], "the unfinished trial resumes with its values"
    assert (search / "trial-000" / "metrics.json").stat().st_mtime_ns == trial0_mtime
    history = json.loads((search / "trial-001" / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4], "resumed from its checkpoint, each epoch once"
    assert (search / "best" / "saved_model" / "saved_model.pb").exists()
