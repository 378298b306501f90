"""Pictures of images: the validation prediction grid (classified through the serving signature) and the
per-class sample grid of a dataset that a person checks first after the partition job."""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from imagenet_spark.data import fs
from imagenet_spark.data.samples import Sample, read_samples
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.layout import DatasetDir
from imagenet_spark.report.plots import (
    DPI,
    PREDICTION_CELL,
    SAMPLE_LABEL_WIDTH,
    figure_size,
    grid_shape,
    new_figure,
    save_figure,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

_GOOD, _BAD = "#1a7f37", "#cf222e"


def class_names(model_dir: str | None, data: str | None) -> dict[str, str]:
    """synset -> human name from the model's (or dataset's) labels.txt; empty when neither is readable."""
    from imagenet_spark.serving.labels import load_labels, parse_labels

    try:
        if model_dir:
            return dict(load_labels(model_dir))
        if data and fs.is_file(DatasetDir(data).labels):
            uri = DatasetDir(data).labels
            return dict(parse_labels(fs.read_text(uri), source=uri))
    except ImagenetSparkError as exc:
        log.info("class names: %s; showing synset names", exc)
    return {}


def _name(names: Mapping[str, str], synset: str) -> str:
    from imagenet_spark.data.synsets import human_name

    return names.get(synset) or human_name(synset)


def short_name(name: str, limit: int = 22) -> str:
    """The first of ImageNet's comma-separated synonyms, cut to ``limit`` characters."""
    first = name.split(",")[0].strip() or name
    return first if len(first) <= limit else first[: limit - 1] + "…"


def decode_image(image: bytes) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        return np.asarray(im.convert("RGB"))


def plot_predictions(samples: Sequence[Sample], predictions: Sequence[Mapping[str, Any]],
                     names: Mapping[str, str], *, grid: int) -> Figure:
    """A grid of images titled with the true and the predicted class (green when right, red when wrong)."""
    fig = new_figure(figure_size("predictions", grid=grid))
    cols, rows = grid_shape(grid)
    axes = fig.subplots(rows, cols, squeeze=False)
    right = 0
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(samples):
            continue
        sample, pred = samples[i], predictions[i]
        ax.imshow(decode_image(sample.image))
        true_name = short_name(_name(names, sample.synset))
        top = pred.get("top") or []
        if top:
            guess = top[0]
            ok = guess["synset"] == sample.synset
            right += ok
            text = f"true: {true_name}\npred: {short_name(guess['name'])} {guess['probability']:.0%}"
        else:
            ok = False
            text = f"true: {true_name}\npred: error"
        ax.set_title(text, fontsize=8, color=_GOOD if ok else _BAD, loc="left")
        for spine in ax.spines.values():  # a coloured frame reads faster than the text
            spine.set_visible(True)
            spine.set_color(_GOOD if ok else _BAD)
            spine.set_linewidth(3)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Validation predictions: {right} of {len(samples)} right (green: right, red: wrong)",
                 fontsize=11)
    # Fixed pixel margins: 70 px for the page title and the first row's two-line titles, 50 px between rows.
    height = rows * PREDICTION_CELL[1]
    top, bottom, gap = 1 - 70 / height, 8 / height, 50
    axes_height = (height * (top - bottom) - (rows - 1) * gap) / rows
    fig.subplots_adjust(left=0.02, right=0.98, bottom=bottom, top=top, hspace=gap / axes_height, wspace=0.1)
    return fig


def predict_samples(model_dir: str, samples: Sequence[Sample], *, top_k: int = 5) -> list[dict[str, Any]]:
    """Classify stored samples with the model dir's SavedModel through the public prediction API (the images
    go through the same serving signature, preprocessing included, that serving and batch inference use)."""
    from imagenet_spark.serving.predict import predict_files

    scratch = tempfile.mkdtemp(prefix="imagenet-spark-report-")
    try:
        paths = []
        for i, sample in enumerate(samples):
            path = os.path.join(scratch, f"{i:04d}.jpg")
            with open(path, "wb") as f:
                f.write(sample.image)
            paths.append(path)
        return predict_files(model_dir, paths, top_k=top_k)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def plot_samples_per_class(data: str, *, split: str = "train", per_class: int = 4,
                           max_classes: int = 12) -> Figure:
    """Rows of ``per_class`` stored images for up to ``max_classes`` classes (spread over the synsets), each row
    labelled with the synset and its name: what a person checks first after the partition job."""
    samples = read_samples(data, split=split, count=per_class * max_classes, per_class=per_class,
                           max_classes=max_classes)
    synsets = list(dict.fromkeys(s.synset for s in samples))
    names = class_names(None, data)
    fig = new_figure(figure_size("samples", classes=len(synsets), per_class=per_class))
    width, height = fig.get_size_inches() * DPI
    axes = fig.subplots(max(1, len(synsets)), per_class, squeeze=False)
    for row, synset in enumerate(synsets):
        images = [s for s in samples if s.synset == synset]
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(images):
                ax.imshow(decode_image(images[col].image))
            else:
                ax.set_axis_off()
            if col == 0:
                ax.set_ylabel(f"{synset}\n{short_name(_name(names, synset), 26)}", rotation=0, ha="right",
                              va="center", fontsize=9, labelpad=8)
    fig.suptitle(f"{split}: {per_class} stored image(s) per class, {len(synsets)} class(es)", fontsize=11)
    fig.subplots_adjust(left=SAMPLE_LABEL_WIDTH / width, right=0.99, bottom=0.01, top=1 - 45 / height,
                        hspace=0.08, wspace=0.05)
    return fig


def render_sample_grid(data: str, path: str, *, split: str = "train", per_class: int = 4,
                       max_classes: int = 12) -> str:
    """:func:`plot_samples_per_class` saved as a PNG at ``path`` (a path or URI); returns it."""
    return save_figure(plot_samples_per_class(data, split=split, per_class=per_class, max_classes=max_classes),
                       path)

