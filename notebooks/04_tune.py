# Databricks notebook source
# MAGIC %md
# MAGIC # 04 · Hyperparameter search
# MAGIC
# MAGIC Searches training settings on the dataset from notebook 01 and keeps the most accurate model, with the same
# MAGIC library call as `spark-submit jobs/tune.py` (`imagenet_spark.jobs.tune.run_search`). Each trial is a whole barrier
# MAGIC training in `SEARCH_DIR/trial-NNN`; trials run at once when the cluster has slots for several; trials clearly
# MAGIC behind at an epoch checkpoint are stopped there; the best trial's model is copied to
# MAGIC `SEARCH_DIR/best/saved_model`.
# MAGIC
# MAGIC **Widgets.** `space` (a YAML mapping: `key: {type: loguniform|uniform|int|choice, ...}` over any training
# MAGIC setting), `max_trials`, `max_parallel_trials`, `sampler` (`tpe` or `random`), `early_stopping`
# MAGIC (`successive_halving`, `median`, `none`), and the fixed training settings every trial shares (`model`,
# MAGIC `workers`, `backend`, `epochs`, `batch`, `train_settings`). `mode`: `auto` continues the search already in
# MAGIC `search_dir` (running the cell again never repeats a finished trial), `overwrite` starts over.

# COMMAND ----------

import typing

import yaml

from imagenet_spark import notebook as nb
from imagenet_spark.config import Backend, resolve
from imagenet_spark.data import fs
from imagenet_spark.jobs.tune import run_search
from imagenet_spark.layout import ModelDir
from imagenet_spark.models import available
from imagenet_spark.search import EarlyStopping, Sampler, TuneConfig

nb.setup_logging()
work = nb.work_dir()
data = nb.widget("data", nb.join(work, "dataset"), label="Dataset (output of notebook 01)")
search_dir = nb.widget("search_dir", nb.join(work, "search"), label="Search dir (trials, best model)")
space = nb.widget("space", "{recipe.base_lr: {type: loguniform, low: 0.05, high: 1.0}, "
                           "recipe.label_smoothing: {type: uniform, low: 0.0, high: 0.2}}", label="Search space (YAML)")
max_trials = nb.widget_int("max_trials", 4, label="Trials")
max_parallel = nb.widget_int("max_parallel_trials", 2, label="Trials at once (if the cluster has the slots)")
sampler = nb.widget("sampler", "tpe", list(typing.get_args(Sampler)), label="Sampler")
early_stopping = nb.widget("early_stopping", "successive_halving", list(typing.get_args(EarlyStopping)),
                           label="Early stopping")
model = nb.widget("model", "resnet_tiny", available(), label="Model")
workers = nb.widget_int("workers", 1, label="Workers per trial")
backend = nb.widget("backend", "off", list(typing.get_args(Backend)), label="Backend")
epochs = nb.widget_float("epochs", 3, label="Epochs per trial")
batch = nb.widget_int("batch", 32, label="Global batch size")
settings = nb.widget("train_settings", "recipe.warmup_epochs=1 tracking.track=false",
                     label="More training settings: key=value ...")
mode = nb.widget("mode", "auto", ["auto", "overwrite"], label="auto: continue a search there; overwrite: start over")

# COMMAND ----------

spark = nb.spark_session(app_name="04_tune")
train = {"model": model, "workers": workers, "backend": backend, "epochs": epochs, "global_batch_size": batch}
for item in nb.settings(settings):
    key, _, value = item.partition("=")
    train[key.strip()] = yaml.safe_load(value)
existing = fs.exists(ModelDir(search_dir).trials_json)
cfg = resolve(TuneConfig, explicit=dict(
    data=data, model_dir=search_dir, train=train, space=yaml.safe_load(space), max_trials=max_trials,
    max_parallel_trials=max_parallel, sampler=sampler, early_stopping=early_stopping,
    overwrite=mode == "overwrite" or None, resume=(mode == "auto" and existing) or None))
nb.show({"trials": cfg.max_trials, "at once (at most)": cfg.max_parallel_trials, "sampler": cfg.sampler,
         "early stopping": cfg.early_stopping, "metric": cfg.metric, "space": cfg.space, "every trial": cfg.train,
         "continues an earlier search": cfg.resume}, title="Search")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Search
# MAGIC Progress lines name their trial; the summary table closes the output.

# COMMAND ----------

result = run_search(spark, cfg)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Result
# MAGIC One row per trial (`SEARCH_DIR/trials.csv` holds the same), and the best trial: its values, its best epoch and
# MAGIC where its model is (`predict` and notebook 03 take `SEARCH_DIR/best` as a model dir).

# COMMAND ----------

nb.show([{"trial": t["trial"], "status": t["status"], cfg.metric: t["best"], "best epoch": t["best_epoch"],
          "epochs run": t["epochs_run"], **{f"param.{k}": v for k, v in t["params"].items()}, "error": t["error"]}
         for t in result["trials"]], title="Trials")
nb.show(result["best"], title="Best trial")
