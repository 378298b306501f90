"""MLflow tracking: a run in a file store under tmp_path holds the parameters, one value per epoch of every metric
and the model dir's artifacts; an unreachable server costs one warning, never an exception."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest

from imagenet_spark.config import resolve
from imagenet_spark.tracking import RUN_POINTER, Tracker, resolve_tracking_uri
from imagenet_spark.train_config import TrainConfig

HISTORY = [
    {"epoch": 1, "global_step": 6, "loss": 1.3, "top1": 0.4, "top5": 1.0, "images_per_s": 30.0, "learning_rate": 0.02,
     "train_time_s": 3.0, "attempt": 0, "val_loss": 1.2, "val_top1": 0.5, "val_top5": 1.0, "val_images": 12,
     "wall_time_s": 3.5},
    {"epoch": 2, "global_step": 12, "loss": 1.0, "top1": 0.6, "top5": 1.0, "images_per_s": 900.0,
     "learning_rate": 0.01, "train_time_s": 0.1, "attempt": 0, "val_loss": 0.9, "val_top1": 0.75, "val_top5": 1.0,
     "val_images": 12, "wall_time_s": 0.2},
    {"epoch": 3, "global_step": 18, "loss": 0.8, "top1": 0.8, "top5": 1.0, "images_per_s": 950.0,
     "learning_rate": 0.001, "train_time_s": 0.1, "attempt": 1, "val_loss": 0.7, "val_top1": 0.9, "val_top5": 1.0,
     "val_images": 12, "wall_time_s": 0.2},
]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """What a finished training leaves in its model dir (the SavedModel's bytes do not matter here)."""
    d = tmp_path / "runs" / "m"
    (d / "saved_model" / "variables").mkdir(parents=True)
    (d / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (d / "saved_model" / "variables" / "variables.index").write_bytes(b"index")
    (d / "labels.txt").write_text("0\tn01440764\ttench\n1\tn01443537\tgoldfish\n")
    (d / "metrics.json").write_text(json.dumps(HISTORY))
    (d / "config.json").write_text("{}")
    return d


@pytest.fixture
def file_store_allowed(monkeypatch):
    """Let the Tracker opt into MLflow's file store itself, and undo that after the test."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "x")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)


def _cfg(model_dir: Path) -> TrainConfig:
    return resolve(TrainConfig, explicit=dict(data="/data/ds", model_dir=str(model_dir), model="resnet_tiny",
                                              workers=2, backend="mwms", epochs=3, global_batch_size=32,
                                              **{"recipe.base_lr": 0.4, "recipe.warmup_epochs": 1}))


def test_run_records_params_epoch_metrics_and_artifacts(model_dir, tmp_path, file_store_allowed):
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "store").as_uri()
    with Tracker(uri=store, experiment="tests") as tracker:
        run_id = tracker.start(_cfg(model_dir), run_name="tiny")
        assert run_id
        for record in HISTORY[:2]:  # as the progress messages arrive on the driver
            tracker.log_epoch({"event": "epoch", **record, "epochs": 3})
        tracker.log_epoch({"event": "progress", "epoch": 3, "loss": 5.0})  # not an epoch: ignored
        # epoch 3's message was "lost": finish back-fills it from the history
        tracker.finish({"metrics": HISTORY[-1], "history": HISTORY,
                        "attempts": [{"attempt": 0, "status": "failed", "seconds": 4.0},
                                     {"attempt": 1, "status": "ok", "seconds": 2.0}]}, model_dir=str(model_dir))
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    params = run.data.params
    assert params["model"] == "resnet_tiny" and params["workers"] == "2" and params["global_batch_size"] == "32"
    assert float(params["peak_learning_rate"]) == pytest.approx(0.05) and params["per_worker_batch"] == "16"
    assert params["recipe.step_epochs"] == "30.0,60.0,80.0" and params["input.shard_by"] == "row_group"
    assert "step_epochs" not in params and "recipe" not in params  # settings by dotted key, sections flattened
    for key in ("loss", "top1", "val_top1", "val_top5", "images_per_s", "learning_rate", "wall_time_s", "attempt"):
        history = client.get_metric_history(run_id, key)
        assert sorted((m.step, m.value) for m in history) == [(r["epoch"], float(r[key])) for r in HISTORY], key
    assert run.data.metrics["attempts"] == 2 and run.data.metrics["failed_attempts"] == 1
    assert "epochs" not in run.data.metrics and "event" not in run.data.metrics
    assert run.data.tags["imagenet_spark.backend"] == "mwms"
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"saved_model", "labels.txt", "metrics.json", "config.json"} <= top
    assert {a.path for a in client.list_artifacts(run_id, "saved_model")} == {"saved_model/saved_model.pb",
                                                                             "saved_model/variables"}
    pointer = json.loads((model_dir / RUN_POINTER).read_text())
    assert pointer["run_id"] == run_id and pointer["tracking_uri"] == store


def test_default_store_is_beside_the_model_dir_and_uris_take_precedence(model_dir, monkeypatch, file_store_allowed):
    from mlflow.tracking import MlflowClient

    expected = (model_dir.parent / "mlruns").as_uri()
    assert resolve_tracking_uri(None, model_dir=str(model_dir)) == expected
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert resolve_tracking_uri(None, model_dir=str(model_dir)) == "http://mlflow.example:5000"
    assert resolve_tracking_uri("sqlite:///x.db", model_dir=str(model_dir)) == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "14.3")
    assert resolve_tracking_uri(None, model_dir=str(model_dir)) == "databricks"
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION")

    tracker = Tracker()  # the embedded default: a local file store, no server
    run_id = tracker.start(_cfg(model_dir))
    tracker.finish({"attempts": [{"attempt": 0, "status": "ok", "seconds": 1.0}]}, model_dir=str(model_dir))
    tracker.close("FINISHED")
    assert tracker.tracking_uri == expected and (model_dir.parent / "mlruns").is_dir()
    run = MlflowClient(tracking_uri=expected).get_run(run_id)
    assert run.data.metrics["val_top1"] == 0.9  # the history read from metrics.json (no live messages)
    # a second driver resuming the same model dir links its run to the first
    again = Tracker()
    second = again.start(_cfg(model_dir))
    again.close()
    tags = MlflowClient(tracking_uri=expected).get_run(second).data.tags
    assert tags["imagenet_spark.previous_run_id"] == run_id


def test_unreachable_server_warns_once_and_never_raises(model_dir, caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    tracker = Tracker(uri=uri, probe_timeout_s=2)
    with caplog.at_level(logging.WARNING, logger="imagenet_spark.tracking"):
        assert tracker.start(_cfg(model_dir)) is None
        tracker.log_epoch({"event": "epoch", **HISTORY[0]})
        tracker.finish({"history": HISTORY}, model_dir=str(model_dir))
        tracker.close("FAILED")
    assert time.monotonic() - started < 10, "a dead server must not hold up training"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert f"tracking URI {uri}: cannot connect" in warnings[0].getMessage()
    assert "Training continues without tracking" in warnings[0].getMessage()
    assert not tracker.active and not (model_dir / RUN_POINTER).exists()


def test_store_failure_and_disabled_tracking_do_not_raise(model_dir, tmp_path, caplog, file_store_allowed):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    with caplog.at_level(logging.WARNING, logger="imagenet_spark.tracking"):
        broken = Tracker(uri=blocker.as_uri())
        assert broken.start(_cfg(model_dir)) is None
        broken.log_epoch({"event": "epoch", **HISTORY[0]})
        broken.close("FINISHED")
    assert any("MLflow tracking (start" in r.getMessage() for r in caplog.records)

    off = Tracker(enabled=False)
    assert off.start(_cfg(model_dir)) is None
    off.log_epoch(HISTORY[0])
    off.finish({"history": HISTORY}, model_dir=str(model_dir))
    off.close()
    assert not (model_dir.parent / "mlruns").exists()


def test_exception_in_the_block_closes_the_run_as_failed(model_dir, tmp_path, file_store_allowed):
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "store").as_uri()
    with pytest.raises(RuntimeError, match="boom"), Tracker(uri=store) as tracker:
        run_id = tracker.start(_cfg(model_dir))
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=store).get_run(run_id).info.status == "FAILED"
