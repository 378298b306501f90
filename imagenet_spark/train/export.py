"""Export a trained Keras model as a self-contained SavedModel, and predict with it (locally or on Spark).

Why the preprocessing lives inside the exported graph: whoever serves or batch-scores the model (TF
Serving, a notebook, a Spark job years later) then sends raw image bytes of any format and never has to
reproduce the eval transform (resize short side, centre crop, mean/std) by hand; a mismatch there is the
classic silent accuracy loss. The contract (see DESIGN.md) is the ``serving_default`` signature::

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

TensorFlow (and pyspark, for :func:`predict_on_spark`) is imported inside the functions: the driver imports
this module without loading either, and the executor function loads TensorFlow on the executor.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import math
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, Sequence

from imagenet_spark.data import fs, images
from imagenet_spark.data.synsets import human_name
from imagenet_spark.errors import ImagenetSparkError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tensorflow as tf

log = logging.getLogger(__name__)

SAVED_MODEL = "saved_model"
LABELS = "labels.txt"
MODEL_INFO = "model_info.json"
SIGNATURE = "serving_default"
#: File name endings treated as images when a folder is the source (compared lower-case): what
#: ``tf.io.decode_image`` reads, then the raster formats Pillow reads (converted before the signature, see
#: ``images.for_serving``); anything else in a folder (READMEs, manifests, model files) is skipped. A file
#: named explicitly is tried whatever its name.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif",
                                     ".jpe", ".avif", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".pnm", ".tga",
                                     ".ico", ".qoi", ".apng", ".dib", ".pcx")


class ExportError(ImagenetSparkError, RuntimeError):
    """The model cannot be exported as asked; the message names the setting or path and the fix."""


class ModelDirError(ImagenetSparkError, ValueError):
    """A model dir has no SavedModel or no usable labels.txt; the message names the path and the fix."""


class LabelsError(ModelDirError):
    """A labels.txt (or ``labels_txt``) that does not map output index i to line i; names the line."""


class PredictError(ImagenetSparkError, ValueError):
    """Prediction inputs or options we cannot run with; the message names the value and the fix."""


# --- labels -------------------------------------------------------------------------------------------------


def parse_labels(text: str, *, source: str) -> list[tuple[str, str]]:
    """``[(synset, human name)]`` by index from labels.txt text, checking that line ``i`` has index ``i``.

    Why strict: a labels file whose order differs from the model's output units silently mislabels every
    prediction, so a gap, a duplicate or an out-of-order index is an error naming the line. A missing name
    column falls back to the ILSVRC2012 name (or the synset itself).
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


def _saved_model_dir(model_dir: str) -> str:
    """The SavedModel inside ``model_dir`` (``DIR/saved_model``), or ``model_dir`` itself if it is one."""
    root = fs.normalize(model_dir)
    for candidate in (fs.join(root, SAVED_MODEL), root):
        if fs.is_file(fs.join(candidate, "saved_model.pb")):
            return candidate
    if not fs.exists(root):
        raise ModelDirError(f"model dir {model_dir}: does not exist; pass the --model-dir of a finished training "
                            "run (it holds saved_model/ and labels.txt)")
    raise ModelDirError(f"model dir {model_dir}: no saved_model: train first or pass the model dir of a finished "
                        "run (expected saved_model/saved_model.pb inside it)")


def load_labels(model_dir: str) -> list[tuple[str, str]]:
    """``[(synset, human name)]`` by class index for a model dir.

    Reads ``DIR/labels.txt`` (what the trainer copies from the dataset); falls back to the copy inside the
    SavedModel (``saved_model/assets/labels.txt``) so a SavedModel moved on its own still has names.
    ``model_dir`` may also be the SavedModel directory itself.
    """
    root = fs.normalize(model_dir)
    candidates = [fs.join(root, LABELS), fs.join(root, SAVED_MODEL, "assets", LABELS)]
    if fs.is_file(fs.join(root, "saved_model.pb")):  # the SavedModel dir itself was given
        candidates = [fs.join(root, "assets", LABELS), fs.join(posixpath.dirname(root), LABELS)]
    for uri in candidates:
        if fs.is_file(uri):
            return parse_labels(fs.read_text(uri), source=uri)
    if not fs.exists(root):
        raise ModelDirError(f"model dir {model_dir}: does not exist; pass the model dir of a finished run")
    raise ModelDirError(f"model dir {model_dir}: no labels.txt (looked for {' and '.join(candidates)}); copy the "
                        "dataset's labels.txt there, or re-export with labels_txt=")


