"""The class names of a model: ``labels.txt`` beside the SavedModel (and a copy inside it), parsed strictly.

Why strict: a labels file whose order differs from the model's output units silently mislabels every
prediction, so a gap, a duplicate or an out-of-order index is an error naming the line, and the class count
is compared with the one the export recorded before any image is read.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence

from imagenet_spark.data import fs
from imagenet_spark.data.synsets import human_name
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.layout import LABELS, SAVED_MODEL_ASSETS, SAVED_MODEL_PB, ModelDir


class ModelDirError(ImagenetSparkError, ValueError):
    """A model dir has no SavedModel or no usable labels.txt; the message names the path and the fix."""


class LabelsError(ModelDirError):
    """A labels.txt (or ``labels_txt``) that does not map output index i to line i; names the line."""


def parse_labels(text: str, *, source: str) -> list[tuple[str, str]]:
    """``[(synset, human name)]`` by index from labels.txt text, checking that line ``i`` has index ``i``.

    A missing name column falls back to the ILSVRC2012 name (or the synset itself).
    """
    out: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) < 2 or not parts[0].strip().isdigit() or not parts[1].strip():
            raise LabelsError(f"{source}, line {number}: {line!r} is not 'index<TAB>synset<TAB>name'; "
                              "copy the labels.txt of the dataset the model was trained on")
        index, synset = int(parts[0]), parts[1].strip()
        if index != len(out):
            raise LabelsError(f"{source}, line {number}: index {index} where {len(out)} was expected (indices "
                              "must run 0, 1, 2, ... in order); copy the dataset's labels.txt unchanged")
        name = parts[2].strip() if len(parts) > 2 and parts[2].strip() else human_name(synset)
        out.append((synset, name))
    if not out:
        raise LabelsError(f"{source}: no labels; copy the labels.txt of the dataset the model was trained on")
    return out


def saved_model_dir(model_dir: str) -> str:
    """The SavedModel inside ``model_dir`` (``DIR/saved_model``), or ``model_dir`` itself if it is one."""
    root = fs.normalize(model_dir)
    for candidate in (ModelDir(root).saved_model, root):
        if fs.is_file(fs.join(candidate, SAVED_MODEL_PB)):
            return candidate
    if not fs.exists(root):
        raise ModelDirError(f"model dir {model_dir}: does not exist; pass the --model-dir of a finished training "
                            "run (it holds saved_model/ and labels.txt)")
    raise ModelDirError(f"model dir {model_dir}: no saved_model: train first or pass the model dir of a finished "
                        f"run (expected {ModelDir.SAVED_MODEL}/{SAVED_MODEL_PB} inside it)")


def load_labels(model_dir: str) -> list[tuple[str, str]]:
    """``[(synset, human name)]`` by class index for a model dir.

    Reads ``DIR/labels.txt`` (what the trainer copies from the dataset); falls back to the copy inside the
    SavedModel (``saved_model/assets/labels.txt``) so a SavedModel moved on its own still has names.
    ``model_dir`` may also be the SavedModel directory itself.
    """
    root = fs.normalize(model_dir)
    layout = ModelDir(root)
    candidates = [layout.labels, fs.join(layout.saved_model, SAVED_MODEL_ASSETS, LABELS)]
    if fs.is_file(fs.join(root, SAVED_MODEL_PB)):  # the SavedModel dir itself was given
        candidates = [fs.join(root, SAVED_MODEL_ASSETS, LABELS), ModelDir(posixpath.dirname(root)).labels]
    for uri in candidates:
        if fs.is_file(uri):
            return parse_labels(fs.read_text(uri), source=uri)
    if not fs.exists(root):
        raise ModelDirError(f"model dir {model_dir}: does not exist; pass the model dir of a finished run")
    raise ModelDirError(f"model dir {model_dir}: no labels.txt (looked for {' and '.join(candidates)}); copy the "
                        "dataset's labels.txt there, or re-export with labels_txt=")


def check_labels_match_export(saved_model: str, labels: Sequence[tuple[str, str]]) -> None:
    """Compare labels.txt with the class count the export recorded (``assets/model_info.json``).

    Why before loading TensorFlow: a batch job then fails on its driver in milliseconds instead of in every
    executor task; an export made by something else (no model_info.json) is checked against the signature later.
    """
    info_uri = fs.join(saved_model, SAVED_MODEL_ASSETS, ModelDir.MODEL_INFO)
    if not fs.is_file(info_uri):
        return
    num_classes = json.loads(fs.read_text(info_uri)).get("num_classes")
    if num_classes is not None and num_classes != len(labels):
        raise ModelDirError(f"{saved_model}: the model has {num_classes} classes but labels.txt has {len(labels)}; "
                            "copy the labels.txt of the dataset the model was trained on")
