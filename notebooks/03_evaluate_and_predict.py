# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Evaluate and predict
# MAGIC
# MAGIC Loads the model exported by notebook 02 (`MODEL_DIR/saved_model`, whose serving signature takes encoded
# MAGIC images and does its own preprocessing) and
# MAGIC 1. evaluates it on the validation split on the cluster: top-1/top-5, accuracy per class, most-confused pairs;
# MAGIC 2. classifies uploaded images (a folder: `/dbfs/FileStore/...`, `/Volumes/...`) on the driver;
# MAGIC 3. runs batch inference over a folder of images (or a dataset) on the executors into a table.
# MAGIC
# MAGIC **Widgets.** `model_dir`, `data` (the dataset to evaluate), `uploads` (a folder of images; empty: a few
# MAGIC validation images are copied to the work folder to stand in), `batch_source` (empty: the uploads folder),
# MAGIC `table` (a metastore table to save the batch predictions to; empty: a temporary view
# MAGIC `imagenet_predictions` only), `top_k`.

# COMMAND ----------

from imagenet_spark import notebook as nb
from imagenet_spark.jobs.evaluate import evaluate_on_spark
from imagenet_spark.jobs.predict import predict_on_spark
from imagenet_spark.serving.labels import load_labels
from imagenet_spark.serving.predict import list_images, predict_files, prediction_rows

nb.setup_logging()
work = nb.work_dir()
model_dir = nb.widget("model_dir", nb.join(work, "model"), label="Model dir (from notebook 02)")
data = nb.widget("data", nb.join(work, "dataset"), label="Dataset to evaluate (from notebook 01)")
uploads = nb.widget("uploads", "", label="Folder of images to classify (empty: samples)")
batch_source = nb.widget("batch_source", "", label="Batch inference source (empty: the uploads folder)")
table = nb.widget("table", "", label="Save batch predictions as table (optional)")
top_k = nb.widget_int("top_k", 5, label="Classes per image")

labels = load_labels(model_dir)
nb.show({"model dir": model_dir, "classes": len(labels), "first classes": ", ".join(s for s, _ in labels[:5])},
        title="Model")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Evaluation on the validation split
# MAGIC Every validation image is classified on the executors through the serving signature; the predictions are kept
# MAGIC as Parquet (`WORK/predictions_validation`) and aggregated by Spark.

# COMMAND ----------

spark = nb.spark_session(app_name="03_evaluate_and_predict")
evaluation = evaluate_on_spark(spark, model_dir, data, output=nb.join(work, "predictions_validation"),
                               top_k=top_k, overwrite=True)
nb.show(evaluation.summary(), title="Validation accuracy")
nb.show(evaluation.per_class_rows(), title="Accuracy per class (worst first)")
nb.show(evaluation.confused_rows(), title="Most-confused pairs (true -> predicted)")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Uploaded images
# MAGIC Upload pictures (any of JPEG, PNG, GIF, BMP) to a folder and set `uploads`; they are classified on the
# MAGIC driver with the same SavedModel.

# COMMAND ----------

if not uploads:
    uploads = nb.sample_images(data, nb.join(work, "uploads"), count=6)
results = predict_files(model_dir, [e.uri for e in list_images(uploads)], top_k=top_k)
nb.show(prediction_rows(results), title=f"Predictions for {uploads}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Batch inference to a table
# MAGIC The executors load the model once per partition and stream the images through in batches; one row per image
# MAGIC (undecodable files get an `error`, never vanish).

# COMMAND ----------

output = nb.join(work, "predictions_batch")
predict_on_spark(spark, model_dir, batch_source or uploads, output, top_k=top_k, overwrite=True)
predictions = spark.read.parquet(output)
predictions.createOrReplaceTempView("imagenet_predictions")
if table:
    predictions.write.mode("overwrite").saveAsTable(table)
nb.show(predictions.select("filename", "synset", "name", "probability", "error"), title=table or "imagenet_predictions")