# --- export -------------------------------------------------------------------------------------------------


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


def _check_model_input(model: Any, model_name: str, image_size: int) -> None:
    """Fail before tracing if the model was built for another crop size (AlexNet's Flatten cannot adapt)."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) == 4:
        spatial = tuple(shape[1:3])
        if all(d is not None for d in spatial) and spatial != (image_size, image_size):
            raise ExportError(f"image_size={image_size}: model {model_name} takes {spatial[0]}x{spatial[1]} inputs; "
                              f"export with image_size={spatial[0]} (the size it was built and trained with)")


def _num_classes(model: "tf.keras.Model", image_size: int) -> int:
    """Width of the model's output: from ``output_shape`` when Keras knows it, else from one forward pass
    (subclassed models)."""
    shape = getattr(model, "output_shape", None)
    if isinstance(shape, tuple) and shape and isinstance(shape[-1], int):
        return int(shape[-1])
    import tensorflow as tf

    return int(model(tf.zeros([1, image_size, image_size, 3], tf.float32), training=False).shape[-1])


def _serving_module(model: "tf.keras.Model", *, image_size: int, eval_resize: int, mean: tuple[float, ...],
                    std: tuple[float, ...], assets: dict[str, str], resize_short: int | None) -> tuple[Any, int]:
    """``(module, number of classes)``: a tf.Module holding the model's variables, the assets and the
    ``serve`` function of the contract.

    Why ``tf.cond`` on the batch size: an empty batch would otherwise reach the convolutions with an
    unknown-shaped empty tensor, which oneDNN rejects; an empty request must give empty outputs.
    Why ``map_fn``: the images of one request have different sizes, so each is decoded and cropped on its
    own before the crops are stacked into one batch for the model.
    """
    import tensorflow as tf

    from imagenet_spark.data.augment import preprocess_any

    module = tf.Module(name="imagenet_spark_serving")
    module.model_variables = list(model.variables)  # tracked: exactly what the traced graph reads
    for name, path in assets.items():
        setattr(module, name.replace(".", "_"), tf.saved_model.Asset(path))

    crop = tf.TensorSpec([image_size, image_size, 3], tf.float32)
    num_classes = _num_classes(model, image_size)

    def preprocess(image: tf.Tensor) -> tf.Tensor:
        return preprocess_any(image, image_size=image_size, eval_resize=eval_resize, mean=mean, std=std,
                              resize_short=resize_short)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),
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


def _write_text_atomic(uri: str, text: str) -> None:
    """Write then rename (through tf.io.gfile, like the SavedModel itself), so no reader sees half a file."""
    import tensorflow as tf

    tmp = f"{uri}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, uri, overwrite=True)


def export_saved_model(
    model: "tf.keras.Model",
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
    if resize_short is not None and (isinstance(resize_short, bool) or not isinstance(resize_short, int)
                                     or resize_short < 1):
        raise ExportError(f"resize_short={resize_short!r}: must be the dataset's short side in pixels (its "
                          f"manifest.json config.resize_short) or None (model {model_name})")
    _check_model_input(model, model_name, image_size)
    labels = parse_labels(labels_txt, source="labels_txt") if labels_txt is not None else None
    final = fs.normalize(export_dir)
    parent = posixpath.dirname(final)
    if tf.io.gfile.exists(final) and tf.io.gfile.listdir(final) and not tf.io.gfile.exists(
            posixpath.join(final, "saved_model.pb")):
        raise ExportError(f"export dir {export_dir}: exists and is not a SavedModel; refusing to replace it. Remove "
                          "it or export to another directory")
    scratch = tempfile.mkdtemp(prefix="imagenet-spark-export-")  # local: asset sources are copied from here
    tmp = posixpath.join(parent, f".{posixpath.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        assets: dict[str, str] = {}
        info = {"model": model_name, "image_size": image_size, "eval_resize": eval_resize, "mean": list(mean_t),
                "std": list(std_t), "resize_short": resize_short, "signature": SIGNATURE,
                "tensorflow": tf.__version__}
        if labels_txt is not None:
            assets[LABELS] = os.path.join(scratch, LABELS)
            with open(assets[LABELS], "w", encoding="utf-8") as f:
                f.write(labels_txt)
        module, num_classes = _serving_module(model, image_size=image_size, eval_resize=eval_resize, mean=mean_t,
                                              std=std_t, assets=assets, resize_short=resize_short)
        info["num_classes"] = num_classes
        if labels is not None and len(labels) != num_classes:
            raise ExportError(f"labels_txt: {len(labels)} classes but model {model_name} has {num_classes} "
                              "outputs; pass the labels.txt of the dataset the model was trained on")
        with open(os.path.join(scratch, MODEL_INFO), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        module.model_info_json = tf.saved_model.Asset(os.path.join(scratch, MODEL_INFO))
        tf.io.gfile.makedirs(parent)
        tf.saved_model.save(module, tmp, signatures={SIGNATURE: module.serve.get_concrete_function()})
        if labels_txt is not None:  # before the rename: whoever sees the new SavedModel also finds its labels
            _write_text_atomic(posixpath.join(parent, LABELS), labels_txt)
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    log.info("exported %s (%d classes; short side %d px, centre crop %d px) to %s in %.1f s", model_name,
             info["num_classes"], eval_resize, image_size, final, time.monotonic() - started)
    return export_dir


# --- prediction ---------------------------------------------------------------------------------------------


class _Input(NamedTuple):
    """One image to classify: ``data`` None means it could not be read (``error`` says why); ``extra``
    travels through untouched (the dataset's label, the file's relative path)."""

    key: str
    data: bytes | None
    error: str | None = None
    extra: Any = None
    converted: tuple[str, ...] = ()


def _check_predict_options(top_k: int, batch_size: int) -> None:
    for setting, value in (("top_k", top_k), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PredictError(f"{setting}={value!r}: must be a positive integer")


def _tf_error_text(exc: BaseException) -> str:
    """The op's own message from a TF runtime error, without graph-node and stack decorations."""
    message = getattr(exc, "message", None) or str(exc)
    for line in message.splitlines():
        line = re.sub(r"\{\{function_node [^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\]", "", line).strip()
        if line and not line.startswith(("Graph execution error", "Detected at node", "<stack traces")):
            return line[:300]
    return type(exc).__name__


