"""A synthetic, learnable ImageNet: the embedded default dataset for ``make demo`` and the tests.

Why synthetic and not a downloaded sample: the demo and the test suite must run with no network and no
licence questions, yet exercise the real pipeline end to end (listing every input layout, the image
cleaning quirks, the reject accounting, and training a model that visibly learns). So this module
writes the same *layouts* the real ILSVRC2012 comes in, filled with images a tiny CNN can tell apart:

* each class is a fixed combination of a shape (circle, square, triangle, stripes, checkerboard, cross,
  ring), a foreground hue and a background colour, chosen by the class index so that neighbouring
  classes differ in all three and the first 1080 classes are all distinct;
* each image varies the shape's position and scale (always at least 40% of the short side, so it
  survives a resize to 32 px), jitters both colours slightly and adds mild Gaussian noise, so a model
  has to generalise rather than memorise bytes;
* ``realistic=True`` adds photo-like shading and fine texture so a 500x375 JPEG at quality 90 weighs
  about as much as an average ILSVRC2012 photo (~110 KB): that is what benchmarks need, because decode
  and I/O cost scale with the bytes, not with the picture.

Every image is drawn from its own random stream keyed by ``(seed, split, class, index)``, so output is
byte-identical for a given seed regardless of layout order, and the same class index looks the same in
every layout.

Optionally the writers add the real dataset's awkward files (``quirks``: CMYK JPEG, PNG named .JPEG,
grayscale, palette, alpha) and outright bad ones (``broken``: empty, truncated, not an image, a class
folder that is not a WordNet id, a ``.DS_Store``), and the returned :class:`FakeSummary` says exactly
what the pipeline should accept, convert, reject (with which reason) and skip.

Why this size: the drawing, the five layout writers and the expected outcomes they report must agree file for
file (the tests trust the summary); side by side, a writer cannot drift from the summary it fills.
"""

from __future__ import annotations

import colorsys
import io
import logging
import os
import posixpath
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
from PIL import Image

from imagenet_spark.data.synsets import ilsvrc2012

log = logging.getLogger(__name__)

TRAIN = "train"
VALIDATION = "validation"
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
LABELS_FILE = "synset_labels.txt"
UNKNOWN_CLASS_DIR = "not_a_synset"
LAYOUTS = ("ilsvrc", "tar", "folders", "folders-flat")

# Expected outcomes, spelled exactly as imagenet_spark.data.images records them.
EMPTY = "empty"
TRUNCATED = "truncated"
NOT_AN_IMAGE = "not_an_image"
UNKNOWN_CLASS = "unknown_class"
CMYK = "cmyk"
PNG_AS_JPEG = "png_named_jpeg"
GRAYSCALE = "grayscale"
PALETTE = "palette"
ALPHA = "alpha"

_DEFAULT_SIZE = (64, 48)
_REALISTIC_SIZE = (500, 375)
_TRUNCATE_AT = 0.6
# A fixed timestamp for tar members: archives must be byte-identical for a given seed.
_TAR_MTIME = 1_330_000_000  # early 2012, when ILSVRC2012 shipped

# Random-stream keys: one independent stream per (purpose, class, index).
_STREAM_TRAIN = 0
_STREAM_VALIDATION = 1
_STREAM_VAL_ORDER = 2
_STREAM_QUIRK = 3
_STREAM_BROKEN = 4

# --- class patterns ---------------------------------------------------------------------------------
# Pairwise-coprime cycle lengths (8, 9, 5): by the Chinese remainder theorem the (shape, hue, background)
# triple is unique for the first 8*9*5 = 360 classes, and consecutive classes differ in all three.
# Beyond 360 a hue offset of a third of a step keeps classes distinct up to 1080.
_SHAPES = ("circle", "square", "triangle", "hstripes", "vstripes", "checker", "cross", "ring")
_HUES = ("red", "orange", "lime", "green", "teal", "sky", "blue", "purple", "pink")
_BACKGROUNDS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("charcoal", (32, 32, 36)),
    ("silver", (196, 196, 190)),
    ("cream", (236, 226, 200)),
    ("navy", (30, 40, 78)),
    ("olive", (70, 76, 40)),
)
_CYCLE = len(_SHAPES) * len(_HUES) * len(_BACKGROUNDS)
_COLOUR_JITTER = 8.0  # std of per-image colour shift, per channel, in 0..255 units
_NOISE = 6.0  # std of per-pixel Gaussian noise
_GRAIN = 32.0  # luminance grain std in realistic mode: tuned so 500x375 at q90 is ~110 KB
_CHROMA = 6.0  # colour grain std in realistic mode


