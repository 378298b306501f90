"""Pure image work for the partition job: decode, fix ILSVRC2012's quirks, resize, re-encode.

Why it is separate from Spark: this is the hot path on every executor, so it must be testable and
benchmarkable on its own, and it must never raise on bad input. Every outcome is either a
:class:`Processed` image or a :class:`Rejected` reason, so the job can account for every input.

Quirks of the real dataset handled here: 22 CMYK JPEGs and one PNG named ``.JPEG`` in the training set,
grayscale images in both splits, plus palette and alpha images in user datasets.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from imagenet_spark.data import fast_jpeg

# Reasons a file is quarantined. Stable strings: they end up in manifest.json and the rejects table.
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
DECODE_ERROR = "decode_error"
TOO_MANY_PIXELS = "too_many_pixels"
READ_ERROR = "read_error"
UNKNOWN_CLASS = "unknown_class"
LABELS_MISMATCH = "labels_count_mismatch"
# Named by the input (a CSV row, a symlink, a labels file) but resolving outside --input: never read.
OUTSIDE_INPUT_ROOT = "outside_input_root"

# Conversions recorded in the manifest.
CMYK = "cmyk"
PNG_AS_JPEG = "png_named_jpeg"
GRAYSCALE = "grayscale"
PALETTE = "palette"
ALPHA = "alpha"
OTHER_FORMAT = "other_format"
ICC_TO_SRGB = "icc_to_srgb"
ICC_UNUSABLE = "icc_unusable"  # a profile lcms cannot read or apply: ignored, pixels taken as sRGB

# What an embedded ICC profile asks of us (IccPlan.kind).
ICC_NONE = "none"  # no profile, or one that maps every colour to itself in sRGB (within 2 levels)
ICC_CONVERT = "convert"
# (the third kind is ICC_UNUSABLE)

#: Formats TensorFlow's decode_image reads (Pillow's names); anything else must be converted before serving.
_TF_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP")

_JPEG_NAMES = (".jpeg", ".jpg", ".jpe")
#: Pillow's own decompression-bomb limit, and PartitionConfig.max_pixels' default (predict uses it too).
DEFAULT_MAX_PIXELS = 89_478_485

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _cv2() -> Any:
    """OpenCV if installed (it is in the lock): its resize is ~10x faster than Pillow's, which is half the
    per-image time otherwise. One thread: Spark already runs one task per core."""
    try:
        import cv2
    except ImportError:
        log.warning("opencv-python-headless not installed: resizing with Pillow (about 2x slower per image)")
        return None
    cv2.setNumThreads(1)
    return cv2


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Downscale an RGB image to ``size`` with OpenCV's filter for the factor (``fast_jpeg.interpolation``),
    else Pillow's bicubic."""
    cv2 = _cv2()
    if cv2 is None:
        return img.resize(size, Image.Resampling.BICUBIC)
    filter_ = fast_jpeg.interpolation(cv2, img.size[0], size[0])
    return Image.fromarray(cv2.resize(np.asarray(img), size, interpolation=filter_))


@dataclass(frozen=True)
class Processed:
    """A cleaned image ready to write: RGB JPEG bytes and their size."""

    data: bytes
    height: int
    width: int
    conversions: tuple[str, ...]


@dataclass(frozen=True)
class Rejected:
    """Why an input cannot be used; ``detail`` is the human explanation."""

    reason: str
    detail: str


def target_size(width: int, height: int, resize_short: int | None) -> tuple[int, int]:
    """Size after scaling the short side to ``resize_short``; never upscales; keeps the aspect ratio."""
    short = min(width, height)
    if resize_short is None or short <= resize_short:
        return width, height
    scale = resize_short / short
    if width <= height:
        return resize_short, max(1, round(height * scale))
    return max(1, round(width * scale)), resize_short


@dataclass(frozen=True)
class IccPlan:
    """What to do with an image's embedded colour profile: ``kind`` is ICC_NONE, ICC_CONVERT (apply
    ``transform``, built for ``mode`` -> sRGB RGB) or ICC_UNUSABLE."""

    kind: str
    mode: str = ""
    transform: Any = None


_NO_ICC = IccPlan(ICC_NONE)


def _icc_base_mode(mode: str) -> str | None:
    """The mode a profile's transform takes for an image of ``mode``: RGB-like images (alpha and palette
    ones are converted to RGB first), grayscale ``L`` and ``CMYK``. None: profile ignored (LA, 16-bit)."""
    if mode in ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA"):
        return "RGB"
    return mode if mode in ("L", "CMYK") else None