class _Predictor:
    """A loaded SavedModel plus labels: encoded images in, ranked classes out, in batches.

    One bad image must not cost the others their predictions: a batch that fails to decode is rerun image
    by image, and only the images that fail on their own get an ``error``.
    """

    def __init__(self, saved_model: str, labels: Sequence[tuple[str, str]], *, top_k: int, batch_size: int) -> None:
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(saved_model)  # kept: the signature reads the loaded variables
        if SIGNATURE not in self._loaded.signatures:
            raise ModelDirError(f"{saved_model}: SavedModel has no {SIGNATURE!r} signature (has "
                                f"{sorted(self._loaded.signatures)}); re-export it with export_saved_model")
        self._serve = self._loaded.signatures[SIGNATURE]
        num_classes = self._serve.structured_outputs["probabilities"].shape[-1]
        if num_classes is not None and num_classes != len(labels):
            raise ModelDirError(f"{saved_model}: the model has {num_classes} classes but labels.txt has {len(labels)}; "
                                "copy the labels.txt of the dataset the model was trained on")
        self._labels = list(labels)
        self._top_k = min(top_k, len(self._labels))
        self._batch_size = batch_size

    def predict(self, inputs: Iterable[_Input]) -> Iterator[tuple[_Input, dict[str, Any]]]:
        """``(input, result)`` per input, in order; memory holds one batch of encoded images at a time."""
        iterator = iter(inputs)
        while batch := list(itertools.islice(iterator, self._batch_size)):
            yield from self._predict_batch(batch)

    def _run(self, items: Sequence[_Input]) -> Any:
        tf = self._tf
        out = self._serve(image_bytes=tf.constant([i.data for i in items], tf.string),
                          key=tf.constant([i.key for i in items], tf.string))
        return out["probabilities"].numpy()

    def _predict_batch(self, batch: Sequence[_Input]) -> Iterator[tuple[_Input, dict[str, Any]]]:
        readable = [i for i in batch if i.data is not None]
        probabilities: dict[int, Any] = {}
        errors: dict[int, str] = {}
        if readable:
            try:
                for item, row in zip(readable, self._run(readable)):
                    probabilities[id(item)] = row
            except self._tf.errors.InvalidArgumentError:
                for item in readable:
                    try:
                        probabilities[id(item)] = self._run([item])[0]
                    except self._tf.errors.InvalidArgumentError as exc:
                        errors[id(item)] = _tf_error_text(exc)
        for item in batch:
            row = probabilities.get(id(item))
            if row is None:
                error = item.error or errors.get(id(item)) or "not classified"
                log.warning("%s: cannot classify: %s", item.key, error)
                yield item, {"key": item.key, "class": None, "top": [], "error": error}
                continue
            ranked = sorted(range(len(row)), key=lambda c: (-float(row[c]), c))[: self._top_k]
            top = [{"index": c, "synset": self._labels[c][0], "name": self._labels[c][1],
                    "probability": float(row[c])} for c in ranked]
            result = {"key": item.key, "class": ranked[0], "top": top}
            if item.converted:
                result["converted"] = list(item.converted)
            yield item, result


