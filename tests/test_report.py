"""The report of a real (tiny) training: valid PNGs of the sizes the module promises, an HTML page that links
them; plus the helpers the notebooks share (sample grid, manifest tables, evaluation)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from imagenet_spark.config import PartitionConfig, resolve
from imagenet_spark.data.fake import FakeSpec, write_ilsvrc
from imagenet_spark.data.samples import manifest_tables, read_samples
from imagenet_spark.jobs.partition import run_partition
from imagenet_spark.jobs.train import run_training
from imagenet_spark.report import (
    ReportError,
    figure_size,
    render_report,
    render_sample_grid,
    report_parser,
    run_report_cli,
)
from imagenet_spark.serving.evaluation import EvaluationError, evaluate_rows
from imagenet_spark.train_config import TrainConfig

CLASSES = 3


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    """One 2-epoch, 1-worker training on the driver (the fast path) over a tiny dataset."""
    root = tmp_path_factory.mktemp("report")
    write_ilsvrc(root / "raw", FakeSpec(num_classes=CLASSES, train_per_class=16, val_per_class=4, image_size=(48, 40),
                                        seed=5))
    run_partition(spark, resolve(PartitionConfig, explicit=dict(
        input=str(root / "raw"), output=str(root / "ds"), resize_short=40, images_per_task=16, rows_per_row_group=8)))
    model_dir = root / "m"
    run_training(spark, resolve(TrainConfig, explicit=dict(
        data=str(root / "ds"), model_dir=str(model_dir), model="resnet_tiny", workers=1, backend="off", epochs=2,
        global_batch_size=16, base_lr=0.4, warmup_epochs=0.5, seed=1)))
    return root / "ds", model_dir


def _png(path: str) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()  # a complete, uncorrupted file
    with Image.open(path) as im:
        im.load()
        assert im.getextrema() != ((255, 255), (255, 255), (255, 255), (255, 255))[: len(im.getbands())], \
            f"{path} is blank"
        return im.size


def test_report_renders_valid_pngs_of_the_expected_size_and_one_html_page(trained, tmp_path):
    _, model_dir = trained
    out = render_report(str(model_dir), grid=6)
    assert set(out) == {"curves", "lr", "throughput", "predictions", "html"}
    assert Path(out["html"]).parent == model_dir / "report"
    for name in ("curves", "lr", "throughput"):
        assert _png(out[name]) == figure_size(name), name
    assert _png(out["predictions"]) == figure_size("predictions", grid=6) == (600, 2 * 235)
    page = Path(out["html"]).read_text()
    for name in ("curves.png", "lr.png", "throughput.png", "predictions.png"):
        assert f"<img src='{name}'" in page  # relative: the folder can be copied or served as is
    assert "final validation top-1 / top-5" in page and "steps per epoch / total" in page
    assert page.count("<tr><td>") == 2, "one row per epoch in the per-epoch table"


def test_report_command_and_a_run_without_export(trained, tmp_path):
    data, model_dir = trained
    args = report_parser(argparse.ArgumentParser()).parse_args(
        ["--model-dir", str(model_dir), "--out-dir", str(tmp_path / "out"), "--data", str(data), "--grid", "4"])
    assert run_report_cli(args) == 0
    assert _png(str(tmp_path / "out" / "predictions.png")) == figure_size("predictions", grid=4)
    # a run still training: metrics and config only; no prediction grid, and the page says why
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("metrics.json", "config.json"):
        shutil.copy(model_dir / name, partial / name)
    out = render_report(str(partial))
    assert "predictions" not in out and _png(out["curves"]) == figure_size("curves")
    assert "not been exported yet" in Path(out["html"]).read_text()
    with pytest.raises(ReportError, match=r"no metrics.json. Fix: pass the --model-dir of a training run"):
        render_report(str(tmp_path / "nothing"))
    with pytest.raises(ReportError, match=r"data=.*no validation/ split there"):
        render_report(str(model_dir), data=str(tmp_path))


def test_sample_grid_and_manifest_tables(trained, tmp_path):
    data, _ = trained
    samples = read_samples(str(data), split="validation", count=5)
    assert len(samples) == 5 and len({s.synset for s in samples}) == CLASSES  # spread over the classes first
    path = render_sample_grid(str(data), str(tmp_path / "grid.png"), per_class=2, max_classes=CLASSES)
    assert _png(path) == figure_size("samples", classes=CLASSES, per_class=2)
    tables = manifest_tables(json.loads((data / "manifest.json").read_text()))
    assert [r["split"] for r in tables["splits"]] == ["train", "validation"]
    assert sum(r["images"] for r in tables["splits"]) == CLASSES * 20
    assert tables["classes"][0]["name"].startswith("tench") and tables["classes"][0]["validation"] == 4


def test_evaluate_rows_per_class_accuracy_and_confused_pairs():
    rows = ([{"true_synset": "a", "synset": "a", "top_k_synsets": ["a", "b"]}] * 3
            + [{"true_synset": "a", "synset": "b", "top_k_synsets": ["b", "a"]}]
            + [{"true_synset": "b", "synset": "a", "top_k_synsets": ["a", "c"]}] * 2
            + [{"true_synset": "b", "synset": None, "top_k_synsets": []}])
    result = evaluate_rows(rows, names={"a": "apple", "b": "banana", "c": "cherry"}, k=2)
    assert (result.images, result.errors) == (7, 1)
    assert result.top1 == pytest.approx(3 / 7) and result.topk == pytest.approx(4 / 7)
    assert [(c.synset, c.images, c.top1) for c in result.per_class] == [("b", 3, 0.0), ("a", 4, 0.75)]
    assert result.confused_rows()[0] == {"true_synset": "b", "true_name": "banana", "predicted_synset": "a",
                                         "predicted_name": "apple", "count": 2, "fraction_of_class": 0.6667}
    with pytest.raises(EvaluationError, match="without true_synset"):
        evaluate_rows([{"synset": "a"}])
