"""SavedModel export and prediction: the serving contract checked from a process that cannot import
imagenet_spark, atomic replacement, labels beside and inside the export, local top-k and Spark batch inference
over a folder of images and over a dataset written by the real partition job.

The trained model learns 4 solid colours (trivially learnable in a few seconds), so a wrong preprocessing
step inside the exported graph (channels, normalisation, crop) shows up as wrong predictions."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagenet_spark import cli
from imagenet_spark.data.synsets import ilsvrc2012
from imagenet_spark.jobs import predict as spark_predict
from imagenet_spark.jobs.evaluate import evaluate_on_spark
from imagenet_spark.models import registry
from imagenet_spark.serving import export, predict
from imagenet_spark.serving.evaluation import evaluate_rows
from imagenet_spark.serving.export import ExportError
from imagenet_spark.serving.labels import LabelsError, ModelDirError, load_labels
from imagenet_spark.serving.predict import PredictError

tf = pytest.importorskip("tensorflow")

IMAGE_SIZE = 32
EVAL_RESIZE = 36
# Class i is this colour; the first four ILSVRC synsets name the classes (tench, goldfish, ...).
COLOURS = ((220, 40, 40), (40, 180, 40), (40, 40, 220), (230, 220, 40))
SYNSETS = tuple(sorted(ilsvrc2012()))[:4]
LABELS_TXT = "".join(f"{i}\t{s}\t{ilsvrc2012()[s]}\n" for i, s in enumerate(SYNSETS))


def _encode(colour: tuple[int, int, int], size: tuple[int, int], fmt: str, mode: str = "RGB") -> bytes:
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


# (file name, class, width x height, format, mode): every format decode_image reads, odd sizes and aspects.
SAMPLES = (
    ("red.jpg", 0, (50, 40), "JPEG", "RGB"),
    ("green.png", 1, (64, 64), "PNG", "RGB"),
    ("blue.png", 2, (33, 100), "PNG", "RGB"),
    ("yellow.jpeg", 3, (200, 120), "JPEG", "RGB"),
    ("red_alpha.png", 0, (45, 45), "PNG", "RGBA"),
    ("blue.gif", 2, (40, 60), "GIF", "RGB"),
    ("green.bmp", 1, (37, 37), "BMP", "RGB"),
)


def _write_samples(root: Path) -> list[Path]:
    paths = []
    for name, cls, size, fmt, mode in SAMPLES:
        path = root / name
        path.write_bytes(_encode(COLOURS[cls], size, fmt, mode))
        paths.append(path)
    return paths


def _colour_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised 32x32 images of the 4 colours with brightness jitter and pixel noise, as preprocess_any
    would hand them to the model."""
    labels = rng.integers(0, len(COLOURS), n)
    base = np.array(COLOURS, np.float32)[labels][:, None, None, :]
    pixels = base + rng.normal(0, 15, (n, 1, 1, 1)) + rng.normal(0, 10, (n, IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(pixels, 0, 255)
    return ((pixels - registry.IMAGENET_MEAN) / registry.IMAGENET_STD).astype(np.float32), labels


@pytest.fixture(scope="module")
def colour_model():
    """resnet_tiny trained for 100 steps to tell the 4 colours apart (~3 s on 2 cores)."""
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = registry.build("resnet_tiny", num_classes=4, image_size=IMAGE_SIZE, dropout=0.0)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.02, momentum=0.9),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels = _colour_batch(rng, 32 * 100)
    model.fit(images, labels, batch_size=32, epochs=1, verbose=0)
    check, truth = _colour_batch(rng, 64)
    assert (model.predict(check, verbose=0).argmax(1) == truth).all(), "the colour task did not train"
    return model


def _export(model, export_dir: Path, **kw) -> str:
    args = dict(model_name="resnet_tiny", image_size=IMAGE_SIZE, eval_resize=EVAL_RESIZE,
                mean=registry.IMAGENET_MEAN, std=registry.IMAGENET_STD, labels_txt=LABELS_TXT)
    args.update(kw)
    return export.export_saved_model(model, str(export_dir), **args)


@pytest.fixture(scope="module")
def model_dir(colour_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    _export(colour_model, root / "saved_model")
    return root


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Path]:
    return _write_samples(tmp_path_factory.mktemp("samples"))


# Runs in a fresh interpreter in which importing imagenet_spark fails: the SavedModel must stand alone.
_LOADER = textwrap.dedent("""
    import json, sys
    sys.modules["imagenet_spark"] = None  # any import of the package now raises ImportError
    import tensorflow as tf
    spec = json.loads(sys.argv[1])
    images = tf.constant([open(p, "rb").read() for p in spec["images"]])
    keys = tf.constant(spec["images"])
    report = {}
    for name, path in spec["models"].items():
        fn = tf.saved_model.load(path).signatures["serving_default"]
        out = fn(image_bytes=images, key=keys)
        empty = fn(image_bytes=tf.constant([], tf.string), key=tf.constant([], tf.string))
        report[name] = {
            "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in fn.structured_input_signature[1].items()},
            "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in fn.structured_outputs.items()},
            "got": {k: [v.dtype.name, v.shape.as_list()] for k, v in out.items()},
            "empty": {k: v.shape.as_list() for k, v in empty.items()},
            "classes": out["classes"].numpy().tolist(),
            "keys": [k.decode() for k in out["key"].numpy()],
            "sums": out["probabilities"].numpy().sum(axis=1).tolist(),
            "argmax": out["probabilities"].numpy().argmax(axis=1).tolist(),
        }
        try:
            fn(image_bytes=images, key=keys[:1])
            report[name]["mismatch"] = "accepted"
        except tf.errors.InvalidArgumentError as exc:
            report[name]["mismatch"] = str(exc)
    print("REPORT" + json.dumps(report))
""")


@pytest.mark.slow
def test_serving_contract_in_a_process_without_imagenet_spark(model_dir, samples, tmp_path):
    untrained = registry.build("resnet_tiny", num_classes=4, image_size=IMAGE_SIZE)
    _export(untrained, tmp_path / "untrained" / "saved_model", labels_txt=None)
    spec = {"models": {"trained": str(model_dir / "saved_model"), "untrained": str(tmp_path / "untrained" /
                                                                                 "saved_model")},
            "images": [str(p) for p in samples]}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _LOADER, json.dumps(spec)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    n = len(samples)
    for name, r in report.items():
        assert r["inputs"] == {"image_bytes": ["string", [None]], "key": ["string", [None]]}, name
        assert r["outputs"] == {"classes": ["int64", [None]], "probabilities": ["float32", [None, 4]],
                                "key": ["string", [None]]}, name
        assert r["got"] == {"classes": ["int64", [n]], "probabilities": ["float32", [n, 4]], "key": ["string", [n]]}
        assert r["empty"] == {"classes": [0], "probabilities": [0, 4], "key": [0]}
        assert r["keys"] == spec["images"]
        assert np.allclose(r["sums"], 1.0, atol=1e-5)
        assert r["classes"] == r["argmax"]
        assert "image_bytes and key must have the same length" in r["mismatch"]
    assert report["trained"]["classes"] == [cls for _, cls, *_ in SAMPLES]


def test_model_dir_layout_and_assets(model_dir):
    assert sorted(p.name for p in model_dir.iterdir()) == ["labels.txt", "saved_model"]
    assert (model_dir / "labels.txt").read_text() == LABELS_TXT
    assets = model_dir / "saved_model" / "assets"
    assert (assets / "labels.txt").read_text() == LABELS_TXT
    info = json.loads((assets / "model_info.json").read_text())
    assert info["model"] == "resnet_tiny" and info["num_classes"] == 4
    assert (info["image_size"], info["eval_resize"]) == (IMAGE_SIZE, EVAL_RESIZE)
    assert load_labels(str(model_dir)) == [(s, ilsvrc2012()[s]) for s in SYNSETS]
    # The SavedModel alone (copied without its model dir) still knows its classes.
    assert load_labels(str(model_dir / "saved_model")) == load_labels(str(model_dir))


def test_export_replaces_atomically_and_leaves_nothing_behind(colour_model, tmp_path, monkeypatch):
    target = tmp_path / "saved_model"
    first = registry.build("resnet_tiny", num_classes=4, image_size=IMAGE_SIZE)
    assert _export(first, target) == str(target)
    variables = target / "variables" / "variables.data-00000-of-00001"
    before = variables.read_bytes()
    _export(colour_model, target)
    assert variables.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt", "saved_model"]

    # A failure while writing leaves the previous export whole and no temporary directory.
    after = variables.read_bytes()

    def broken_save(*args, **kwargs):
        Path(args[1], "partial").mkdir(parents=True)
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _export(first, target)
    assert variables.read_bytes() == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt", "saved_model"]


def test_export_refuses_bad_settings(colour_model, tmp_path):
    with pytest.raises(ExportError, match=r"labels_txt: 3 classes but model resnet_tiny has 4 outputs"):
        _export(colour_model, tmp_path / "a" / "saved_model", labels_txt="".join(LABELS_TXT.splitlines(True)[:3]))
    with pytest.raises(LabelsError, match=r"labels_txt, line 2: index 2 where 1 was expected"):
        _export(colour_model, tmp_path / "b" / "saved_model", labels_txt="0\ta\tA\n2\tb\tB\n")
    with pytest.raises(ExportError, match=r"eval_resize=28 < image_size=32"):
        _export(colour_model, tmp_path / "c" / "saved_model", eval_resize=28)
    with pytest.raises(ExportError, match=r"image_size=64: model resnet_tiny takes 32x32"):
        _export(colour_model, tmp_path / "d" / "saved_model", image_size=64, eval_resize=73)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"exists and is not a SavedModel"):
        _export(colour_model, tmp_path / "e")
    assert (tmp_path / "e" / "notes.txt").read_text() == "mine"
    assert not list((tmp_path).glob("a/*")) and not list(tmp_path.glob("c/*"))