def _read_input(uri: str, key: str, extra: Any = None) -> _Input:
    try:
        data = fs.read_bytes(uri)
    except OSError as exc:
        return _Input(key, None, f"cannot read: {exc}", extra)
    return _for_signature(_Input(key, data, None, extra))


def _for_signature(item: _Input) -> _Input:
    """``item`` with bytes the signature decodes to the pixels the partition job would have produced.

    Why: the partition job (and so training) decodes any format Pillow reads, applies colour profiles and
    composites alpha over white, while the signature decodes in TensorFlow (JPEG, PNG, GIF, BMP; no
    profiles; alpha dropped). Images that differ are converted here with the partition job's own rules
    (``images.for_serving``) into lossless PNG, and ``converted`` says what was done; the rest go as they are.
    """
    result = images.for_serving(item.data or b"", filename=item.key, max_pixels=images.DEFAULT_MAX_PIXELS)
    if result is None:
        return item
    if isinstance(result, images.Rejected):
        return item._replace(data=None, error=f"{result.reason}: {result.detail}")
    log.debug("%s: converted for the signature (%s)", item.key, ", ".join(result.conversions))
    return item._replace(data=result.data, converted=result.conversions + ("png",))


def _log_conversions(results: Iterable[dict], where: str) -> None:
    """One line saying how many images were converted before the signature, and how, by kind."""
    kinds = Counter(kind for r in results for kind in r.get("converted", ()) if kind != "png")
    converted = sum(1 for r in results if r.get("converted"))
    if converted:
        log.info("%s: %d image(s) converted to PNG before the SavedModel, which decodes only JPEG/PNG/GIF/BMP "
                 "without colour profiles or alpha (the partition job's rules): %s", where, converted,
                 ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))


def predict_files(model_dir: str, paths: Sequence[str], *, top_k: int = 5, batch_size: int = 32) -> list[dict]:
    """Classify image files with a model dir's SavedModel (loaded once); one result per path, in order.

    Each result is ``{"key": path, "class": index, "top": [{"index", "synset", "name", "probability"}, ...]}``
    with ``top`` sorted by probability, ``top_k`` long. A file that is not a decodable image gets
    ``class`` None, an empty ``top`` and ``error`` (the others are still classified); a path that does not
    exist fails before the model is loaded.
    """
    _check_predict_options(top_k, batch_size)
    saved_model = _saved_model_dir(model_dir)
    labels = load_labels(model_dir)
    missing = [p for p in paths if not fs.is_file(p)]
    if missing:
        raise PredictError(f"{len(missing)} of {len(paths)} paths are not files: {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}; check the paths (folders: use list_images)")
    if not paths:
        return []
    started = time.monotonic()
    predictor = _Predictor(saved_model, labels, top_k=top_k, batch_size=batch_size)
    results = [result for _, result in predictor.predict(_read_input(p, p) for p in paths)]
    _log_conversions(results, "predict")
    log.info("classified %d images with %s in %.1f s", len(results), saved_model, time.monotonic() - started)
    return results


