"""Sharp edges of issue #14, each with real Pillow, TensorFlow and Spark:

1. ``predict`` accepts every format the partition job accepts (WebP, TIFF, ...), converting what TensorFlow
   cannot decode with the partition job's rules, while the signature itself still takes JPEG/PNG/GIF/BMP only;
2. an embedded non-sRGB ICC profile is converted to sRGB (``icc_to_srgb``), not dropped;
3. class folders that differ only in case are refused, naming both;
4. an empty class folder (or one whose every image is rejected) stays a class and is listed in
   ``empty_classes``;
5. every class name with a character that cannot name a partition directory is named in one error;
6. a task that fills its disk gives one line with the path, the host, the free space and the fix.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from imagenet_spark.config import ConfigError, PartitionConfig, resolve
from imagenet_spark.data import images
from imagenet_spark.spark import jobs

# --- helpers --------------------------------------------------------------------------------------------------


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def matrix_profile(red: tuple, green: tuple, blue: tuple, gamma: float) -> bytes:
    """An ICC v2 RGB display profile (matrix + gamma curve), written byte by byte from the ICC spec: Pillow
    can only create sRGB, LAB and XYZ profiles, and a wide-gamut RGB one is what real photos carry."""
    name = b"test wide-gamut RGB"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(name) + 1) + name + b"\0" + b"\0" * 8 + b"\0" * 70
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", _xyz(*red)), (b"gXYZ", _xyz(*green)),
            (b"bXYZ", _xyz(*blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
            (b"cprt", b"text\0\0\0\0none\0\0\0\0")]
    offset = 128 + 4 + 12 * len(tags)
    table = body = b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"\0\0\0\0" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


# Adobe RGB (1998) primaries, D50-adapted as ICC profiles store them, gamma 563/256.
ADOBE_LIKE = matrix_profile((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446), 563 / 256)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _centre(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("RGB"), np.int16)
    return arr[arr.shape[0] // 2, arr.shape[1] // 2]


def _partition(spark, root: Path, out: Path, **settings):
    from imagenet_spark.jobs.partition import run_partition

    explicit = dict(input=str(root), output=str(out), images_per_task=4, rows_per_row_group=4, **settings)
    return run_partition(spark, resolve(PartitionConfig, explicit=explicit))


def _write_class(folder: Path, colour: tuple[int, int, int], n: int, fmt: str = "JPEG", ext: str = ".jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i}{ext}").write_bytes(_encode(Image.new("RGB", (40 + i, 36), colour), fmt))


# --- 2. ICC profiles ------------------------------------------------------------------------------------------

GREEN = (60, 200, 60)


@pytest.mark.parametrize("resize_short", [64, None])
def test_wide_gamut_profile_is_converted_to_srgb(resize_short):
    data = _encode(Image.new("RGB", (160, 120), GREEN), "JPEG", quality=95, icc_profile=ADOBE_LIKE)
    dropped = _encode(Image.new("RGB", (160, 120), GREEN), "JPEG", quality=95)
    out = images.process_image(data, filename="a.jpg", resize_short=resize_short, quality=95, max_pixels=10**8)
    plain = images.process_image(dropped, filename="a.jpg", resize_short=resize_short, quality=95, max_pixels=10**8)
    assert isinstance(out, images.Processed) and isinstance(plain, images.Processed)
    assert images.ICC_TO_SRGB in out.conversions and images.ICC_TO_SRGB not in plain.conversions
    assert out.data != data  # never passed through with the profile's meaning lost downstream
    # Adobe RGB's green is more saturated than sRGB's: in sRGB the same colour needs ~(0, 201, 37).
    # Dropping the profile would keep (60, 200, 60): red and blue 40+ levels too high.
    assert abs(_centre(plain.data) - GREEN).max() <= 3
    got = _centre(out.data)
    assert got[0] <= 8 and 190 <= got[1] <= 210 and 25 <= got[2] <= 48, got
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.mode == "RGB" and (img.width, img.height) == (out.width, out.height)


def test_srgb_profile_passes_through_and_a_broken_one_is_recorded():
    srgb_tagged = _encode(Image.new("RGB", (50, 40), GREEN), "JPEG", quality=95, icc_profile=SRGB)
    out = images.process_image(srgb_tagged, filename="s.jpg", resize_short=None, quality=90, max_pixels=10**8)
    assert isinstance(out, images.Processed) and out.data == srgb_tagged and out.conversions == ()

    broken = _encode(Image.new("RGB", (50, 40), GREEN), "JPEG", quality=95, icc_profile=b"\0" * 200)
    out = images.process_image(broken, filename="b.jpg", resize_short=32, quality=90, max_pixels=10**8)
    assert isinstance(out, images.Processed) and out.conversions == (images.ICC_UNUSABLE,)
    assert abs(_centre(out.data) - GREEN).max() <= 4  # used as sRGB, not rejected

    # A palette PNG with a profile: converted after the palette is expanded.
    pal = Image.new("RGB", (30, 30), GREEN).convert("P")
    out = images.process_image(_encode(pal, "PNG", icc_profile=ADOBE_LIKE), filename="p.png", resize_short=None,
                               quality=95, max_pixels=10**8)
    assert isinstance(out, images.Processed)
    assert {images.PALETTE, images.ICC_TO_SRGB} <= set(out.conversions) and _centre(out.data)[0] <= 8


# --- 1. predict accepts what the partition job accepts --------------------------------------------------------

COLOURS = ((220, 40, 40), (40, 180, 40), (40, 40, 220), (230, 220, 40))
LABELS_TXT = "".join(f"{i}\tc{i}\tcolour {i}\n" for i in range(4))


@pytest.fixture(scope="module")
def colour_model_dir(tmp_path_factory) -> Path:
    """A tiny model (mean colour -> dense) that tells 4 solid colours apart, exported with the real signature."""
    tf = pytest.importorskip("tensorflow")
    from imagenet_spark.models import registry
    from imagenet_spark.serving import export

    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2048)
    pixels = np.array(COLOURS, np.float32)[labels][:, None, None, :] + rng.normal(0, 12, (2048, 1, 1, 3))
    pixels = np.broadcast_to(np.clip(pixels, 0, 255), (2048, 8, 8, 3))
    normalised = ((pixels - registry.IMAGENET_MEAN) / registry.IMAGENET_STD).astype(np.float32)
    model = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.GlobalAveragePooling2D(),
                                 tf.keras.layers.Dense(4)])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(normalised, labels, batch_size=64, epochs=4, verbose=0)
    root = tmp_path_factory.mktemp("colour-run")
    export.export_saved_model(model, str(root / "saved_model"), model_name="colour_probe", image_size=8,
                              eval_resize=8, mean=registry.IMAGENET_MEAN, std=registry.IMAGENET_STD,
                              labels_txt=LABELS_TXT)
    return root


def _other_formats(root: Path) -> dict[str, int]:
    """File name -> class: formats TensorFlow cannot decode, and ones it decodes differently from Pillow."""
    root.mkdir(parents=True, exist_ok=True)
    rgba = Image.new("RGBA", (40, 30), COLOURS[2] + (255,))
    rgba.paste((0, 0, 0, 0), (0, 0, 40, 6))  # a transparent band: white in training, black to TF
    files = {
        "red.webp": (0, _encode(Image.new("RGB", (48, 40), COLOURS[0]), "WEBP", quality=95)),
        "green.tiff": (1, _encode(Image.new("RGB", (41, 50), COLOURS[1]), "TIFF")),
        "yellow.tif": (3, _encode(Image.new("RGB", (30, 30), COLOURS[3]).convert("CMYK"), "TIFF")),
        "blue_alpha.png": (2, _encode(rgba, "PNG")),
        "red.jpg": (0, _encode(Image.new("RGB", (50, 40), COLOURS[0]), "JPEG", quality=95)),
    }
    for name, (_, data) in files.items():
        (root / name).write_bytes(data)
    return {name: cls for name, (cls, _) in files.items()}


def test_signature_takes_tf_formats_and_predict_converts_the_rest(colour_model_dir, tmp_path, caplog):
    import tensorflow as tf

    from imagenet_spark.serving import predict

    expected = _other_formats(tmp_path / "imgs")
    webp = (tmp_path / "imgs" / "red.webp").read_bytes()
    # The partition job accepts WebP ...
    processed = images.process_image(webp, filename="red.webp", resize_short=None, quality=90, max_pixels=10**8)
    assert isinstance(processed, images.Processed) and processed.conversions == ("other_format:webp",)
    # ... the SavedModel's signature itself does not on TF 2.15 (what a server calling it directly gets); TF >= 2.18
    # (the current stack) decodes WebP in tf.io.decode_image too ...
    serve = tf.saved_model.load(str(colour_model_dir / "saved_model")).signatures["serving_default"]
    if hasattr(tf.io, "decode_webp"):
        assert serve(image_bytes=tf.constant([webp]), key=tf.constant(["k"]))["classes"].shape == (1,)
    else:
        with pytest.raises(tf.errors.InvalidArgumentError):
            serve(image_bytes=tf.constant([webp]), key=tf.constant(["k"]))
    # ... and predict converts it (the folder listing includes .webp/.tif/.tiff).
    entries = predict.list_images(str(tmp_path / "imgs"))
    assert sorted(e.relpath for e in entries) == sorted(expected)
    with caplog.at_level(logging.INFO, logger="imagenet_spark.serving.predict"):
        results = predict.predict_files(str(colour_model_dir), [e.uri for e in entries], top_k=2)
    got = {Path(r["key"]).name: r for r in results}
    for name, cls in expected.items():
        assert got[name].get("error") is None and got[name]["class"] == cls, (name, got[name])
    assert got["red.webp"]["converted"] == ["other_format:webp", "png"]
    assert got["green.tiff"]["converted"] == ["other_format:tiff", "png"]
    assert got["yellow.tif"]["converted"] == ["other_format:tiff", "cmyk", "png"]
    assert got["blue_alpha.png"]["converted"] == ["other_format:png", "alpha", "png"]
    assert "converted" not in got["red.jpg"]  # TF-native and plain: sent as it is
    assert any("4 image(s) converted to PNG before the SavedModel" in r.getMessage() for r in caplog.records)
    assert "  converted: other_format:webp -> png" in predict.format_predictions([got["red.webp"]])


def test_serving_bytes_are_the_partition_jobs_pixels(tmp_path):
    """What predict sends decodes (in TensorFlow) to the pixels the partition job stores (before JPEG)."""
    import tensorflow as tf

    _other_formats(tmp_path)
    for name in ("red.webp", "green.tiff", "blue_alpha.png"):
        data = (tmp_path / name).read_bytes()
        served = images.for_serving(data, filename=name, max_pixels=10**8)
        assert isinstance(served, images.Processed)
        tf_pixels = tf.io.decode_image(served.data, channels=3).numpy()
        stored = images.process_image(data, filename=name, resize_short=None, quality=100, max_pixels=10**8)
        assert isinstance(stored, images.Processed)
        jpeg_pixels = np.asarray(Image.open(io.BytesIO(stored.data)).convert("RGB"), np.int16)
        assert tf_pixels.shape == jpeg_pixels.shape
        diff = np.abs(tf_pixels.astype(np.int16) - jpeg_pixels)
        # Equal but for JPEG's chroma ringing at the alpha band's edge (dropping alpha: a 215-level black band).
        assert diff.mean() <= 3 and np.median(diff) <= 1, (name, diff.mean())
    assert tf.io.decode_image(images.for_serving((tmp_path / "blue_alpha.png").read_bytes(), filename="x.png",
                                                 max_pixels=10**8).data, channels=3).numpy()[0, 0].tolist() == [255] * 3
    plain = (tmp_path / "red.jpg").read_bytes()
    assert images.for_serving(plain, filename="red.jpg", max_pixels=10**8) is None
    assert images.for_serving(b"junk", filename="j.jpg", max_pixels=10**8) is None  # TF's own error reports it
    big = images.for_serving((tmp_path / "red.webp").read_bytes(), filename="r.webp", max_pixels=100)
    assert isinstance(big, images.Rejected) and big.reason == images.TOO_MANY_PIXELS


@pytest.mark.slow
def test_predict_on_spark_converts_other_formats(spark, colour_model_dir, tmp_path):
    import pyarrow.parquet as pq

    from imagenet_spark.jobs.predict import predict_on_spark

    expected = _other_formats(tmp_path / "imgs")
    rows = predict_on_spark(spark, str(colour_model_dir), str(tmp_path / "imgs"), str(tmp_path / "out"),
                            top_k=2, num_partitions=2)
    assert rows == len(expected)
    got = {r["filename"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert {name: (r["class"], r["error"]) for name, r in got.items()} == {n: (c, None) for n, c in expected.items()}


# --- 3, 4, 5. class names and empty classes ---------------------------------------------------------------------


def test_class_names_are_checked_all_at_once(spark, tmp_path):
    root = tmp_path / "in"
    for name in ("a#b", "c%d", "e?f", "g:h", "ok"):
        _write_class(root / name, (200, 50, 50), 1)
    with pytest.raises(ConfigError) as info:
        _partition(spark, root, tmp_path / "out")
    text = str(info.value)
    assert "4 class name(s) contain characters" in text
    for name, char in (("a#b", "#"), ("c%d", "%"), ("e?f", "?"), ("g:h", ":")):
        assert f"{name!r} ({char!r})" in text
    assert "'ok'" not in text and "Fix: rename those class folders" in text and "--layout csv" in text
    assert not (tmp_path / "out").exists()


def test_classes_differing_only_in_case_are_refused(spark, tmp_path):
    root = tmp_path / "in"
    for name in ("Cat", "cat", "Dog", "DOG", "dog", "eel"):
        _write_class(root / name, (50, 50, 200), 1)
    with pytest.raises(ConfigError) as info:
        _partition(spark, root, tmp_path / "out")
    text = str(info.value)
    assert "2 group(s) of class names differ only in case" in text
    assert "'Cat' and 'cat'" in text and "'DOG' and 'Dog' and 'dog'" in text and "'eel'" not in text
    assert "merge folders that differ only in case" in text


def test_class_names_too_long_for_file_names_are_refused_up_front(spark, tmp_path):
    """A 240-byte class name used to fail the whole job inside Spark with ENAMETOOLONG on a task file."""
    root = tmp_path / "in"
    for name in ("c" * 240, "é" * 101, "d" * 200, "ok"):  # 240 and 202 bytes refused; 200 bytes is the limit
        _write_class(root / name, (200, 50, 50), 1)
    with pytest.raises(ConfigError) as info:
        _partition(spark, root, tmp_path / "out")
    text = str(info.value)
    assert "2 class name(s) longer than 200 bytes" in text and "(240 bytes)" in text and "(202 bytes)" in text
    assert "'dddd" not in text and "at most 200 bytes" in text
    assert not (tmp_path / "out").exists()


def test_symlinked_folders_name_no_class(spark, tmp_path):
    """An alias of a class folder, and a link to a folder outside the input, are not classes of their own."""
    root = tmp_path / "in"
    _write_class(root / "apple", (200, 50, 50), 2)
    _write_class(root / "date", (50, 50, 200), 2)
    (root / "alias").symlink_to(root / "apple")
    _write_class(tmp_path / "elsewhere" / "secret", (9, 9, 9), 1)
    (root / "zz-out").symlink_to(tmp_path / "elsewhere" / "secret")
    manifest = _partition(spark, root, tmp_path / "out", max_reject_fraction=0.5)
    labels = [line.split("\t")[1] for line in (tmp_path / "out" / "labels.txt").read_text().splitlines()]
    assert labels == ["apple", "date"]
    assert manifest["counts"]["train"] == {"apple": 2, "date": 2} and "empty_classes" not in manifest or \
        not manifest["empty_classes"]


def test_empty_class_folder_and_all_rejected_class_stay_classes(spark, tmp_path, caplog):
    root = tmp_path / "in"
    _write_class(root / "apple", (200, 50, 50), 4)
    (root / "banana").mkdir()
    for i in range(2):
        (root / "banana" / f"{i}.jpg").write_bytes(b"not an image")
    (root / "cherry").mkdir()  # empty
    _write_class(root / "date", (50, 50, 200), 4)
    (root / ".hidden").mkdir()
    with caplog.at_level(logging.WARNING, logger="imagenet_spark.data.manifest"):
        manifest = _partition(spark, root, tmp_path / "out", max_reject_fraction=0.5)
    labels = (tmp_path / "out" / "labels.txt").read_text().splitlines()
    assert [line.split("\t")[:2] for line in labels] == [["0", "apple"], ["1", "banana"], ["2", "cherry"],
                                                          ["3", "date"]]
    assert manifest["empty_classes"] == {"train": ["banana", "cherry"]}
    assert manifest["num_classes"] == 4 and manifest["counts"]["train"] == {"apple": 4, "banana": 0, "date": 4}
    published = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert published["empty_classes"] == {"train": ["banana", "cherry"]}
    assert any("2 class(es) have no image" in r.getMessage() and "banana, cherry" in r.getMessage()
               for r in caplog.records)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "train")
    assert sorted(set(zip(table.column("synset").to_pylist(), table.column("label").to_pylist()))) == [
        ("apple", 0), ("date", 3)]


# --- 6. disk full -----------------------------------------------------------------------------------------------


def test_disk_full_is_classified_by_errno_not_text(tmp_path):
    with pytest.raises(OSError) as info, open("/dev/full", "wb", buffering=0) as f:
        f.write(b"x")
    full = info.value
    assert jobs.disk_full_errno(full) == 28
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("wrapped, with a message that says nothing about disks") from exc
    except RuntimeError as wrapped:
        found = jobs.describe_disk_full(wrapped, writes_to=str(tmp_path / "not-yet"), task="t1")
    assert found is not None and found.errno == 28 and found.host == socket.gethostname() and found.task == "t1"
    assert found.path == str(tmp_path / "not-yet")  # /dev/full is no regular file: the folder written to
    assert found.free_bytes is not None and found.total_bytes >= found.free_bytes
    # Same text, other errno: not a full disk.
    assert jobs.disk_full_errno(OSError(13, os.strerror(28))) is None
    assert jobs.describe_disk_full(ValueError("No space left on device")) is None
    line = str(jobs.DiskFullError("job x", [found]))
    assert "\n" not in line and "disk full (No space left on device) writing" in line and "Fix: free space" in line


@pytest.fixture()
def tiny_fs(tmp_path):
    """A real 256 KiB filesystem (tmpfs; needs root): skipped where mounting is not allowed."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_partition_onto_a_full_disk_says_where_in_one_line(spark, tmp_path, tiny_fs, caplog):
    rng = np.random.default_rng(1)
    root = tmp_path / "in"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(8):  # noise does not compress: ~45 KB each, 700 KB in all
            noise = Image.fromarray((rng.random((150, 150, 3)) * 255).astype(np.uint8))
            (root / cls / f"{i}.jpg").write_bytes(_encode(noise, "JPEG", quality=95))
    out = tiny_fs / f"ds-{uuid.uuid4().hex[:6]}"
    with pytest.raises(jobs.DiskFullError) as info:
        _partition(spark, root, out, resize_short="none")
    text = str(info.value)
    logging.getLogger(__name__).info("what the driver says: %s", text)
    failure = info.value.failures[0]
    assert "\n" not in text
    assert failure.errno == 28 and failure.host == socket.gethostname()
    assert failure.path.startswith(str(out / "_staging")), failure.path
    assert failure.free_bytes is not None and failure.free_bytes < 64 * 1024 and failure.total_bytes == 256 * 1024
    assert f"writing {failure.path} on host {failure.host}" in text and "of 256.0 KiB" in text
    assert "Fix: free space there or write to storage with room" in text and "--resume" in text
    # The fix works: more room, then --resume finishes the job.
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_fs)], check=True)
    manifest = _partition(spark, root, out, resize_short="none", resume=True)
    assert manifest["totals"]["written"] == 16
