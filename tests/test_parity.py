"""Train/serve parity: the serving signature, fed original files, sees what evaluation on the stored dataset saw.

Two paths that must agree (issue #11 item 4):
  dataset  original file -> the partition job's per-image work (images.process_image: Pillow draft decode,
           OpenCV resize to resize_short, JPEG q90) -> the stored JPEG -> preprocess_eval (what eval_dataset maps)
  serving  original file -> preprocess_any with the dataset's resize_short (what the exported signature runs)
On real photographs (sklearn's two 640x427 JPEGs, rescaled and cropped to other sizes, aspect ratios and
formats) the preprocessed tensors are compared pixel by pixel; on a real small labelled dataset (sklearn's
digits, written as 64 px PNGs as a user would) a briefly trained tiny model must give the same top-1 through
the exported SavedModel as through the dataset path.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets as sklearn_datasets  # both locks pin it: a missing one is a setup bug, not a skip
from PIL import Image

from imagenet_spark.data import images

log = logging.getLogger(__name__)
# The signature decodes differently on TF 2.15 and 2.21: `make test STACK=legacy` runs this file too.
pytestmark = pytest.mark.both_stacks

# Pixel units (mean 0, std 1): errors read as 8-bit levels.
_UNIT = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _photos() -> dict[str, bytes]:
    """The two real photographs as shipped, and rescales/crops of them: portrait, 2.5x larger (a camera-sized
    JPEG that the job decodes in draft mode), a panorama, a large square PNG, and one below resize_short."""
    out: dict[str, bytes] = {}
    for path in sklearn_datasets.load_sample_images().filenames:
        name = Path(path).stem
        out[f"{name}.jpg"] = Path(path).read_bytes()
        photo = Image.open(path).convert("RGB")
        out[f"{name}-portrait.jpg"] = _encode(photo.crop((100, 0, 400, 427)), "JPEG")
        out[f"{name}-1600x1067.jpg"] = _encode(photo.resize((1600, 1067), Image.Resampling.LANCZOS), "JPEG")
        out[f"{name}-panorama.jpg"] = _encode(photo.resize((1800, 500), Image.Resampling.LANCZOS), "JPEG")
        out[f"{name}-900.png"] = _encode(photo.crop((0, 0, 427, 427)).resize((900, 900), Image.Resampling.BICUBIC),
                                         "PNG")
        out[f"{name}-300x200.jpg"] = _encode(photo.resize((300, 200), Image.Resampling.LANCZOS), "JPEG")
    return out


def _dataset_path(data: bytes, name: str, *, resize_short: int, image_size: int, eval_resize: int,
                  mean=_UNIT["mean"], std=_UNIT["std"]):
    """Tensor the evaluation on the stored dataset computes for an original file."""
    from imagenet_spark.data.augment import preprocess_eval

    stored = images.process_image(data, filename=name, resize_short=resize_short, quality=90, max_pixels=10**9)
    assert isinstance(stored, images.Processed), stored
    return preprocess_eval(stored.data, image_size=image_size, eval_resize=eval_resize, mean=mean, std=std)


# (image size, eval resize, bound on any one image's mean absolute error, bound on the mean over the photos),
# in 8-bit levels. Why these: the stored dataset went through a JPEG q90 re-encode that the signature cannot
# reproduce; measured on these photos (the stored image at q90 against the same at q100, through the same eval
# transform) that alone is 2.05 mean / 3.0 max at 224 px and 0.61 / 0.80 at 64 px. The signature measured 2.93
# / 4.22 and 0.86 / 1.14: the JPEG floor plus under a level of resize emulation. Before the fix (one aliased
# bilinear step from the original, fast-DCT decode) it was 5.3 / 11.0 and 9.6 / 14.2; a one-step antialiased
# resize without the dataset's resize_short gives 1.24 / 1.91 at 64 px, which the 64 px bound also refuses.
_BOUNDS = [(224, 256, 5.0, 3.5), (64, 73, 1.5, 1.0)]


@pytest.mark.parametrize("image_size,eval_resize,bound_max,bound_mean", _BOUNDS)
def test_signature_preprocessing_matches_the_stored_dataset_on_real_photos(image_size, eval_resize, bound_max,
                                                                          bound_mean):
    """Per-pixel agreement of the two paths on real photographs; images below resize_short (stored as they
    are) must match exactly."""
    import tensorflow as tf

    from imagenet_spark.data.serving_transform import preprocess_any

    errors = {}
    for name, data in _photos().items():
        dataset = _dataset_path(data, name, resize_short=256, image_size=image_size, eval_resize=eval_resize)
        served = preprocess_any(tf.constant(data), image_size=image_size, eval_resize=eval_resize,
                                resize_short=256, **_UNIT)
        assert served.shape == dataset.shape == (image_size, image_size, 3)
        errors[name] = float(tf.reduce_mean(tf.abs(served - dataset)))
    log.info("MAE (levels) at %d/%d: %s", image_size, eval_resize, {k: round(v, 2) for k, v in errors.items()})
    assert max(errors.values()) <= bound_max, errors
    assert float(np.mean(list(errors.values()))) <= bound_mean, errors
    assert all(errors[name] == 0.0 for name in errors if name.endswith("300x200.jpg")), errors


def test_resize_short_arithmetic_matches_the_partition_job():
    """The signature's target size is images.target_size exactly (same rounding), never an upscale."""
    import tensorflow as tf

    from imagenet_spark.data.serving_transform import dataset_size

    for width, height in [(640, 427), (427, 640), (300, 200), (1001, 257), (257, 1001), (999, 333), (256, 256),
                          (5, 3000), (3000, 300)]:
        h, w = dataset_size(tf.constant(height), tf.constant(width), 256)
        assert (int(w), int(h)) == images.target_size(width, height, 256), (width, height)