def format_predictions(results: Iterable[dict]) -> str:
    """What a person reads: per image its path, then one line per class ``  0.873  n01440764  tench, ...``."""
    lines: list[str] = []
    for result in results:
        lines.append(str(result["key"]))
        if result.get("error"):
            lines.append(f"  error: {result['error']}")
        if result.get("converted"):
            lines.append(f"  converted: {' -> '.join(result['converted'])}")
        for entry in result["top"]:
            lines.append(f"  {entry['probability']:.3f}  {entry['synset']}  {entry['name']}")
    return "\n".join(lines)


def _is_image_name(relpath: str) -> bool:
    parts = relpath.split("/")
    return not any(p.startswith(".") for p in parts) and relpath.lower().endswith(IMAGE_EXTENSIONS)


def list_images(source: str) -> list[fs.FileEntry]:
    """Image files below a folder (any nesting), sorted; hidden files and other extensions are skipped.

    Also accepts a single file. Why by extension: a folder of images usually carries a README, a
    labels file or ``.DS_Store``; those are not predictions anyone wants, and would only produce errors.
    """
    if fs.is_file(source):
        uri = fs.normalize(source)
        return [fs.FileEntry(uri, posixpath.basename(uri), -1)]
    if not fs.is_dir(source):
        raise PredictError(f"source {source}: does not exist; pass a folder of images, a file, or a dataset "
                           "written by the partition job")
    entries = fs.list_files(source)
    images = [e for e in entries if _is_image_name(e.relpath)]
    if len(images) < len(entries):
        log.info("%s: skipping %d files that are hidden or not %s", source, len(entries) - len(images),
                 "/".join(IMAGE_EXTENSIONS))
    return images


# --- batch inference on Spark -------------------------------------------------------------------------------


def _output_schema(T: Any, *, with_truth: bool) -> Any:  # noqa: N803 - pyspark.sql.types, imported by the caller
    fields = [
        T.StructField("key", T.StringType(), False),
        T.StructField("filename", T.StringType(), True),
        T.StructField("class", T.IntegerType(), True),
        T.StructField("synset", T.StringType(), True),
        T.StructField("name", T.StringType(), True),
        T.StructField("probability", T.FloatType(), True),
        T.StructField("top_k_synsets", T.ArrayType(T.StringType(), False), False),
        T.StructField("top_k_probabilities", T.ArrayType(T.FloatType(), False), False),
    ]
    if with_truth:
        fields += [T.StructField("label", T.IntegerType(), True), T.StructField("true_synset", T.StringType(), True)]
    fields.append(T.StructField("error", T.StringType(), True))
    return T.StructType(fields)


def _predict_partition(rows: Iterable[Any], *, saved_model: str, labels: Sequence[tuple[str, str]], top_k: int,
                       batch_size: int, dataset: bool, true_synsets: Sequence[str] | None,
                       cpus: int) -> Iterator[tuple]:
    """Executor side: load the SavedModel once for the partition, stream its images through in batches.

    Rows are ``(uri, relpath)`` for a folder source, Spark Rows ``(filename, image, label, synset)`` for a
    dataset. Empty partitions return before TensorFlow is imported.
    """
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return
    from imagenet_spark.distribute.threads import configure

    # Sized to the task (spark.task.cpus), not the machine the executor's other tasks share; the same helper as
    # the training workers. A reused Python worker keeps its first task's sizing.
    configure(cpus)
    predictor = _Predictor(saved_model, labels, top_k=top_k, batch_size=batch_size)

    def inputs() -> Iterator[_Input]:
        for row in itertools.chain([first], iterator):
            if dataset:
                label = int(row["label"])
                synset = true_synsets[label] if true_synsets and 0 <= label < len(true_synsets) else str(row["synset"])
                yield _Input(row["filename"], bytes(row["image"]), None, (row["filename"], label, synset))
            else:
                uri, relpath = row
                yield _read_input(uri, uri, (relpath,))

    converted: list[dict] = []
    for item, result in predictor.predict(inputs()):
        if result.get("converted"):
            converted.append(result)
        top = result["top"]
        head = top[0] if top else {"synset": None, "name": None, "probability": None}
        values: tuple = (item.key, item.extra[0], result["class"], head["synset"], head["name"], head["probability"],
                         [t["synset"] for t in top], [t["probability"] for t in top])
        if dataset:
            values += (item.extra[1], item.extra[2])
        yield values + (result.get("error"),)
    _log_conversions(converted, f"predict partition of {saved_model}")  # in the executor's log


