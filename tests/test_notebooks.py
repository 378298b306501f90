"""The Databricks notebooks, run end to end as plain Python scripts (no dbutils, no display) on fake data, in
order, sharing one work folder through IMAGENET_SPARK_* variables, as a person would run them outside
Databricks. Each runs in its own process, like a notebook attached to its own session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_prepare_imagenet.py", "02_train_distributed.py", "03_evaluate_and_predict.py", "04_tune.py")


def test_notebooks_are_databricks_source_files():
    for name in NOTEBOOKS:
        text = (REPO / "notebooks" / name).read_text()
        assert text.startswith("# Databricks notebook source\n"), name
        cells = text.split("\n# COMMAND ----------\n")
        assert len(cells) >= 4, name
        assert cells[0].splitlines()[1] == "# MAGIC %md", f"{name}: opens with a markdown cell"
        for cell in cells:
            magic = [line for line in cell.strip().splitlines() if line.startswith("# MAGIC")]
            assert not magic or magic[0] == "# MAGIC %md" or cell.strip().startswith("# Databricks"), name
        compile(text, name, "exec")


def _run(name: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "notebooks" / name)], env=env, cwd=env["IMAGENET_SPARK_WORK_DIR"],
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} failed:\n{output[-4000:]}"
    return output


@pytest.mark.slow
def test_the_notebooks_run_end_to_end_as_scripts(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGENET_SPARK_", "MLFLOW_"))}
    env.update({
        "IMAGENET_SPARK_WORK_DIR": str(work), "IMAGENET_SPARK_MASTER": "local[2]",
        "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "TF_CPP_MIN_LOG_LEVEL": "2",
        # 01: a tiny fake ImageNet
        "IMAGENET_SPARK_FAKE_CLASSES": "3", "IMAGENET_SPARK_FAKE_TRAIN_PER_CLASS": "16",
        "IMAGENET_SPARK_FAKE_VAL_PER_CLASS": "4", "IMAGENET_SPARK_RESIZE_SHORT": "40",
        "IMAGENET_SPARK_GRID_CLASSES": "3",
        # 02: two short epochs of the tiny ResNet on the driver
        "IMAGENET_SPARK_EPOCHS": "2", "IMAGENET_SPARK_BATCH": "8", "IMAGENET_SPARK_REPORT_GRID": "6",
        "IMAGENET_SPARK_TRAIN_SETTINGS": "base_lr=0.4 warmup_epochs=0.5 progress_every_s=1",
        # 03
        "IMAGENET_SPARK_TOP_K": "3",
        # 04: two trials at once, two epochs each, early stopping at epoch 1
        "IMAGENET_SPARK_MAX_TRIALS": "2",
    })
    out1 = _run(NOTEBOOKS[0], env)
    manifest = json.loads((work / "dataset" / "manifest.json").read_text())
    assert manifest["totals"]["written"] == 3 * 20 + 5 and manifest["totals"]["rejected"] == 0  # + 5 quirk files
    assert "Images per class" in out1 and "n01440764" in out1 and "Conversions" in out1
    assert (work / "samples_per_class.png").stat().st_size > 0

    out2 = _run(NOTEBOOKS[1], env)
    history = json.loads((work / "model" / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["val_images"] == 12
    assert "epoch 1/2 done" in out2, "progress reaches the notebook's output while training runs"
    for name in ("curves.png", "lr.png", "throughput.png", "predictions.png", "report.html"):
        assert (work / "model" / "report" / name).is_file(), name

    out3 = _run(NOTEBOOKS[2], env)
    for title in ("Validation accuracy", "Accuracy per class (worst first)", "Most-confused pairs",
                  "Predictions for", "imagenet_predictions"):
        assert title in out3, title
    assert list((work / "predictions_validation").glob("*.parquet"))
    assert len(list((work / "uploads").glob("*.jpg"))) == 6
    assert list((work / "predictions_batch").glob("*.parquet"))

    out4 = _run(NOTEBOOKS[3], env)
    doc = json.loads((work / "search" / "trials.json").read_text())
    assert [t["trial"] for t in doc["trials"]] == [0, 1] and doc["rungs"] == [1]
    assert "2 trials run at once" in out4 and "Best trial" in out4
    assert (work / "search" / "best" / "saved_model" / "saved_model.pb").is_file()
    again4 = _run(NOTEBOOKS[3], env)
    assert "resuming the search: 2 trial(s) finished before, 0 to continue" in again4
    assert json.loads((work / "search" / "trials.json").read_text())["trials"] == doc["trials"], "nothing redone"

    # rerunning a notebook resumes instead of failing on what the first run left behind
    again = _run(NOTEBOOKS[0], env)
    assert "already a finished dataset" in again and "fake data already in" in again