@functools.lru_cache(maxsize=16)
def _icc_plan(icc: bytes, base_mode: str) -> IccPlan:
    """Build (once per distinct profile: a dataset has a handful) the transform to sRGB, and find out whether
    the profile is sRGB in all but name: then the pixels are used as they are (and a JPEG passes through)."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        transform = ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), base_mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        log.debug("ICC profile ignored (%d bytes, %s): %s", len(icc), base_mode, exc)
        return IccPlan(ICC_UNUSABLE)
    levels = np.linspace(0, 255, 16).astype(np.uint8)
    if base_mode == "L":
        probe = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (4, 1)), "L")
    elif base_mode == "RGB":
        grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(64, 64, 3)
        probe = Image.fromarray(grid, "RGB")
    else:
        grid = np.stack(np.meshgrid(levels, levels, levels, levels[::5], indexing="ij"), -1).reshape(64, -1, 4)
        probe = Image.fromarray(np.ascontiguousarray(grid), "CMYK")
    try:
        converted = np.asarray(ImageCms.applyTransform(probe, transform), np.int16)
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        log.debug("ICC profile ignored (%d bytes, %s): %s", len(icc), base_mode, exc)
        return IccPlan(ICC_UNUSABLE)
    if np.abs(converted - np.asarray(probe.convert("RGB"), np.int16)).max() <= 2:
        return _NO_ICC
    return IccPlan(ICC_CONVERT, base_mode, transform)


def icc_transform(icc: bytes | None, mode: str) -> IccPlan:
    """The plan for an image of ``mode`` carrying the ICC profile ``icc`` (``img.info.get("icc_profile")``)."""
    base = _icc_base_mode(mode)
    if not icc or base is None:
        return _NO_ICC
    return _icc_plan(bytes(icc), base)


def to_srgb(img: Image.Image, icc: IccPlan, conversions: list[str]) -> Image.Image:
    """RGB pixels in sRGB: the mode fixes of :func:`_to_rgb`, and the embedded profile applied if it is not
    sRGB (``icc_to_srgb``). Why: Pillow's ``convert`` ignores profiles, so an Adobe RGB or Display P3
    photo would otherwise train (and serve) with washed-out colours, and the profile is gone after the
    re-encode, so nothing downstream could fix it."""
    if icc.kind != ICC_CONVERT:
        return _to_rgb(img, conversions)
    conversions.append(ICC_TO_SRGB)
    if img.mode == icc.mode:
        conversions.extend({"CMYK": [CMYK], "L": [GRAYSCALE]}.get(img.mode, []))
        src = img
    else:
        src = _to_rgb(img, conversions)
    # Not in place, so Pillow returns the new image (its stubs say Image | None for the in-place form).
    return cast(Image.Image, ImageCms.applyTransform(src, icc.transform))


def _to_rgb(img: Image.Image, conversions: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "CMYK":
        conversions.append(CMYK)
        # Adobe CMYK JPEGs are stored inverted; Pillow's JPEG plugin already accounts for that.
        return img.convert("RGB")
    if mode in ("L", "I;16", "I", "F", "1"):
        conversions.append(GRAYSCALE)
        if mode in ("I;16", "I", "F"):
            img = img.point(lambda v: v / 256).convert("L") if mode != "F" else img.convert("L")
        return img.convert("RGB")
    if mode in ("P", "PA"):
        conversions.append(PALETTE)
        if mode == "P" and "transparency" not in img.info:
            return img.convert("RGB")
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        conversions.append(ALPHA)
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    conversions.append(mode.lower())
    return img.convert("RGB")


def _open(data: bytes, max_pixels: int) -> Image.Image | Rejected:
    """Open (header only) and check the pixel budget; a :class:`Rejected` for anything unusable."""
    if not data:
        return Rejected(EMPTY, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; silence Pillow's warning in between.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return Rejected(NOT_AN_IMAGE, f"not a recognised image format ({len(data)} bytes)")
    except Image.DecompressionBombError as exc:
        return Rejected(TOO_MANY_PIXELS, f"{exc} (refused while reading the header; max_pixels={max_pixels})")
    except (OSError, ValueError, SyntaxError) as exc:
        return Rejected(DECODE_ERROR, f"cannot open: {exc}")
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        return Rejected(TOO_MANY_PIXELS, f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}")
    if width < 1 or height < 1:
        img.close()
        return Rejected(DECODE_ERROR, f"degenerate size {width}x{height}")
    return img


def _load(img: Image.Image, draft_size: tuple[int, int] | None) -> Rejected | None:
    """Decode the pixels (the first frame of an animation); ``draft_size`` lets a JPEG decode at 1/2, 1/4 or
    1/8 scale in the DCT domain, never below that size. None when the image decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if img.format == "JPEG" and draft_size is not None and draft_size != img.size:
                img.draft("RGB", draft_size)
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
    except OSError as exc:
        text = str(exc)
        reason = TRUNCATED if "truncated" in text or "broken data stream" in text else DECODE_ERROR
        return Rejected(reason, f"cannot decode: {text}")
    except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return Rejected(DECODE_ERROR, f"cannot decode: {exc}")
    return None


def _format_conversions(img: Image.Image, filename: str) -> list[str]:
    fmt = img.format or ""
    if fmt == "PNG" and filename.lower().endswith(_JPEG_NAMES):
        return [PNG_AS_JPEG]
    if fmt not in ("JPEG", "MPO") and fmt:
        return [f"{OTHER_FORMAT}:{fmt.lower()}"]
    return []