def _dataset_split(source: str, split: str) -> tuple[str, str | None] | None:
    """``(split uri, labels.txt uri or None)`` when ``source`` is a dataset root or one of its splits."""
    if fs.is_file(fs.join(source, "manifest.json")):
        split_uri = fs.join(source, split)
        if not fs.is_dir(split_uri):
            raise PredictError(f"source {source}: a dataset without a {split}/ split; pass split= one of its "
                               "splits (train, validation)")
        labels_uri = fs.join(source, LABELS)
        return split_uri, labels_uri if fs.is_file(labels_uri) else None
    # A split as the partition job writes it: _common_metadata and synset=<wnid>/ folders; or any Parquet folder.
    # Only the top level is listed: a folder of images may hold many thousands of files.
    if fs.is_dir(source) and any(e.relpath == "_common_metadata" or e.relpath.endswith(".parquet")
                                 or e.relpath.startswith("synset=") for e in fs.list_dir(source)):
        labels_uri = fs.join(posixpath.dirname(source.rstrip("/")), LABELS)
        return source, labels_uri if fs.is_file(labels_uri) else None
    return None


def _check_labels_on_driver(saved_model: str, labels: Sequence[tuple[str, str]]) -> None:
    """Compare labels.txt with the class count the export recorded, so a mismatch fails on the driver in
    milliseconds instead of in every executor task after TensorFlow has loaded."""
    info_uri = fs.join(saved_model, "assets", MODEL_INFO)
    if not fs.is_file(info_uri):  # exported by something else: the executors check against the signature
        return
    num_classes = json.loads(fs.read_text(info_uri)).get("num_classes")
    if num_classes is not None and num_classes != len(labels):
        raise ModelDirError(f"{saved_model}: the model has {num_classes} classes but labels.txt has {len(labels)}; "
                            "copy the labels.txt of the dataset the model was trained on")