@dataclass(frozen=True, kw_only=True)
class FakeSpec:
    """What to generate. Frozen so a spec can be shared, logged and compared safely.

    ``image_size`` is ``(width, height)``. With ``realistic=True`` and ``image_size`` left at its default,
    the size becomes ILSVRC2012's typical 500x375 (normalised here so every reader of the spec sees the
    size really used).
    """

    num_classes: int = 10
    train_per_class: int = 20
    val_per_class: int = 5
    image_size: tuple[int, int] = _DEFAULT_SIZE
    size_jitter: float = 0.0
    realistic: bool = False
    quality: int = 90
    seed: int = 0
    quirks: bool = False
    broken: bool = False

    def __post_init__(self) -> None:
        if self.realistic and tuple(self.image_size) == _DEFAULT_SIZE:
            object.__setattr__(self, "image_size", _REALISTIC_SIZE)
        else:
            object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size={self.image_size!r}: expected (width, height), each at least 8 px.")
        if not 1 <= self.num_classes <= len(ilsvrc2012()):
            raise ValueError(f"num_classes={self.num_classes}: must be between 1 and {len(ilsvrc2012())}.")
        if self.train_per_class < 0 or self.val_per_class < 0:
            raise ValueError("train_per_class and val_per_class must be >= 0.")
        if not 0.0 <= self.size_jitter < 1.0:
            raise ValueError(f"size_jitter={self.size_jitter}: must be in [0, 1).")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality={self.quality}: must be in 1..100.")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}: must be >= 0 (it seeds numpy's SeedSequence).")


@dataclass(frozen=True)
class FakeSummary:
    """What was written, and what a correct pipeline must make of it.

    Paths are relative to ``root`` with ``/`` separators; inside archives they read
    ``ILSVRC2012_img_train.tar/<wnid>.tar/<member>`` (a whole rejected per-class archive is
    ``ILSVRC2012_img_train.tar/<name>.tar``). Invariant:
    ``total_files == sum of counts + len(broken) + len(skipped)``; quirk files are valid and counted.
    """

    root: str
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    quirks: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    total_files: int = 0


class _Pattern(NamedTuple):
    shape: str
    fg: tuple[float, ...]  # RGB, 0..255
    bg: tuple[float, ...]
    name: str


def _pattern(index: int) -> _Pattern:
    """The look of class ``index``: deterministic, and distinct from every other class below 1080."""
    shape = index % len(_SHAPES)
    hue = index % len(_HUES)
    bg = index % len(_BACKGROUNDS)
    variant = index // _CYCLE
    h = (hue + variant / 3.0) / len(_HUES) % 1.0
    bg_name, bg_rgb = _BACKGROUNDS[bg]
    # Bright, saturated foregrounds on dark backgrounds; deeper ones on light backgrounds (contrast).
    value = 0.95 if sum(bg_rgb) < 400 else 0.75
    fg = tuple(255.0 * c for c in colorsys.hsv_to_rgb(h, 0.85, value))
    if index < len(_SHAPES) * len(_HUES):  # (shape, hue) alone is unique below 72
        name = f"{_SHAPES[shape]}_{_HUES[hue]}"
    else:
        name = f"{_SHAPES[shape]}_{_HUES[hue]}_on_{bg_name}" + (f"_v{variant}" if variant else "")
    return _Pattern(_SHAPES[shape], fg, tuple(float(v) for v in bg_rgb), name)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Human-readable class names (``circle_red``, ``square_orange``…) describing each class's pattern."""
    names: list[str] = []
    seen: set[str] = set()
    for i in range(num_classes):
        name = _pattern(i).name
        if name in seen:  # only past 1080 classes
            name = f"{name}_{i}"
        seen.add(name)
        names.append(name)
    return tuple(names)


