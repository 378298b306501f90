"""The layout owners: paths of the model dir and dataset contracts, and TensorFlow's checkpoint naming."""

from __future__ import annotations

import pickle
from pathlib import Path

from imagenet_spark.layout import DatasetDir, ModelDir


def test_model_dir_paths_match_the_documented_contract(tmp_path: Path) -> None:
    md = ModelDir(str(tmp_path))
    assert md.saved_model == str(tmp_path / "saved_model")
    assert md.best_checkpoints == str(tmp_path / "checkpoints" / "best")
    assert md.model_info == str(tmp_path / "saved_model" / "assets" / "model_info.json")
    assert set(ModelDir.TRAINER_FILES) == {"checkpoints", "tensorboard", "metrics.json", "saved_model",
                                           "labels.txt", "config.json"}
    assert pickle.loads(pickle.dumps(md)) == md  # crosses the Spark boundary as is


def test_latest_step_reads_tensorflow_checkpoint_names(tmp_path: Path) -> None:
    md = ModelDir(str(tmp_path))
    assert md.latest_step() == 0 and not md.has_state()
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for name in ("ckpt-7.index", "ckpt-7.data-00000-of-00001", "ckpt-12.index", "checkpoint", "ckpt-99.tmp"):
        (ckpt / name).write_text("x")
    (ckpt / "best").mkdir()
    assert md.latest_step() == 12 and md.has_state()


def test_dataset_dir_staging_is_laid_out_as_the_dataset(tmp_path: Path) -> None:
    ds = DatasetDir(str(tmp_path))
    assert ds.staging.manifest == str(tmp_path / "_staging" / "manifest.json")
    assert ds.staging.run_json == str(tmp_path / "_staging" / "run.json")
    assert ds.common_metadata("validation") == str(tmp_path / "validation" / "_common_metadata")
    assert not ds.is_finished() and not ds.is_interrupted() and not ds.has_split("train")
    (tmp_path / "_staging").mkdir()
    assert ds.is_interrupted()
