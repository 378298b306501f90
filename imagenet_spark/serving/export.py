"""Export a trained Keras model as a self-contained SavedModel whose signature carries the eval preprocessing.

Why the preprocessing lives inside the exported graph: whoever serves or batch-scores the model (TF
Serving, a notebook, a Spark job years later) then sends raw image bytes of any format and never has to
reproduce the eval transform (resize short side, centre crop, mean/std) by hand; a mismatch there is the
classic silent accuracy loss. The contract (DESIGN.md, "Contracts") is the ``serving_default`` signature::

    inputs   image_bytes  tf.string [None]      encoded JPEG, PNG, GIF or BMP (what TensorFlow decodes;
                                                predict converts other formats first)
             key          tf.string [None]      any id, passed through
    outputs  classes        int64   [None]      argmax of probabilities
             probabilities  float32 [None, C]   softmax, computed in float32 even for mixed-precision models
             key            tf.string [None]

``MODEL_DIR/labels.txt`` (``index<TAB>synset<TAB>human name``) sits beside ``MODEL_DIR/saved_model/`` and is
also stored inside the SavedModel as ``assets/labels.txt``, so a copied SavedModel still knows its classes.

Only the Keras model's variables are tracked in the export, not the Keras object itself: the signature is
all the contract needs, saving is faster, and no Keras-specific metadata ties the export to a Keras version.
TensorFlow is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from imagenet_spark.data import fs
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.layout import LABELS, SAVED_MODEL_PB, ModelDir
from imagenet_spark.serving.labels import parse_labels

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tensorflow as tf

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


class ExportError(ImagenetSparkError, RuntimeError):
    """The model cannot be exported as asked; the message names the setting or path and the fix."""


def _check_export_options(model_name: str, image_size: int, eval_resize: int, mean: Sequence[float],
                          std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    for setting, value in (("image_size", image_size), ("eval_resize", eval_resize)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExportError(f"{setting}={value!r}: must be a positive number of pixels (model {model_name})")
    if eval_resize < image_size:
        raise ExportError(f"eval_resize={eval_resize} < image_size={image_size}: the centre crop cannot be larger "
                          f"than the resized image; use eval_resize >= image_size, e.g. round(image_size / 0.875) "
                          f"(model {model_name})")
    try:
        mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ExportError(f"mean={mean!r}, std={std!r}: expected three numbers each (RGB, 0..255 units); take them "
                          f"from models.info({model_name!r})") from None
    if len(mean_t) != 3 or len(std_t) != 3 or min(std_t) <= 0:
        raise ExportError(f"mean={mean!r}, std={std!r}: expected three numbers each, std > 0 (RGB, 0..255 units); "
                          f"take them from models.info({model_name!r})")
    return mean_t, std_t


def _check_resize_short(resize_short: int | None, model_name: str) -> None:
    if resize_short is not None and (isinstance(resize_short, bool) or not isinstance(resize_short, int)
                                     or resize_short < 1):
        raise ExportError(f"resize_short={resize_short!r}: must be the dataset's short side in pixels (its "
                          f"manifest.json config.resize_short) or None (model {model_name})")


def _check_model_input(model: Any, model_name: str, image_size: int) -> None:
    """Fail before tracing if the model was built for another crop size (AlexNet's Flatten cannot adapt)."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4:
        spatial = tuple(shape[1:3])
        if all(d is not None for d in spatial) and spatial != (image_size, image_size):
            raise ExportError(f"image_size={image_size}: model {model_name} takes {spatial[0]}x{spatial[1]} inputs; "
                              f"export with image_size={spatial[0]} (the size it was built and trained with)")


def _check_export_dir(export_dir: str, final: str) -> None:
    """Refuse to replace a non-empty directory that is not an earlier export."""
    import tensorflow as tf

    if tf.io.gfile.exists(final) and tf.io.gfile.listdir(final) and not tf.io.gfile.exists(
            posixpath.join(final, SAVED_MODEL_PB)):
        raise ExportError(f"export dir {export_dir}: exists and is not a SavedModel; refusing to replace it. Remove "
                          "it or export to another directory")


def _num_classes(model: tf.keras.Model, image_size: int) -> int:
    """Width of the model's output: from ``output_shape`` when Keras knows it, else from one forward pass
    (subclassed models)."""
    shape = getattr(model, "output_shape", None)
    if isinstance(shape, tuple) and shape and isinstance(shape[-1], int):
        return int(shape[-1])
    import tensorflow as tf

    return int(model(tf.zeros([1, image_size, image_size, 3], tf.float32), training=False).shape[-1])


def _serving_module(model: tf.keras.Model, *, image_size: int, eval_resize: int, mean: tuple[float, ...],
                    std: tuple[float, ...], assets: dict[str, str], resize_short: int | None) -> tuple[Any, int]:
    """``(module, number of classes)``: a tf.Module holding the model's variables, the assets and the
    ``serve`` function of the contract.

    Why ``tf.cond`` on the batch size: an empty batch would otherwise reach the convolutions with an
    unknown-shaped empty tensor, which oneDNN rejects; an empty request must give empty outputs.
    Why ``map_fn``: the images of one request have different sizes, so each is decoded and cropped on its
    own before the crops are stacked into one batch for the model.
    """
    import tensorflow as tf

    from imagenet_spark.data.serving_transform import preprocess_any

    module = tf.Module(name="imagenet_spark_serving")
    module.model_variables = list(model.variables)  # tracked: exactly what the traced graph reads
    for name, path in assets.items():
        setattr(module, name.replace(".", "_"), tf.saved_model.Asset(path))

    crop = tf.TensorSpec([image_size, image_size, 3], tf.float32)
    num_classes = _num_classes(model, image_size)

    def preprocess(image: tf.Tensor) -> tf.Tensor:
        return preprocess_any(image, image_size=image_size, eval_resize=eval_resize, mean=mean, std=std,
                              resize_short=resize_short)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),  # type: ignore[untyped-decorator]
                                  tf.TensorSpec([None], tf.string, name="key")])
    def serve(image_bytes: tf.Tensor, key: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.debugging.assert_equal(tf.size(image_bytes), tf.size(key),
                                  message="image_bytes and key must have the same length")

        def classify() -> tf.Tensor:
            images = tf.map_fn(preprocess, image_bytes, fn_output_signature=crop)
            logits = model(images, training=False)
            return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)

        def empty() -> tf.Tensor:
            return tf.zeros([0, num_classes], tf.float32)

        probabilities = tf.cond(tf.size(image_bytes) > 0, classify, empty)
        return {
            "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            "probabilities": probabilities,
            "key": tf.identity(key),
        }

    module.serve = serve
    return module, num_classes


