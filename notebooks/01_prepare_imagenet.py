# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Prepare ImageNet
# MAGIC
# MAGIC Turns raw ImageNet (any of its layouts: ILSVRC folders, the `.tar` downloads, Kaggle, class folders, CSV) into
# MAGIC the Petastorm Parquet dataset the trainer reads: cleaned, resized, re-encoded, partitioned by synset, with a
# MAGIC manifest that accounts for every input. The work is the partition job of the library
# MAGIC (`imagenet_spark.jobs.partition.run_partition`), the same as `spark-submit jobs/partition.py`.
# MAGIC
# MAGIC **Widgets.** `input`: the raw dataset (a path the executors can read: `/dbfs/...`, `dbfs:/...`, `s3a://...`);
# MAGIC leave it empty to generate a small synthetic ImageNet in the work folder. `output`: where the dataset is
# MAGIC published. `mode`: `resume` (default: continue an interrupted run, or reuse a finished one), `overwrite`
# MAGIC (rebuild), `new` (refuse if something is there). `partition_preset`: a YAML preset (`conf/partition/...`).
# MAGIC `partition_settings`: more `key=value` settings separated by spaces (`quality=85 max_reject_fraction=0.001`,
# MAGIC see the README).
# MAGIC
# MAGIC Outside Databricks this file runs as a plain script (`python notebooks/01_prepare_imagenet.py`); widgets are
# MAGIC then read from `IMAGENET_SPARK_<NAME>` environment variables.

# COMMAND ----------

import typing

from imagenet_spark import notebook as nb
from imagenet_spark.config import Layout, PartitionConfig, resolve
from imagenet_spark.jobs.partition import run_partition
from imagenet_spark.data.samples import manifest_tables
from imagenet_spark.report import render_sample_grid

nb.setup_logging()
work = nb.work_dir()
source = nb.widget("input", "", label="Raw ImageNet (empty: generate fake data)")
output = nb.widget("output", nb.join(work, "dataset"), label="Output dataset")
layout = nb.widget("layout", "auto", list(typing.get_args(Layout)), label="Input layout")
mode = nb.widget("mode", "resume", ["resume", "overwrite", "new"], label="If the output exists")
resize_short = nb.widget("resize_short", "256", label="Short side after resize (none: keep)")
preset = nb.widget("partition_preset", "", label="YAML preset (conf/partition/...), optional")
settings = nb.widget("partition_settings", "" if source else "images_per_task=32 rows_per_row_group=8",
                     label="More settings: key=value ...")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Input
# MAGIC Without an input, a synthetic ImageNet in the ILSVRC layout is written once to the work folder: real synset
# MAGIC ids and names, shapes a small network can learn, and the awkward files the real dataset has (CMYK, PNG named
# MAGIC `.JPEG`, grayscale, palette, alpha), which the job converts.

# COMMAND ----------

if not source:
    source = nb.fake_input(work, classes=nb.widget_int("fake_classes", 10), size=(64, 48),
                           train_per_class=nb.widget_int("fake_train_per_class", 40),
                           val_per_class=nb.widget_int("fake_val_per_class", 10))
nb.show({"input": source, "output": output, "mode": mode}, title="Partition")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Partition
# MAGIC Runs on the cluster; the console shows the stage's progress. A failure (too many rejects, a bad setting)
# MAGIC stops here with the reason and the fix.

# COMMAND ----------

spark = nb.spark_session(app_name="01_prepare_imagenet")
cfg = resolve(PartitionConfig, preset=preset or None, overrides=nb.settings(settings),
              explicit=dict(input=source, output=output, layout=layout,
                            resize_short=None if resize_short.lower() == "none" else int(resize_short),
                            overwrite=mode == "overwrite", resume=mode == "resume"))
manifest = run_partition(spark, cfg)  # the manifest (also at OUTPUT/manifest.json)

# COMMAND ----------

# MAGIC %md
# MAGIC ## What was written
# MAGIC Counts per split (and the row groups: one split serves at most that many training workers), per class,
# MAGIC the rejected inputs with their reasons (their bytes are kept under `rejects/`), and the conversions.

# COMMAND ----------

tables = manifest_tables(manifest)
nb.show(manifest["totals"], title="Inputs: written, rejected, skipped")
nb.show(tables["splits"], title="Splits")
nb.show(tables["classes"], title="Images per class")
nb.show(tables["reasons"], title="Rejects by reason")
nb.show(tables["rejects"], title="Rejected inputs")
nb.show(tables["conversions"], title="Conversions")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Sample images per class
# MAGIC Stored images, as the trainer will read them (after cleaning and resizing), for classes spread over the
# MAGIC synsets.

# COMMAND ----------

grid = render_sample_grid(output, nb.join(work, "samples_per_class.png"), split="train", per_class=5,
                          max_classes=nb.widget_int("grid_classes", 8))
nb.show_image(grid, title="Sample images per class (train)")
