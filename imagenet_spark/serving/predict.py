"""Classify images with an exported SavedModel on this machine: files in, ranked classes with names out.

The same :class:`Predictor` runs inside the Spark batch-inference tasks (:mod:`imagenet_spark.jobs.predict`),
so a folder classified locally and on a cluster gives the same rows. Inputs are converted first where the
signature would decode them differently from the partition job (:func:`read_input`). TensorFlow is imported
when a :class:`Predictor` is built, not with this module.
"""

from __future__ import annotations

import itertools
import logging
import posixpath
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from imagenet_spark.data import fs, images
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.serving.export import SIGNATURE
from imagenet_spark.serving.labels import ModelDirError, load_labels, saved_model_dir

log = logging.getLogger(__name__)

#: File name endings treated as images when a folder is the source (compared lower-case): what
#: ``tf.io.decode_image`` reads, then the raster formats Pillow reads (converted before the signature, see
#: ``images.for_serving``); anything else in a folder (READMEs, manifests, model files) is skipped. A file
#: named explicitly is tried whatever its name.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif",
                                     ".jpe", ".avif", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".pnm", ".tga",
                                     ".ico", ".qoi", ".apng", ".dib", ".pcx")


class PredictError(ImagenetSparkError, ValueError):
    """Prediction inputs or options we cannot run with; the message names the value and the fix."""


class ImageInput(NamedTuple):
    """One image to classify: ``data`` None means it could not be read (``error`` says why); ``extra``
    travels through untouched (the dataset's label, the file's relative path)."""

    key: str
    data: bytes | None
    error: str | None = None
    extra: Any = None
    converted: tuple[str, ...] = ()


def check_predict_options(top_k: int, batch_size: int) -> None:
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


class Predictor:
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

    def predict(self, inputs: Iterable[ImageInput]) -> Iterator[tuple[ImageInput, dict[str, Any]]]:
        """``(input, result)`` per input, in order; memory holds one batch of encoded images at a time."""
        iterator = iter(inputs)
        while batch := list(itertools.islice(iterator, self._batch_size)):
            yield from self._predict_batch(batch)

    def _run(self, items: Sequence[ImageInput]) -> Any:
        tf = self._tf
        out = self._serve(image_bytes=tf.constant([i.data for i in items], tf.string),
                          key=tf.constant([i.key for i in items], tf.string))
        return out["probabilities"].numpy()

    def _probabilities(self, readable: Sequence[ImageInput]) -> tuple[dict[int, Any], dict[int, str]]:
        """``(probabilities, errors)`` keyed by ``id(item)``: the batch at once, else image by image."""
        probabilities: dict[int, Any] = {}
        errors: dict[int, str] = {}
        if not readable:
            return probabilities, errors
        try:
            for item, row in zip(readable, self._run(readable)):
                probabilities[id(item)] = row
        except self._tf.errors.InvalidArgumentError:
            for item in readable:
                try:
                    probabilities[id(item)] = self._run([item])[0]
                except self._tf.errors.InvalidArgumentError as exc:
                    errors[id(item)] = _tf_error_text(exc)
        return probabilities, errors

    def _predict_batch(self, batch: Sequence[ImageInput]) -> Iterator[tuple[ImageInput, dict[str, Any]]]:
        probabilities, errors = self._probabilities([i for i in batch if i.data is not None])
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
            result: dict[str, Any] = {"key": item.key, "class": ranked[0], "top": top}
            if item.converted:
                result["converted"] = list(item.converted)
            yield item, result


def read_input(uri: str, key: str, extra: Any = None) -> ImageInput:
    """The file at ``uri`` as an input of the signature (converted where needed); a read error becomes the
    input's ``error`` rather than an exception, so one unreadable file does not stop the others."""
    try:
        data = fs.read_bytes(uri)
    except OSError as exc:
        return ImageInput(key, None, f"cannot read: {exc}", extra)
    return _for_signature(ImageInput(key, data, None, extra))


def _for_signature(item: ImageInput) -> ImageInput:
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
    return item._replace(data=result.data, converted=(*result.conversions, "png"))


def log_conversions(results: Iterable[dict[str, Any]], where: str) -> None:
    """One line saying how many images were converted before the signature, and how, by kind."""
    results = list(results)
    kinds = Counter(kind for r in results for kind in r.get("converted", ()) if kind != "png")
    converted = sum(1 for r in results if r.get("converted"))
    if converted:
        log.info("%s: %d image(s) converted to PNG before the SavedModel, which decodes only JPEG/PNG/GIF/BMP "
                 "without colour profiles or alpha (the partition job's rules): %s", where, converted,
                 ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))


def predict_files(model_dir: str, paths: Sequence[str], *, top_k: int = 5,
                  batch_size: int = 32) -> list[dict[str, Any]]:
    """Classify image files with a model dir's SavedModel (loaded once); one result per path, in order.

    Each result is ``{"key": path, "class": index, "top": [{"index", "synset", "name", "probability"}, ...]}``
    with ``top`` sorted by probability, ``top_k`` long. A file that is not a decodable image gets
    ``class`` None, an empty ``top`` and ``error`` (the others are still classified); a path that does not
    exist fails before the model is loaded.
    """
    check_predict_options(top_k, batch_size)
    saved_model = saved_model_dir(model_dir)
    labels = load_labels(model_dir)
    missing = [p for p in paths if not fs.is_file(p)]
    if missing:
        raise PredictError(f"{len(missing)} of {len(paths)} paths are not files: {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}; check the paths (folders: use list_images)")
    if not paths:
        return []
    started = time.monotonic()
    predictor = Predictor(saved_model, labels, top_k=top_k, batch_size=batch_size)
    results = [result for _, result in predictor.predict(read_input(p, p) for p in paths)]
    log_conversions(results, "predict")
    log.info("classified %d images with %s in %.1f s", len(results), saved_model, time.monotonic() - started)
    return results


def format_predictions(results: Iterable[dict[str, Any]]) -> str:
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


def prediction_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """predict_files results as table rows (notebooks): file, top-1 synset/name/probability, the rest of the
    top-k."""
    rows = []
    for result in results:
        top = result.get("top") or []
        head = top[0] if top else {}
        rows.append({"file": result.get("key"), "synset": head.get("synset"), "name": head.get("name"),
                     "probability": round(float(head["probability"]), 4) if head else None,
                     "others": ", ".join(f"{t['name'].split(',')[0]} {t['probability']:.2f}" for t in top[1:]),
                     "error": result.get("error")})
    return rows


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
    found = [e for e in entries if _is_image_name(e.relpath)]
    if len(found) < len(entries):
        log.info("%s: skipping %d files that are hidden or not %s", source, len(entries) - len(found),
                 "/".join(IMAGE_EXTENSIONS))
    return found
