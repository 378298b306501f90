"""The MLflow run opened in a thread at the first progress report (jobs/train.py ``_DeferredTracking``) still ends
FINISHED with the parameters and one value per epoch: the driver joins the thread before ``finish``."""

from __future__ import annotations

import json

from imagenet_spark.config import resolve
from imagenet_spark.jobs.train import run_training
from imagenet_spark.tracking import RUN_POINTER
from imagenet_spark.train_config import TrainConfig


def test_background_tracking_start_records_the_whole_run(spark, dataset, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = (tmp_path / "store").as_uri()
    model_dir = tmp_path / "m"
    cfg = resolve(TrainConfig, explicit=dict(data=str(dataset), model_dir=str(model_dir), model="resnet_tiny",
                                             workers=1, backend="off", epochs=2, global_batch_size=32,
                                             warmup_epochs=0, seed=1, tracking_uri=store, progress_every_s=1))
    result = run_training(spark, cfg)
    pointer = json.loads((model_dir / RUN_POINTER).read_text())
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(pointer["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "resnet_tiny" and float(run.data.params["epochs"]) == 2
    history = client.get_metric_history(pointer["run_id"], "loss")
    assert sorted(m.step for m in history) == [1, 2]  # every epoch once, live or back-filled
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == \
        [r["loss"] for r in result["history"]]