def test_model_dir_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(ModelDirError, match=r"no saved_model: train first or pass the model dir of a finished run"):
        predict.predict_files(str(tmp_path), [])
    with pytest.raises(ModelDirError, match=r"does not exist"):
        load_labels(str(tmp_path / "nowhere"))
    with pytest.raises(ModelDirError, match=r"no labels.txt .*copy the dataset's labels.txt"):
        load_labels(str(tmp_path))


def test_predict_files_ranks_with_names(model_dir, samples, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    paths = [str(p) for p in samples] + [str(junk)]
    results = predict.predict_files(str(model_dir), paths, top_k=3, batch_size=4)
    assert [r["key"] for r in results] == paths
    names = dict(load_labels(str(model_dir)))
    for (_, cls, *_), result in zip(SAMPLES, results):
        assert result["class"] == cls == result["top"][0]["index"]
        assert len(result["top"]) == 3
        probs = [t["probability"] for t in result["top"]]
        assert probs == sorted(probs, reverse=True) and probs[0] > 0.5
        for entry in result["top"]:
            assert entry["synset"] == SYNSETS[entry["index"]] and entry["name"] == names[entry["synset"]]
    assert results[-1]["class"] is None and results[-1]["top"] == []
    assert "Unknown image file format" in results[-1]["error"]

    text = predict.format_predictions(results)
    lines = text.splitlines()
    assert lines[0] == paths[0]
    assert re.fullmatch(rf"  [01]\.\d{{3}}  {SYNSETS[0]}  tench, Tinca tinca", lines[1]), lines[1]
    assert lines[-2:] == [str(junk), f"  error: {results[-1]['error']}"]

    assert len(predict.predict_files(str(model_dir), paths[:1], top_k=10)[0]["top"]) == 4  # capped at the classes
    with pytest.raises(PredictError, match=r"top_k=0: must be a positive integer"):
        predict.predict_files(str(model_dir), paths, top_k=0)
    with pytest.raises(PredictError, match=r"1 of 2 paths are not files: .*missing\.png"):
        predict.predict_files(str(model_dir), [paths[0], str(tmp_path / "missing.png")])


def test_predict_command_prints_top_k(model_dir, samples, caplog):
    parser = cli.predict_parser(argparse.ArgumentParser())
    args = parser.parse_args(["--model-dir", str(model_dir), str(samples[0].parent), "--top-k", "2"])
    with caplog.at_level(logging.INFO, logger="imagenet_spark.jobs.predict"):
        assert spark_predict.run_predict_cli(args) == 0
    text = "\n".join(r.getMessage() for r in caplog.records if r.getMessage().startswith("predictions:"))
    assert f"{samples[0]}\n  " in text and text.count(f"  {SYNSETS[0]}  tench, Tinca tinca") >= 2


def test_predict_on_spark_checks_before_starting(spark, model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / "labels.txt").write_text(LABELS_TXT + "4\tn99999999\textra\n")
    with pytest.raises(ModelDirError, match=r"the model has 4 classes but labels.txt has 5"):
        spark_predict.predict_on_spark(spark, str(bad), str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(PredictError, match=r"no images .* and not a dataset"):
        spark_predict.predict_on_spark(spark, str(model_dir), str(tmp_path / "bad" / "saved_model" / "variables"),
                                      str(tmp_path / "out"))


PREDICTION_COLUMNS = ["key", "filename", "class", "synset", "name", "probability", "top_k_synsets",
                      "top_k_probabilities"]


@pytest.mark.slow
def test_predict_on_spark_over_a_folder(spark, model_dir, tmp_path):
    root = tmp_path / "images"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    expected = {}
    for i, (name, cls, size, fmt, mode) in enumerate(SAMPLES):
        rel = ("a/b/", "c/", "")[i % 3] + name
        (root / rel).write_bytes(_encode(COLOURS[cls], size, fmt, mode))
        expected[rel] = cls
    (root / "README.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "c" / "broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "predictions"
    rows = spark_predict.predict_on_spark(spark, str(model_dir), str(root), str(out), top_k=2, batch_size=3,
                                         num_partitions=2)
    assert rows == len(expected) + 1
    table = pq.read_table(out)
    assert table.column_names == PREDICTION_COLUMNS + ["error"]
    got = {r["filename"]: r for r in table.to_pylist()}
    assert set(got) == set(expected) | {"c/broken.png"}
    for rel, cls in expected.items():
        r = got[rel]
        assert r["key"] == str(root / rel) and r["error"] is None
        assert (r["class"], r["synset"], r["name"]) == (cls, SYNSETS[cls], ilsvrc2012()[SYNSETS[cls]])
        assert r["top_k_synsets"][0] == r["synset"] and len(r["top_k_synsets"]) == 2
        assert r["top_k_probabilities"][0] == pytest.approx(r["probability"])
        assert r["top_k_probabilities"] == sorted(r["top_k_probabilities"], reverse=True)
    assert got["c/broken.png"]["class"] is None and got["c/broken.png"]["error"]

    with pytest.raises(PredictError, match=r"already exists; choose another output or pass overwrite=True"):
        spark_predict.predict_on_spark(spark, str(model_dir), str(root), str(out))


@pytest.mark.slow
def test_predict_on_spark_over_a_partitioned_dataset(spark, model_dir, tmp_path):
    from imagenet_spark.config import PartitionConfig, resolve
    from imagenet_spark.data.fake import FakeSpec, write_ilsvrc
    from imagenet_spark.jobs.partition import run_partition

    raw, dst = tmp_path / "raw", tmp_path / "ds"
    write_ilsvrc(raw, FakeSpec(num_classes=4, train_per_class=1, val_per_class=3, image_size=(48, 40)))
    run_partition(spark, resolve(PartitionConfig, explicit=dict(
        input=str(raw), output=str(dst), resize_short=32, images_per_task=4, rows_per_row_group=2)))
    validation = pq.read_table(dst / "validation").to_pylist()
    truth = {r["filename"]: (r["label"], r["synset"]) for r in validation}

    for source, out in ((dst, tmp_path / "p1"), (dst / "validation", tmp_path / "p2")):
        rows = spark_predict.predict_on_spark(spark, str(model_dir), str(source), str(out), batch_size=5)
        assert rows == len(truth) == 12
        table = pq.read_table(out)
        assert table.column_names == PREDICTION_COLUMNS + ["label", "true_synset", "error"]
        for r in table.to_pylist():
            assert r["key"] == r["filename"] and (r["label"], r["true_synset"]) == truth[r["filename"]]
            assert r["error"] is None and 0 <= r["class"] < 4 and len(r["top_k_synsets"]) == 4
            assert sum(r["top_k_probabilities"]) == pytest.approx(1.0, abs=1e-4)

    # Evaluation on Spark aggregates the same table as evaluate_rows does in memory: the same figures.
    evaluation = evaluate_on_spark(spark, str(model_dir), str(dst), output=str(tmp_path / "p3"), top_k=2)
    in_memory = evaluate_rows(pq.read_table(tmp_path / "p3").to_pylist(), names=dict(load_labels(str(model_dir))),
                              k=2)
    assert (evaluation.images, evaluation.errors, evaluation.k) == (12, 0, 2)
    assert evaluation == in_memory