def _replace_dir(tmp: str, final: str) -> None:
    """Move the finished export ``tmp`` to ``final``, replacing an earlier export there.

    A directory rename is atomic on local filesystems and HDFS, but it cannot replace a non-empty directory,
    so an earlier export is first renamed aside and deleted after: a reader sees the old export, briefly
    nothing, then the new one, never a mix. On object stores (gs://, s3://) a rename is a copy.
    """
    import tensorflow as tf

    if "://" in final and not final.startswith("hdfs://"):
        log.warning("%s: renames on this filesystem are copies, so the export is not atomic there", final)
    old = None
    if tf.io.gfile.exists(final):
        old = posixpath.join(posixpath.dirname(final), f".{posixpath.basename(final)}.old-{uuid.uuid4().hex[:8]}")
        tf.io.gfile.rename(final, old)
    try:
        tf.io.gfile.rename(tmp, final)
    except Exception:
        if old is not None:  # put the earlier export back rather than leave nothing
            tf.io.gfile.rename(old, final)
        raise
    if old is not None:
        tf.io.gfile.rmtree(old)


def _save(model: tf.keras.Model, tmp: str, scratch: str, info: dict[str, Any], labels_txt: str | None) -> int:
    """Trace and save the serving module to ``tmp`` with its assets staged in local ``scratch``; returns the
    number of classes (also recorded in ``info``, written as ``assets/model_info.json``)."""
    import tensorflow as tf

    assets: dict[str, str] = {}
    if labels_txt is not None:
        assets[LABELS] = os.path.join(scratch, LABELS)
        with open(assets[LABELS], "w", encoding="utf-8") as f:
            f.write(labels_txt)
    module, num_classes = _serving_module(model, image_size=info["image_size"], eval_resize=info["eval_resize"],
                                          mean=tuple(info["mean"]), std=tuple(info["std"]), assets=assets,
                                          resize_short=info["resize_short"])
    info["num_classes"] = num_classes
    labels = parse_labels(labels_txt, source="labels_txt") if labels_txt is not None else None
    if labels is not None and len(labels) != num_classes:
        raise ExportError(f"labels_txt: {len(labels)} classes but model {info['model']} has {num_classes} "
                          "outputs; pass the labels.txt of the dataset the model was trained on")
    with open(os.path.join(scratch, ModelDir.MODEL_INFO), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    module.model_info_json = tf.saved_model.Asset(os.path.join(scratch, ModelDir.MODEL_INFO))
    tf.io.gfile.makedirs(posixpath.dirname(tmp))
    tf.saved_model.save(module, tmp, signatures={SIGNATURE: module.serve.get_concrete_function()})
    return num_classes


def export_saved_model(
    model: tf.keras.Model,
    export_dir: str,
    *,
    model_name: str,
    image_size: int,
    eval_resize: int,
    mean: Sequence[float],
    std: Sequence[float],
    labels_txt: str | None = None,
    resize_short: int | None = None,
) -> str:
    """Write ``model`` as a SavedModel with the ``serving_default`` signature of the contract; return ``export_dir``.

    The export is written to a hidden temporary directory beside ``export_dir`` and renamed into place, so a
    reader (a serving process polling the dir, a predict job) never loads half a SavedModel; exporting again
    replaces the previous export. ``labels_txt`` (the text of the dataset's labels.txt) is checked against
    the model's number of outputs, written to ``export_dir/../labels.txt`` and stored in the SavedModel as
    ``assets/labels.txt``. ``assets/model_info.json`` records the model name and the preprocessing baked in.
    ``resize_short`` is the short side of the dataset the model was trained on (its manifest's
    ``resize_short``): the signature brings each image to it as the partition job did before the eval crop,
    so serving sees what evaluation saw (None: images are cropped at their own size).
    """
    import tensorflow as tf

    started = time.monotonic()
    mean_t, std_t = _check_export_options(model_name, image_size, eval_resize, mean, std)
    _check_resize_short(resize_short, model_name)
    _check_model_input(model, model_name, image_size)
    if labels_txt is not None:
        parse_labels(labels_txt, source="labels_txt")  # a malformed file fails before anything is traced
    final = fs.normalize(export_dir)
    parent = posixpath.dirname(final)
    _check_export_dir(export_dir, final)
    scratch = tempfile.mkdtemp(prefix="imagenet-spark-export-")  # local: asset sources are copied from here
    tmp = posixpath.join(parent, f".{posixpath.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    info: dict[str, Any] = {"model": model_name, "image_size": image_size, "eval_resize": eval_resize,
                            "mean": list(mean_t), "std": list(std_t), "resize_short": resize_short,
                            "signature": SIGNATURE, "tensorflow": tf.__version__}
    try:
        num_classes = _save(model, tmp, scratch, info, labels_txt)
        if labels_txt is not None:  # before the rename: whoever sees the new SavedModel also finds its labels
            fs.write_text_atomic(ModelDir(parent).labels, labels_txt)
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    log.info("exported %s (%d classes; short side %d px, centre crop %d px) to %s in %.1f s", model_name,
             num_classes, eval_resize, image_size, final, time.monotonic() - started)
    return export_dir