def _digit_files(tmp_path: Path) -> tuple[list[bytes], np.ndarray]:
    """sklearn's 1,797 8x8 digits written as 64 px PNG files (bicubic upscale, as a user would)."""
    digits = sklearn_datasets.load_digits()
    folder = tmp_path / "digits"
    folder.mkdir()
    files = []
    for i, pixels in enumerate(digits.images):
        gray = Image.fromarray(np.round(pixels * 255.0 / 16.0).astype(np.uint8), "L")
        path = folder / f"{i:04d}.png"
        gray.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC).save(path)
        files.append(path.read_bytes())
    return files, digits.target.astype(np.int64)


@pytest.mark.slow
def test_exported_signature_agrees_with_stored_dataset_evaluation_on_digits(tmp_path):
    """A tiny ResNet trained briefly on the dataset path; its export, fed the original PNGs, predicts the same
    class for >= 99% of the 1,797 images. resize_short 48 < 64 so the signature's resize is exercised."""
    import tensorflow as tf

    from imagenet_spark.layout import ModelDir
    from imagenet_spark.models import build, info
    from imagenet_spark.serving.export import export_saved_model

    image_size, eval_resize, resize_short = 32, 37, 48
    files, labels = _digit_files(tmp_path)
    model_info = info("resnet_tiny")
    norm = dict(mean=model_info.mean, std=model_info.std)
    x = np.stack([_dataset_path(f, "d.png", resize_short=resize_short, image_size=image_size,
                                eval_resize=eval_resize, **norm).numpy() for f in files])
    tf.keras.utils.set_random_seed(0)
    model = build("resnet_tiny", num_classes=10, image_size=image_size)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, labels, batch_size=64, epochs=2, verbose=0)
    expected = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=-1)

    export_dir = tmp_path / "saved_model"
    export_saved_model(model, str(export_dir), model_name="resnet_tiny", image_size=image_size,
                       eval_resize=eval_resize, resize_short=resize_short, **norm)
    assert json.loads((export_dir / "assets" / ModelDir.MODEL_INFO).read_text())["resize_short"] == resize_short
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    served = np.concatenate([serve(image_bytes=tf.constant(files[i:i + 300]),
                                   key=tf.constant([str(k) for k in range(i, min(i + 300, len(files)))]))["classes"]
                             .numpy() for i in range(0, len(files), 300)])
    agreement = float(np.mean(served == expected))
    log.info("digits: agreement %.4f; top-1 dataset path %.3f, signature %.3f", agreement,
             float(np.mean(expected == labels)), float(np.mean(served == labels)))
    assert len(set(expected.tolist())) >= 5, "a model predicting a few classes only would agree trivially"
    assert agreement >= 0.99, (agreement, float(np.mean(expected == labels)), float(np.mean(served == labels)))