def _fast_resize(img: Image.Image, data: bytes, target: tuple[int, int], quality: int) -> Processed | None:
    """An RGB JPEG (header read, pixels not) that only needs resizing, done by :mod:`.fast_jpeg` (same bytes as
    the path below, ~1.5x faster on ~500x375 photos); None where that path does not apply."""
    if img.format != "JPEG" or img.mode != "RGB" or target == img.size:
        return None
    icc = icc_transform(img.info.get("icc_profile"), img.mode)
    if icc.kind == ICC_CONVERT:
        return None
    encoded = fast_jpeg.resize_jpeg(data, img.size, target, quality, _cv2())
    if encoded is None:
        return None
    return Processed(encoded, height=target[1], width=target[0],
                     conversions=(ICC_UNUSABLE,) if icc.kind == ICC_UNUSABLE else ())


def process_image(
    data: bytes,
    *,
    filename: str,
    resize_short: int | None,
    quality: int,
    max_pixels: int,
) -> Processed | Rejected:
    """Decode ``data`` (named ``filename``), fix it to sRGB RGB, resize, and re-encode as JPEG.

    An RGB baseline JPEG that needs no resize and carries no colour profile other than sRGB is passed
    through byte for byte (after a full decode to prove it is intact): re-encoding it would only lose
    quality and time.
    """
    opened = _open(data, max_pixels)
    if isinstance(opened, Rejected):
        return opened
    with opened as img:
        width, height = img.size
        conversions = _format_conversions(img, filename)
        out_w, out_h = target_size(width, height, resize_short)
        fast = _fast_resize(img, data, (out_w, out_h), quality)
        if fast is not None:
            return fast
        failed = _load(img, (out_w, out_h))
        if failed is not None:
            return failed
        icc = icc_transform(img.info.get("icc_profile"), img.mode)
        if icc.kind == ICC_UNUSABLE:
            conversions.append(ICC_UNUSABLE)
        if (
            img.format == "JPEG"
            and img.mode == "RGB"
            and (out_w, out_h) == (width, height)
            and not img.info.get("progressive")
            and icc.kind != ICC_CONVERT
        ):
            return Processed(data=data, height=height, width=width, conversions=tuple(conversions))
        try:
            rgb = to_srgb(img, icc, conversions)
            if rgb.size != (out_w, out_h):
                rgb = resize(rgb, (out_w, out_h))
            buf = io.BytesIO()
            rgb.save(buf, format="JPEG", quality=quality, optimize=False)
        except (OSError, ValueError) as exc:
            return Rejected(DECODE_ERROR, f"cannot convert: {exc}")
        return Processed(data=buf.getvalue(), height=out_h, width=out_w, conversions=tuple(conversions))


def for_serving(data: bytes, *, filename: str, max_pixels: int) -> Processed | Rejected | None:
    """What the SavedModel's signature should be sent for ``data``, decoded by the partition job's rules.

    Why: the signature decodes in TensorFlow, which reads JPEG, PNG, GIF and BMP only, ignores colour
    profiles and drops alpha instead of compositing it; the training images were decoded by
    :func:`process_image` (Pillow, any format, sRGB, alpha over white). So ``None`` means "send the bytes as
    they are" (a plain RGB/grayscale/palette JPEG, PNG, GIF or BMP, which TensorFlow decodes to the same
    pixels); a :class:`Processed` holds lossless PNG bytes of the image after the same conversions the
    partition job applies (recorded in ``conversions``), not resized; a :class:`Rejected` is what the
    partition job would have quarantined, except that bytes Pillow cannot identify give ``None`` so
    TensorFlow's own error reaches the caller.
    """
    opened = _open(data, max_pixels)
    if isinstance(opened, Rejected):
        return None if opened.reason in (NOT_AN_IMAGE, DECODE_ERROR) else opened
    with opened as img:
        conversions = _format_conversions(img, filename)
        icc = icc_transform(img.info.get("icc_profile"), img.mode)
        if icc.kind == ICC_UNUSABLE:
            conversions.append(ICC_UNUSABLE)
        plain_mode = img.mode in ("RGB", "L") or (img.mode == "P" and "transparency" not in img.info)
        if img.format in _TF_FORMATS and plain_mode and icc.kind != ICC_CONVERT:
            return None
        failed = _load(img, None)
        if failed is not None:
            return failed
        try:
            rgb = to_srgb(img, icc, conversions)
            buf = io.BytesIO()
            rgb.save(buf, format="PNG", compress_level=1)
        except (OSError, ValueError) as exc:
            return Rejected(DECODE_ERROR, f"cannot convert: {exc}")
        return Processed(data=buf.getvalue(), height=rgb.size[1], width=rgb.size[0], conversions=tuple(conversions))


def probe_jpeg(data: bytes) -> tuple[int, int]:
    """(height, width) of encoded image bytes, reading only the header. Used by tests and predict."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size[1], img.size[0]