def _wnids(num_classes: int) -> tuple[str, ...]:
    return tuple(sorted(ilsvrc2012()))[:num_classes]


# --- rendering --------------------------------------------------------------------------------------


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` centred at the origin with half-size ``r`` (dx, dy are pixel offsets)."""
    ax, ay = np.abs(dx), np.abs(dy)
    in_square = (ax <= r) & (ay <= r)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return in_square
    if shape == "triangle":  # apex up, base at the bottom
        return (ay <= r) & (ax <= (dy + r) / 2.0)
    if shape == "hstripes":  # five bands, three of them foreground: coarse enough to survive 32 px
        return in_square & (np.floor((dy + r) / (2 * r) * 5) % 2 == 0)
    if shape == "vstripes":
        return in_square & (np.floor((dx + r) / (2 * r) * 5) % 2 == 0)
    if shape == "checker":
        cells = np.floor((dx + r) / (2 * r) * 4) + np.floor((dy + r) / (2 * r) * 4)
        return in_square & (cells % 2 == 0)
    if shape == "cross":
        return in_square & ((ax <= r / 3.0) | (ay <= r / 3.0))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def _image_size(spec: FakeSpec, rng: np.random.Generator) -> tuple[int, int]:
    width, height = spec.image_size
    if spec.size_jitter:
        j = spec.size_jitter
        width = max(8, round(width * rng.uniform(1 - j, 1 + j)))
        height = max(8, round(height * rng.uniform(1 - j, 1 + j)))
    return width, height


def _smooth_field(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Low-frequency random field in [-1, 1]: a coarse grid upsampled bicubically (shading, blotches)."""
    coarse = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    up = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 127.5 - 1.0


def _render(pattern: _Pattern, spec: FakeSpec, rng: np.random.Generator) -> np.ndarray:
    """One RGB image (H, W, 3, uint8) of ``pattern`` with this image's random pose, colours and noise."""
    width, height = _image_size(spec, rng)
    short = min(width, height)
    r = rng.uniform(0.25, 0.40) * short  # diameter 50-80% of the short side: always >= 40%
    cx = rng.uniform(r, width - r)
    cy = rng.uniform(r, height - r)
    fg = np.clip(np.asarray(pattern.fg) + rng.normal(0, _COLOUR_JITTER, 3), 0, 255).astype(np.float32)
    bg = np.clip(np.asarray(pattern.bg) + rng.normal(0, _COLOUR_JITTER, 3), 0, 255).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = _shape_mask(pattern.shape, xs + 0.5 - cx, ys + 0.5 - cy, r)
    img = np.where(mask[..., None], fg, bg)
    if spec.realistic:
        # Photo-like: soft lighting, blotchy surfaces and fine grain. The grain dominates JPEG size,
        # which is what benchmarks need to be realistic; its strength is tuned for ~110 KB at q90.
        img = img * (1.0 + 0.18 * _smooth_field(rng, width, height, 3))[..., None]
        img = img + 14.0 * _smooth_field(rng, width, height, 12)[..., None]
        grain = rng.normal(0.0, 1.0, size=(height, width, 1)).astype(np.float32)
        chroma = rng.normal(0.0, 1.0, size=(height, width, 3)).astype(np.float32)
        img = img + _GRAIN * grain + _CHROMA * chroma
    else:
        img = img + rng.normal(0.0, _NOISE, size=img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray | Image.Image, quality: int) -> bytes:
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _stream(spec: FakeSpec, purpose: int, cls: int, index: int) -> np.random.Generator:
    return np.random.default_rng((spec.seed, purpose, cls, index))


def _image_bytes(spec: FakeSpec, purpose: int, cls: int, index: int) -> bytes:
    return _jpeg(_render(_pattern(cls), spec, _stream(spec, purpose, cls, index)), spec.quality)


# --- what to write: one plan, many layouts -----------------------------------------------------------


@dataclass(frozen=True)
class _File:
    """One file to write: ``folder`` is a class folder name ("" for the flat validation folder)."""

    split: str
    folder: str
    name: str
    make: Callable[[], bytes]
    cls: str = ""  # the class it counts for when valid
    quirk: str = ""
    broken: str = ""
    hidden: bool = False


def _quirk_files(spec: FakeSpec, classes: Sequence[str], name_of: Callable[[int, int, str], str],
                 ext: str) -> list[_File]:
    """The real dataset's awkward-but-valid files, spread over the first classes."""

    def rgb(k: int) -> Image.Image:
        cls = k % len(classes)
        return Image.fromarray(_render(_pattern(cls), spec, _stream(spec, _STREAM_QUIRK, cls, k)))

    def cmyk() -> bytes:
        return _jpeg(rgb(0).convert("CMYK"), spec.quality)

    def png_named_jpeg() -> bytes:
        return _png(rgb(1))

    def grayscale() -> bytes:
        return _jpeg(rgb(2).convert("L"), spec.quality)

    def palette() -> bytes:
        return _png(rgb(3).quantize(colors=64))

    def alpha() -> bytes:
        img = rgb(4).convert("RGBA")
        a = np.full((img.height, img.width), 255, dtype=np.uint8)
        a[:, : max(1, img.width // 10)] = 96  # a translucent left edge: really uses the alpha channel
        img.putalpha(Image.fromarray(a))
        return _png(img)

    kinds: list[tuple[str, str, Callable[[], bytes]]] = [
        (CMYK, ext, cmyk),
        (PNG_AS_JPEG, ext, png_named_jpeg),
        (GRAYSCALE, ext, grayscale),
        (PALETTE, ".png", palette),
        (ALPHA, ".png", alpha),
    ]
    out = []
    for k, (kind, ext, make) in enumerate(kinds):
        cls = k % len(classes)
        out.append(_File(TRAIN, classes[cls], name_of(cls, spec.train_per_class + k, ext), make,
                         cls=classes[cls], quirk=kind))
    return out


def _broken_files(spec: FakeSpec, classes: Sequence[str], name_of: Callable[[int, int, str], str],
                  ext: str) -> list[_File]:
    """Files a correct pipeline must reject (with the reason recorded) or skip; placed after the quirks."""
    base = spec.train_per_class + 5  # past the quirk numbers, so names never collide

    def truncated() -> bytes:
        # Cut well inside the entropy-coded data, not in the headers: the file must open (identify as
        # JPEG) and fail only when decoded, like a download cut short.
        rng = _stream(spec, _STREAM_BROKEN, 1 % len(classes), 0)
        data = _jpeg(_render(_pattern(1 % len(classes)), spec, rng), spec.quality)
        cut = int(len(data) * _TRUNCATE_AT)
        scan = data.find(b"\xff\xda")
        if scan < 0 or cut <= scan + 64:  # tiny image: headers would be cut; use a bigger one
            big = FakeSpec(image_size=(256, 192), quality=spec.quality, seed=spec.seed)
            data = _jpeg(_render(_pattern(1 % len(classes)), big, rng), spec.quality)
            cut = int(len(data) * _TRUNCATE_AT)
        return data[:cut]

    def ds_store() -> bytes:
        return b"\x00\x00\x00\x01Bud1" + bytes(2042)

    n = len(classes)
    return [
        _File(TRAIN, classes[0], name_of(0, base, ext), lambda: b"", broken=EMPTY),
        _File(TRAIN, classes[1 % n], name_of(1 % n, base + 1, ext), truncated, broken=TRUNCATED),
        _File(TRAIN, classes[2 % n], name_of(2 % n, base + 2, ext),
              lambda: b"not an image\nthis file only pretends to be a JPEG\n", broken=NOT_AN_IMAGE),
        _File(TRAIN, classes[0], ".DS_Store", ds_store, hidden=True),
    ]


def _plan(spec: FakeSpec, classes: Sequence[str], *, ext: str, flat_validation: bool,
          wnid_names: bool) -> tuple[list[_File], list[str]]:
    """Every file of the dataset, in writing order, plus the validation labels in file-name order."""

    def name_of(cls: int, i: int, suffix: str) -> str:
        return f"{classes[cls]}_{i}{suffix}" if wnid_names else f"{i:05d}{suffix}"

    files: list[_File] = []
    for c, cls in enumerate(classes):
        for i in range(spec.train_per_class):
            files.append(_File(TRAIN, cls, name_of(c, i, ext),
                               _bound(_image_bytes, spec, _STREAM_TRAIN, c, i), cls=cls))
    if spec.quirks:
        files += _quirk_files(spec, classes, name_of, ext)
    if spec.broken:
        files += _broken_files(spec, classes, name_of, ext)
    labels: list[str] = []
    if flat_validation:
        # ILSVRC2012 numbers validation images over a shuffled class order; labels pair by sorted name.
        order = [(c, j) for c in range(len(classes)) for j in range(spec.val_per_class)]
        perm = np.random.default_rng((spec.seed, _STREAM_VAL_ORDER)).permutation(len(order))
        for k, p in enumerate(perm, 1):
            c, j = order[p]
            files.append(_File(VALIDATION, "", f"ILSVRC2012_val_{k:08d}.JPEG",
                               _bound(_image_bytes, spec, _STREAM_VALIDATION, c, j), cls=classes[c]))
            labels.append(classes[c])
    else:
        for c, cls in enumerate(classes):
            for j in range(spec.val_per_class):
                files.append(_File(VALIDATION, cls, name_of(c, j, ext),
                                   _bound(_image_bytes, spec, _STREAM_VALIDATION, c, j), cls=cls))
    return files, labels


def _bound(fn: Callable[[FakeSpec, int, int, int], bytes], spec: FakeSpec, purpose: int, cls: int,
           index: int) -> Callable[[], bytes]:
    """A zero-argument maker (avoids the late-binding trap of lambdas in loops)."""
    return lambda: fn(spec, purpose, cls, index)


def _unknown_class_file(spec: FakeSpec, split: str, ext: str) -> _File:
    """One valid image in a class folder that the layout cannot accept (not a wnid / no training folder)."""
    return _File(split, UNKNOWN_CLASS_DIR, f"{UNKNOWN_CLASS_DIR}_0{ext}",
                 _bound(_image_bytes, spec, _STREAM_BROKEN, 0, 1), broken=UNKNOWN_CLASS)


class _Tally:
    """Accumulates the summary while files are written."""

    def __init__(self, classes: Sequence[str], splits: Sequence[str]) -> None:
        # Both split keys always exist; classes start at 0 only in the splits this layout has.
        self.counts: dict[str, dict[str, int]] = {
            s: ({c: 0 for c in sorted(classes)} if s in splits else {}) for s in (TRAIN, VALIDATION)
        }
        self.quirks: dict[str, str] = {}
        self.broken: dict[str, str] = {}
        self.skipped: list[str] = []
        self.total = 0

    def add(self, rel: str, f: _File) -> None:
        self.total += 1
        if f.hidden:
            self.skipped.append(rel)
        elif f.broken:
            self.broken[rel] = f.broken
        else:
            self.counts[f.split][f.cls] += 1
            if f.quirk:
                self.quirks[rel] = f.quirk

    def summary(self, root: str) -> FakeSummary:
        classes = tuple(sorted({c for split in self.counts.values() for c, n in split.items() if n}))
        return FakeSummary(root, classes, self.counts, self.quirks, self.broken, tuple(self.skipped), self.total)


def _prepare_root(root: str | os.PathLike[str]) -> str:
    """Create ``root``; refuse a non-empty one, because stale files would make the summary's counts lie."""
    path = os.path.abspath(os.fspath(root))
    if os.path.isdir(path) and os.listdir(path):
        raise FileExistsError(f"{path} is not empty; the fake dataset needs an empty or missing folder "
                              "(its summary must describe every file in it). Fix: remove it or pick another.")
    os.makedirs(path, exist_ok=True)
    return path


def _write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _log_done(layout: str, summary: FakeSummary, started: float) -> None:
    log.info("fake %s dataset: %d classes, %d files (%d broken, %d quirks) in %s (%.2fs)", layout,
             len(summary.classes), summary.total_files, len(summary.broken), len(summary.quirks), summary.root,
             time.perf_counter() - started)


# --- writers ----------------------------------------------------------------------------------------


def write_ilsvrc(root: str | os.PathLike[str], spec: FakeSpec) -> FakeSummary:
    """ILSVRC2012 as the Cloud TPU guide lays it out.

    ``root/train/<wnid>/<wnid>_<i>.JPEG``, ``root/validation/ILSVRC2012_val_%08d.JPEG`` (flat, numbered
    1..N over a shuffled class order) and ``root/synset_labels.txt`` (one wnid per line, in sorted
    validation file-name order). Classes are the first ``num_classes`` wnids of the sorted ILSVRC2012 list,
    so labels line up with a real ImageNet model's.
    """
    started = time.perf_counter()
    path = _prepare_root(root)
    classes = _wnids(spec.num_classes)
    files, labels = _plan(spec, classes, ext=".JPEG", flat_validation=True, wnid_names=True)
    if spec.broken:
        files.append(_unknown_class_file(spec, TRAIN, ".JPEG"))
    tally = _Tally(classes, (TRAIN, VALIDATION))
    for f in files:
        rel = posixpath.join(f.split, f.folder, f.name) if f.folder else posixpath.join(f.split, f.name)
        _write_file(os.path.join(path, *rel.split("/")), f.make())
        tally.add(rel, f)
    os.makedirs(os.path.join(path, VALIDATION), exist_ok=True)
    _write_file(os.path.join(path, LABELS_FILE), "".join(f"{w}\n" for w in labels).encode("ascii"))
    summary = tally.summary(path)
    _log_done("ilsvrc", summary, started)
    return summary


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A member header with fixed owner and time, so archives are byte-identical for a given seed."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))


def _inner_tar(members: Sequence[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            _tar_add(tar, name, data)
    return buf.getvalue()


def write_tar(root: str | os.PathLike[str], spec: FakeSpec) -> FakeSummary:
    """The download as shipped, read in place by the ``tar`` layout.

    ``root/ILSVRC2012_img_train.tar`` is an uncompressed tar of one uncompressed ``<wnid>.tar`` per class
    (each holding ``<wnid>_<i>.JPEG`` at top level), ``root/ILSVRC2012_img_val.tar`` holds flat
    ``ILSVRC2012_val_%08d.JPEG`` members, and ``root/synset_labels.txt`` sits beside them. Quirk and
    broken files go inside the per-class archives; the unknown class is a whole ``not_a_synset.tar``.
    Each per-class archive is built in memory (one class at a time) and the outer archives are written to
    ``.partial`` files renamed at the end, so an interrupted run never leaves a plausible-looking tar.
    """
    started = time.perf_counter()
    path = _prepare_root(root)
    classes = _wnids(spec.num_classes)
    files, labels = _plan(spec, classes, ext=".JPEG", flat_validation=True, wnid_names=True)
    if spec.broken:
        files.append(_unknown_class_file(spec, TRAIN, ".JPEG"))
    tally = _Tally(classes, (TRAIN, VALIDATION))
    by_folder: dict[str, list[_File]] = {}
    for f in files:
        if f.split == TRAIN:
            by_folder.setdefault(f.folder, []).append(f)

    train_tmp = os.path.join(path, TRAIN_TAR + ".partial")
    with tarfile.open(train_tmp, mode="w", format=tarfile.GNU_FORMAT) as outer:
        for folder, members in by_folder.items():
            inner_name = f"{folder}.tar"
            whole_archive_rejected = all(m.broken == UNKNOWN_CLASS for m in members)
            contents = []
            for m in members:
                contents.append((m.name, m.make()))
                rel = (f"{TRAIN_TAR}/{inner_name}" if whole_archive_rejected
                       else f"{TRAIN_TAR}/{inner_name}/{m.name}")
                tally.add(rel, m)
            _tar_add(outer, inner_name, _inner_tar(contents))
    val_tmp = os.path.join(path, VAL_TAR + ".partial")
    with tarfile.open(val_tmp, mode="w", format=tarfile.GNU_FORMAT) as val:
        for f in files:
            if f.split == VALIDATION:
                _tar_add(val, f.name, f.make())
                tally.add(f"{VAL_TAR}/{f.name}", f)
    os.replace(train_tmp, os.path.join(path, TRAIN_TAR))
    os.replace(val_tmp, os.path.join(path, VAL_TAR))
    _write_file(os.path.join(path, LABELS_FILE), "".join(f"{w}\n" for w in labels).encode("ascii"))
    summary = tally.summary(path)
    _log_done("tar", summary, started)
    return summary


def write_folders(root: str | os.PathLike[str], spec: FakeSpec, *, split_dirs: bool = True,
                  class_names: Sequence[str] | None = None) -> FakeSummary:
    """Any class-folder tree, with class names that are not wnids (``circle_red``, ``stripes``…).

    ``split_dirs=True``: ``root/train/<class>/*.jpg`` and ``root/validation/<class>/*.jpg``.
    ``split_dirs=False``: ``root/<class>/*.jpg`` holding ``train_per_class + val_per_class`` images per
    class, all counted under ``"train"`` (a flat tree has no validation split; the pipeline carves one).

    ``class_names`` (if given) replaces the default names and fixes the number of classes; class ``i``
    gets pattern ``i``. With ``broken=True`` the unknown class is ``validation/not_a_synset/`` (a class with
    no training folder, which is what "unknown" means for this layout); a flat tree cannot have one.
    """
    started = time.perf_counter()
    if class_names is None:
        classes: tuple[str, ...] = default_class_names(spec.num_classes)
    else:
        classes = tuple(class_names)
        bad = [c for c in classes if not c or "/" in c or "\\" in c or c[0] in "._" or c == UNKNOWN_CLASS_DIR]
        if not classes or bad or len(set(classes)) != len(classes):
            raise ValueError(f"class_names={list(classes)!r}: need unique, non-empty folder names without "
                             f"'/', not starting with '.' or '_', and not {UNKNOWN_CLASS_DIR!r}.")
    path = _prepare_root(root)
    if split_dirs:
        files, _ = _plan(spec, classes, ext=".jpg", flat_validation=False, wnid_names=False)
        if spec.broken:
            files.append(_unknown_class_file(spec, VALIDATION, ".jpg"))
        splits: tuple[str, ...] = (TRAIN, VALIDATION)
    else:
        flat = replace(spec, train_per_class=spec.train_per_class + spec.val_per_class, val_per_class=0)
        files, _ = _plan(flat, classes, ext=".jpg", flat_validation=False, wnid_names=False)
        splits = (TRAIN,)
    tally = _Tally(classes, splits)
    for f in files:
        rel = posixpath.join(f.split, f.folder, f.name) if split_dirs else posixpath.join(f.folder, f.name)
        _write_file(os.path.join(path, *rel.split("/")), f.make())
        tally.add(rel, f)
    summary = tally.summary(path)
    _log_done("folders" if split_dirs else "folders-flat", summary, started)
    return summary


def write(root: str | os.PathLike[str], spec: FakeSpec, *, layout: str = "ilsvrc") -> FakeSummary:
    """Write the fake dataset in ``layout``: ``ilsvrc``, ``tar``, ``folders`` or ``folders-flat``."""
    if layout == "ilsvrc":
        return write_ilsvrc(root, spec)
    if layout == "tar":
        return write_tar(root, spec)
    if layout == "folders":
        return write_folders(root, spec, split_dirs=True)
    if layout == "folders-flat":
        return write_folders(root, spec, split_dirs=False)
    raise ValueError(f"layout={layout!r}: unknown; choose one of {', '.join(LAYOUTS)}.")
