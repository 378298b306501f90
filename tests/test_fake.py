"""Tests for the synthetic ImageNet generator (imagenet_spark.data.fake).

The generator is the oracle for the rest of the suite: its summary says what the pipeline must accept,
convert, reject and skip. So these tests check that every claim in the summary is true of the bytes on
disk, that the layouts are exactly the real dataset's, and that the images are learnable.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from imagenet_spark.data import fake
from imagenet_spark.data.fake import FakeSpec, FakeSummary
from imagenet_spark.data.synsets import ilsvrc2012, is_wnid

SMALL = FakeSpec(num_classes=4, train_per_class=3, val_per_class=2)
ODD = FakeSpec(num_classes=6, train_per_class=3, val_per_class=2, quirks=True, broken=True)


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root by relative posix path."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def _check_invariants(summary: FakeSummary) -> None:
    valid = sum(n for split in summary.counts.values() for n in split.values())
    assert summary.total_files == valid + len(summary.broken) + len(summary.skipped)
    assert set(summary.counts) == {"train", "validation"}
    assert summary.classes == tuple(sorted(summary.classes))
    assert set(summary.quirks).isdisjoint(summary.broken)


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# --- layouts ----------------------------------------------------------------------------------------


def test_ilsvrc_layout(tmp_path: Path) -> None:
    summary = fake.write_ilsvrc(tmp_path / "ds", SMALL)
    root = Path(summary.root)
    files = _files(root)
    wnids = tuple(sorted(ilsvrc2012()))[:4]
    assert summary.classes == wnids
    assert summary.counts == {"train": {w: 3 for w in wnids}, "validation": {w: 2 for w in wnids}}
    assert summary.total_files == len(files) - 1 == 4 * 3 + 4 * 2
    for w in wnids:
        assert sorted(p for p in files if p.startswith(f"train/{w}/")) == sorted(
            f"train/{w}/{w}_{i}.JPEG" for i in range(3))
    val = sorted(p for p in files if p.startswith("validation/"))
    assert val == [f"validation/ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 9)]
    for path in files:
        if path.endswith(".JPEG"):
            img = _decode(files[path])
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 48))
    _check_invariants(summary)


def test_synset_labels_pair_with_sorted_validation_names(tmp_path: Path) -> None:
    spec = FakeSpec(num_classes=10, train_per_class=1, val_per_class=5)
    summary = fake.write_ilsvrc(tmp_path, spec)
    labels = (tmp_path / "synset_labels.txt").read_text().splitlines()
    val = sorted(os.listdir(tmp_path / "validation"))
    assert len(labels) == len(val) == 50
    assert Counter(labels) == Counter({w: 5 for w in summary.classes}) == Counter(summary.counts["validation"])
    assert all(is_wnid(w) for w in labels)
    # Numbered over a shuffled class order, like the real validation set (not grouped by class).
    assert labels != sorted(labels)
    # Which label goes with which image is checked by content in test_classes_are_separable.


def test_tar_layout(tmp_path: Path) -> None:
    summary = fake.write_tar(tmp_path, SMALL)
    assert sorted(os.listdir(tmp_path)) == ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar",
                                           "synset_labels.txt"]
    wnids = summary.classes
    members = 0
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", mode="r:") as outer:  # "r:" = uncompressed only
        names = [m.name for m in outer.getmembers()]
        assert sorted(names) == [f"{w}.tar" for w in wnids]
        for w in wnids:
            inner_bytes = outer.extractfile(f"{w}.tar").read()  # type: ignore[union-attr]
            with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:") as inner:
                inner_names = sorted(m.name for m in inner.getmembers())
                assert inner_names == sorted(f"{w}_{i}.JPEG" for i in range(3))
                for name in inner_names:
                    members += 1
                    img = _decode(inner.extractfile(name).read())  # type: ignore[union-attr]
                    assert img.format == "JPEG"
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", mode="r:") as val:
        val_names = [m.name for m in val.getmembers()]
        assert sorted(val_names) == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 9)]
        assert all(m.isfile() for m in val.getmembers())
        members += len(val_names)
    labels = (tmp_path / "synset_labels.txt").read_text().splitlines()
    assert Counter(labels) == Counter({w: 2 for w in wnids})
    assert summary.counts == {"train": {w: 3 for w in wnids}, "validation": {w: 2 for w in wnids}}
    assert summary.total_files == members
    _check_invariants(summary)


def test_tar_and_ilsvrc_hold_the_same_images(tmp_path: Path) -> None:
    """One random stream per image: the layout changes the packaging, never the pictures or labels."""
    fake.write_ilsvrc(tmp_path / "a", SMALL)
    fake.write_tar(tmp_path / "b", SMALL)
    disk = _files(tmp_path / "a")
    with tarfile.open(tmp_path / "b" / "ILSVRC2012_img_val.tar") as val:
        for m in val.getmembers():
            assert val.extractfile(m).read() == disk[f"validation/{m.name}"]  # type: ignore[union-attr]
    assert (tmp_path / "a" / "synset_labels.txt").read_bytes() == (tmp_path / "b" / "synset_labels.txt").read_bytes()


def test_folders_layout(tmp_path: Path) -> None:
    summary = fake.write_folders(tmp_path, SMALL)
    names = fake.default_class_names(4)
    assert summary.classes == tuple(sorted(names))
    assert not any(is_wnid(c) for c in names)
    assert names[:2] == ("circle_red", "square_orange")
    files = _files(tmp_path)
    for c in names:
        assert len([p for p in files if p.startswith(f"train/{c}/") and p.endswith(".jpg")]) == 3
        assert len([p for p in files if p.startswith(f"validation/{c}/") and p.endswith(".jpg")]) == 2
    assert summary.counts == {"train": {c: 3 for c in names}, "validation": {c: 2 for c in names}}
    assert summary.total_files == len(files)
    _check_invariants(summary)


def test_folders_flat_and_custom_names(tmp_path: Path) -> None:
    summary = fake.write_folders(tmp_path, SMALL, split_dirs=False, class_names=["cats", "dogs", "birds"])
    assert sorted(os.listdir(tmp_path)) == ["birds", "cats", "dogs"]
    assert summary.classes == ("birds", "cats", "dogs")
    assert summary.counts == {"train": {"birds": 5, "cats": 5, "dogs": 5}, "validation": {}}
    assert summary.total_files == len(_files(tmp_path)) == 15
    _check_invariants(summary)


@pytest.mark.parametrize("names", [["a", "a"], ["ok", "x/y"], [".hidden"], ["_meta"], [], ["not_a_synset"]])
def test_folders_rejects_bad_class_names(tmp_path: Path, names: list[str]) -> None:
    with pytest.raises(ValueError):
        fake.write_folders(tmp_path, SMALL, class_names=names)


@pytest.mark.parametrize("layout", fake.LAYOUTS)
def test_write_dispatches(tmp_path: Path, layout: str) -> None:
    summary = fake.write(tmp_path, SMALL, layout=layout)
    _check_invariants(summary)
    assert len(summary.classes) == 4
    expected_val = 0 if layout == "folders-flat" else 8
    assert sum(summary.counts["validation"].values()) == expected_val
    assert sum(summary.counts["train"].values()) == 20 - expected_val


def test_write_refuses_unknown_layout_and_non_empty_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        fake.write(tmp_path, SMALL, layout="kaggle")
    (tmp_path / "stale.txt").write_text("x")
    with pytest.raises(FileExistsError):
        fake.write_ilsvrc(tmp_path, SMALL)


@pytest.mark.parametrize("kwargs", [
    {"num_classes": 0}, {"num_classes": 1001}, {"train_per_class": -1}, {"size_jitter": 1.0},
    {"quality": 0}, {"seed": -1}, {"image_size": (4, 48)},
])
def test_spec_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FakeSpec(**kwargs)


def test_spec_realistic_default_size() -> None:
    assert FakeSpec(realistic=True).image_size == (500, 375)
    assert FakeSpec(realistic=True, image_size=(320, 240)).image_size == (320, 240)
    assert FakeSpec().image_size == (64, 48)


# --- quirks and broken files ------------------------------------------------------------------------

_EXPECTED_QUIRK = {  # kind -> (Pillow format, mode, file extension)
    "cmyk": ("JPEG", "CMYK", ".JPEG"),
    "png_named_jpeg": ("PNG", "RGB", ".JPEG"),
    "grayscale": ("JPEG", "L", ".JPEG"),
    "palette": ("PNG", "P", ".png"),
    "alpha": ("PNG", "RGBA", ".png"),
}


def test_quirk_files_are_what_they_claim(tmp_path: Path) -> None:
    summary = fake.write_ilsvrc(tmp_path, ODD)
    assert sorted(summary.quirks.values()) == sorted(_EXPECTED_QUIRK)
    for rel, kind in summary.quirks.items():
        split, cls, name = rel.split("/")
        assert split == "train" and cls in summary.classes
        fmt, mode, ext = _EXPECTED_QUIRK[kind]
        img = _decode((tmp_path / rel).read_bytes())
        assert (img.format, img.mode) == (fmt, mode), rel
        assert name.endswith(ext)
    # Quirk files are valid images of their class: counted, on top of train_per_class.
    assert sum(summary.counts["train"].values()) == 6 * 3 + 5
    alpha = next(r for r, k in summary.quirks.items() if k == "alpha")
    assert _decode((tmp_path / alpha).read_bytes()).getchannel("A").getextrema()[0] < 255


def test_broken_files_are_what_they_claim(tmp_path: Path) -> None:
    summary = fake.write_ilsvrc(tmp_path, ODD)
    assert sorted(summary.broken.values()) == ["empty", "not_an_image", "truncated", "unknown_class"]
    for rel, reason in summary.broken.items():
        data = (tmp_path / rel).read_bytes()
        if reason == "empty":
            assert data == b""
        elif reason == "truncated":
            img = Image.open(io.BytesIO(data))
            assert img.format == "JPEG"  # the header is intact; only decoding fails
            with pytest.raises(OSError, match="truncated|broken data stream"):
                img.load()
        elif reason == "not_an_image":
            assert data
            with pytest.raises(UnidentifiedImageError):
                Image.open(io.BytesIO(data))
        else:
            assert rel.startswith("train/not_a_synset/")
            assert not is_wnid("not_a_synset")
            assert _decode(data).format == "JPEG"
        if reason != "unknown_class":
            assert rel.split("/")[1] in summary.classes  # inside a real class folder
    assert "not_a_synset" not in summary.classes
    assert len(summary.skipped) == 1 and summary.skipped[0].endswith("/.DS_Store")
    assert (tmp_path / summary.skipped[0]).is_file()
    assert summary.total_files == len(_files(tmp_path)) - 1  # all but synset_labels.txt
    _check_invariants(summary)


def test_quirks_and_broken_inside_tar(tmp_path: Path) -> None:
    summary = fake.write_tar(tmp_path, ODD)
    _check_invariants(summary)
    assert summary.broken["ILSVRC2012_img_train.tar/not_a_synset.tar"] == "unknown_class"
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar") as outer:
        inner: dict[str, bytes] = {}
        for m in outer.getmembers():
            with tarfile.open(fileobj=outer.extractfile(m), mode="r:") as t:  # type: ignore[arg-type]
                for im in t.getmembers():
                    data = t.extractfile(im).read()  # type: ignore[union-attr]
                    inner[f"ILSVRC2012_img_train.tar/{m.name}/{im.name}"] = data
    for rel, kind in summary.quirks.items():
        fmt, mode, _ = _EXPECTED_QUIRK[kind]
        img = _decode(inner[rel])
        assert (img.format, img.mode) == (fmt, mode)
    for rel, reason in summary.broken.items():
        if reason == "empty":
            assert inner[rel] == b""
        elif reason == "truncated":
            with pytest.raises(OSError):
                _decode(inner[rel])
    assert all(s in inner for s in summary.skipped)
    assert "ILSVRC2012_img_train.tar/not_a_synset.tar/not_a_synset_0.JPEG" in inner


def test_folders_broken_unknown_class_has_no_training_folder(tmp_path: Path) -> None:
    summary = fake.write_folders(tmp_path, ODD)
    unknown = [r for r, why in summary.broken.items() if why == "unknown_class"]
    assert unknown == ["validation/not_a_synset/not_a_synset_0.jpg"]
    assert not (tmp_path / "train" / "not_a_synset").exists()
    assert summary.total_files == len(_files(tmp_path))
    _check_invariants(summary)
    flat = fake.write_folders(tmp_path / "flat", ODD, split_dirs=False)
    assert "unknown_class" not in flat.broken.values()  # a flat tree has no way to be unknown
    _check_invariants(flat)


def test_summary_agrees_with_the_image_cleaner(tmp_path: Path) -> None:
    """Contract with imagenet_spark.data.images: expected reasons and conversions are the cleaner's."""
    images = pytest.importorskip("imagenet_spark.data.images")
    summary = fake.write_ilsvrc(tmp_path, ODD)
    for rel, reason in summary.broken.items():
        if reason == "unknown_class":
            continue  # decided by the listing, not by the bytes
        out = images.process_image((tmp_path / rel).read_bytes(), filename=rel, resize_short=None, quality=90,
                                   max_pixels=10**8)
        assert getattr(out, "reason", None) == reason, (rel, out)
    for rel, kind in summary.quirks.items():
        out = images.process_image((tmp_path / rel).read_bytes(), filename=rel, resize_short=None, quality=90,
                                   max_pixels=10**8)
        assert kind in out.conversions, (rel, out)