def predict_on_spark(
    spark: Any,
    model_dir: str,
    source: str,
    output: str,
    *,
    top_k: int = 5,
    batch_size: int = 64,
    split: str = "validation",
    num_partitions: int | None = None,
    overwrite: bool = False,
) -> int:
    """Batch inference on the executors; writes one Parquet row per image to ``output``; returns the row count.

    ``source`` is a folder of images (any nesting; hidden files and non-image extensions skipped) or a
    dataset written by the partition job: its root (``split`` is read, validation by default) or one split.
    Each partition loads the SavedModel once (TensorFlow is imported on the executor) and streams its
    images through in batches of ``batch_size``, so executor memory holds one batch, whatever the partition
    size. Columns: ``key`` (the file's URI, or the dataset's ``filename``), ``filename`` (relative), ``class``,
    ``synset``, ``name``, ``probability`` (top-1), ``top_k_synsets``, ``top_k_probabilities``; for dataset
    sources also ``label`` and ``true_synset``; ``error`` for images that could not be decoded (their class
    is null: every input gets a row, none vanishes). Model dir and source must be readable by executors.
    ``output`` must not exist unless ``overwrite``.
    """
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql import types as T  # noqa: N812

    from imagenet_spark.spark.jobs import job_group

    _check_predict_options(top_k, batch_size)
    if num_partitions is not None and (isinstance(num_partitions, bool) or not isinstance(num_partitions, int)
                                       or num_partitions < 1):
        raise PredictError(f"num_partitions={num_partitions!r}: must be a positive integer or None (automatic)")
    saved_model = _saved_model_dir(model_dir)
    labels = load_labels(model_dir)
    _check_labels_on_driver(saved_model, labels)
    if fs.exists(output) and not overwrite:
        raise PredictError(f"output {output}: already exists; choose another output or pass overwrite=True "
                           "(--overwrite) to replace it")
    started = time.monotonic()
    sc = spark.sparkContext
    cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    found = _dataset_split(source, split)
    dataset = found is not None
    true_synsets: list[str] | None = None
    if found is not None:
        split_uri, labels_uri = found
        if labels_uri:
            true_synsets = [s for s, _ in parse_labels(fs.read_text(labels_uri), source=labels_uri)]
        frame = spark.read.parquet(split_uri)
        missing = {"image", "filename", "label"} - set(frame.columns)
        if missing:
            raise PredictError(f"source {split_uri}: Parquet without column(s) {sorted(missing)} (has "
                               f"{frame.columns}); pass a dataset written by the partition job or a folder of images")
        columns = ["filename", "image", "label", "synset" if "synset" in frame.columns else F.lit(None).alias("synset")]
        rdd = frame.select(*columns).rdd
        if num_partitions:
            rdd = rdd.repartition(num_partitions)
        described = f"{split_uri} ({'labels ' + labels_uri if labels_uri else 'no labels.txt: synset column'})"
    else:
        images = list_images(source)
        if not images:
            raise PredictError(f"source {source}: no images ({'/'.join(IMAGE_EXTENSIONS)}) and not a dataset "
                               "written by the partition job; pass a folder of images or a dataset")
        # Enough partitions to use the cluster, few enough that loading the model stays a small cost.
        slices = num_partitions or max(1, min(len(images), sc.defaultParallelism * 4,
                                              math.ceil(len(images) / batch_size)))
        rdd = sc.parallelize([(e.uri, e.relpath) for e in images], slices)
        described = f"{len(images)} images under {source}"
    log.info("predicting %s with %s -> %s", described, saved_model, output)
    partition_fn = functools.partial(_predict_partition, saved_model=saved_model, labels=labels, top_k=top_k,
                                     batch_size=batch_size, dataset=dataset, true_synsets=true_synsets, cpus=cpus)
    predictions = spark.createDataFrame(rdd.mapPartitions(partition_fn), _output_schema(T, with_truth=dataset))
    with job_group(spark, f"imagenet-spark predict {source} -> {output}"):
        predictions.write.mode("overwrite" if overwrite else "errorifexists").parquet(output)
        written = spark.read.parquet(output)
        aggregates = [F.count(F.lit(1)).alias("rows"), F.count("error").alias("errors")]
        if dataset:
            aggregates += [F.avg((F.col("synset") == F.col("true_synset")).cast("double")).alias("top1"),
                           F.avg(F.array_contains("top_k_synsets", F.col("true_synset")).cast("double")).alias("topk")]
        summary = written.agg(*aggregates).first().asDict()
    rows = int(summary["rows"])
    accuracy = ""
    if dataset and summary.get("top1") is not None:
        accuracy = f"; top-1 {summary['top1']:.3f}, top-{top_k} {summary['topk']:.3f}"
    log.info("wrote %d predictions (%d errors) to %s in %.1f s%s", rows, summary["errors"], output,
             time.monotonic() - started, accuracy)
    return rows


# --- command line (wired into cli.py's _COMMANDS) -----------------------------------------------------------


def run_predict_cli(args: argparse.Namespace) -> int:
    """Print top-k per image (exit 1 if any image could not be classified), or run on Spark with --output."""
    if args.output:
        if len(args.inputs) != 1:
            raise PredictError(f"--output with {len(args.inputs)} inputs: pass one folder of images or one dataset")
        from imagenet_spark.spark.session import build_session, ship_package

        spark = build_session("imagenet-spark predict", master=args.master)
        ship_package(spark)
        predict_on_spark(spark, args.model_dir, args.inputs[0], args.output, top_k=args.top_k,
                         batch_size=args.batch_size or 64, split=args.split, overwrite=args.overwrite)
        return 0
    paths = [e.uri for source in args.inputs for e in list_images(source)]
    if not paths:
        raise PredictError(f"no images in {', '.join(args.inputs)} ({'/'.join(IMAGE_EXTENSIONS)})")
    results = predict_files(args.model_dir, paths, top_k=args.top_k, batch_size=args.batch_size or 32)
    log.info("predictions:\n%s", format_predictions(results))
    return 1 if any(r.get("error") for r in results) else 0
