# Databricks notebook source
# MAGIC %md
# MAGIC # 02 · Train, distributed
# MAGIC
# MAGIC Trains AlexNet or ResNet on the dataset from notebook 01 in a Spark barrier stage, one TensorFlow worker per
# MAGIC task, launched from this notebook's SparkSession by the library (`imagenet_spark.jobs.train.run_training`,
# MAGIC the same as `spark-submit jobs/train_barrier.py`). Progress (epoch, step, loss, images/s, ETA) appears in this
# MAGIC cell's output while training runs. Checkpoints are written every epoch; a failed attempt is relaunched from
# MAGIC the newest one, and running the cell again resumes the run in `model_dir`.
# MAGIC
# MAGIC **Widgets.** `model` (`resnet50`, `alexnet`, ..., or a tiny variant), `workers` (= barrier tasks; the cluster
# MAGIC needs that many task slots, one GPU each on a GPU cluster), `backend` (`mwms` = MultiWorkerMirroredStrategy,
# MAGIC `horovod`, or `off` for one worker), `epochs`, `batch` (global batch, split evenly over the workers; the
# MAGIC learning rate scales with it), `train_preset` (`conf/train/*.yaml`) and `train_settings` (`key=value ...`).
# MAGIC The defaults train the tiny ResNet on the fake dataset with one worker; set `workers=2`, `backend=mwms` for a
# MAGIC distributed run. Cluster settings barrier training needs: `conf/spark/databricks-cluster.json`.

# COMMAND ----------

import typing

from imagenet_spark import notebook as nb
from imagenet_spark.config import Backend, resolve
from imagenet_spark.train_config import TrainConfig
from imagenet_spark.models import available
from imagenet_spark.report import render_report
from imagenet_spark.jobs.train import run_training

nb.setup_logging()
work = nb.work_dir()
data = nb.widget("data", nb.join(work, "dataset"), label="Dataset (output of notebook 01)")
model_dir = nb.widget("model_dir", nb.join(work, "model"), label="Model dir (checkpoints, export, metrics)")
model = nb.widget("model", "resnet_tiny", available(), label="Model")
workers = nb.widget_int("workers", 1, label="Workers (barrier tasks)")
backend = nb.widget("backend", "off", list(typing.get_args(Backend)),
                    label="Backend")
epochs = nb.widget_float("epochs", 3, label="Epochs")
batch = nb.widget_int("batch", 32, label="Global batch size")
image_size = nb.widget("image_size", "", label="Image size (empty: the model's)")
preset = nb.widget("train_preset", "", label="YAML preset (conf/train/...), optional")
settings = nb.widget("train_settings", "recipe.base_lr=0.4 recipe.warmup_epochs=1 loop.progress_every_s=5",
                     label="More settings: key=value ...")
overwrite = nb.widget_bool("overwrite", False, label="Start over in model_dir")

# COMMAND ----------

spark = nb.spark_session(app_name="02_train_distributed")
cfg = resolve(TrainConfig, preset=preset or None, overrides=nb.settings(settings),
              explicit=dict(data=data, model_dir=model_dir, model=model, workers=workers, backend=backend,
                            epochs=epochs, global_batch_size=batch,
                            image_size=int(image_size) if image_size else None, overwrite=overwrite or None))
nb.show({"model": cfg.model, "workers": cfg.workers, "backend": cfg.backend, "epochs": cfg.epochs,
         "global batch": cfg.global_batch_size, "per-worker batch": cfg.per_worker_batch,
         "peak learning rate": cfg.learning_rate, "data": cfg.data, "model dir": cfg.model_dir}, title="Run")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Train
# MAGIC One line per progress report and one per finished epoch, live.

# COMMAND ----------

result = run_training(spark, cfg)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Result
# MAGIC Per-epoch metrics (`MODEL_DIR/metrics.json`), the attempts (a relaunch after a failure shows here), and the
# MAGIC report: curves, learning-rate schedule, throughput and a grid of validation predictions
# MAGIC (`imagenet-spark report --model-dir ...` renders the same).

# COMMAND ----------

nb.show(result["history"], title="Per epoch")
nb.show(result["attempts"], title="Attempts")
report = render_report(cfg.model_dir, grid=nb.widget_int("report_grid", 16))
for name in ("curves", "lr", "throughput", "predictions"):
    if name in report:
        nb.show_image(report[name], title=name)
nb.show(report, title="Report files")