# --- determinism, sizes, speed ----------------------------------------------------------------------


def _digest(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


@pytest.mark.parametrize("layout", ["ilsvrc", "tar"])
def test_same_seed_same_bytes(tmp_path: Path, layout: str) -> None:
    spec = FakeSpec(num_classes=3, train_per_class=2, val_per_class=2, quirks=True, broken=True, size_jitter=0.2)
    fake.write(tmp_path / "a", spec, layout=layout)
    fake.write(tmp_path / "b", spec, layout=layout)
    fake.write(tmp_path / "c", FakeSpec(num_classes=3, train_per_class=2, val_per_class=2, quirks=True,
                                        broken=True, size_jitter=0.2, seed=1), layout=layout)
    a, b, c = (_digest(_files(tmp_path / d)) for d in "abc")
    assert a == b
    assert a != c


def test_size_jitter(tmp_path: Path) -> None:
    spec = FakeSpec(num_classes=2, train_per_class=10, val_per_class=0, image_size=(100, 80), size_jitter=0.2)
    fake.write_folders(tmp_path, spec)
    sizes = {_decode(p.read_bytes()).size for p in tmp_path.glob("train/*/*.jpg")}
    assert len(sizes) > 5
    assert all(80 <= w <= 120 and 64 <= h <= 96 for w, h in sizes)


def test_realistic_jpegs_weigh_like_imagenet_photos(tmp_path: Path) -> None:
    spec = FakeSpec(realistic=True, num_classes=5, train_per_class=1, val_per_class=0)
    fake.write_ilsvrc(tmp_path, spec)
    paths = list(tmp_path.glob("train/*/*.JPEG"))
    assert len(paths) == 5
    assert all(_decode(p.read_bytes()).size == (500, 375) for p in paths)
    mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1000
    assert 70 <= mean_kb <= 160, mean_kb


def test_small_dataset_is_fast(tmp_path: Path) -> None:
    started = time.perf_counter()
    fake.write_ilsvrc(tmp_path, FakeSpec(num_classes=10, train_per_class=20, val_per_class=5))
    assert time.perf_counter() - started < 2.0


# --- learnability -----------------------------------------------------------------------------------


def test_class_patterns_are_distinct() -> None:
    patterns = [fake._pattern(i) for i in range(1000)]
    keys = {(p.shape, tuple(round(v) for v in p.fg), p.bg) for p in patterns}
    assert len(keys) == 1000
    names = fake.default_class_names(1000)
    assert len(set(names)) == 1000
    # Neighbouring classes differ in shape, hue and background at once.
    for a, b in zip(patterns, patterns[1:]):
        assert a.shape != b.shape and a.fg != b.fg and a.bg != b.bg


def _pixels(data: bytes, size: int = 16) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32).ravel() / 255.0


def test_classes_are_separable(tmp_path: Path) -> None:
    """A nearest-class-mean classifier on 16x16 pixels must beat chance by far: the images are learnable.

    It also proves synset_labels.txt pairs each validation file with the class that drew it.
    """
    spec = FakeSpec(num_classes=10, train_per_class=20, val_per_class=5, size_jitter=0.2)
    summary = fake.write_ilsvrc(tmp_path, spec)
    classes = summary.classes
    means = np.stack([
        np.mean([_pixels(p.read_bytes()) for p in (tmp_path / "train" / w).glob("*.JPEG")], axis=0)
        for w in classes
    ])
    labels = (tmp_path / "synset_labels.txt").read_text().splitlines()
    val = sorted((tmp_path / "validation").iterdir())
    x = np.stack([_pixels(p.read_bytes()) for p in val])
    predicted = np.argmin(((x[:, None, :] - means[None, :, :]) ** 2).sum(-1), axis=1)
    accuracy = float(np.mean([classes[k] == lab for k, lab in zip(predicted, labels)]))
    assert accuracy >= 0.8, accuracy
