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
from typing import Any

import numpy as np

from PIL import Image, UnidentifiedImageError

# Reasons a file is quarantined. Stable strings: they end up in manifest.json and the rejects table.
EMPTY = "empty"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
DECODE_ERROR = "decode_error"
TOO_MANY_PIXELS = "too_many_pixels"
READ_ERROR = "read_error"
UNKNOWN_CLASS = "unknown_class"
LABELS_MISMATCH = "labels_count_mismatch"

# Conversions recorded in the manifest.
CMYK = "cmyk"
PNG_AS_JPEG = "png_named_jpeg"
GRAYSCALE = "grayscale"
PALETTE = "palette"
ALPHA = "alpha"
OTHER_FORMAT = "other_format"

_JPEG_NAMES = (".jpeg", ".jpg", ".jpe")

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
    """Downscale an RGB image to ``size``: bicubic below 2x (JPEG draft decoding already did any power-of-two
    reduction, in the DCT domain), area averaging at 2x and more, so nothing aliases."""
    cv2 = _cv2()
    if cv2 is None:
        return img.resize(size, Image.Resampling.BICUBIC)
    factor = img.size[0] / size[0]
    interpolation = cv2.INTER_AREA if factor >= 2.0 else cv2.INTER_CUBIC
    return Image.fromarray(cv2.resize(np.asarray(img), size, interpolation=interpolation))


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


def process_image(
    data: bytes,
    *,
    filename: str,
    resize_short: int | None,
    quality: int,
    max_pixels: int,
) -> Processed | Rejected:
    """Decode ``data`` (named ``filename``), fix it to RGB, resize, and re-encode as JPEG.

    An RGB baseline JPEG that needs no resize is passed through byte for byte (after a full decode to
    prove it is intact): re-encoding it would only lose quality and time.
    """
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
    with img:
        width, height = img.size
        if width * height > max_pixels:
            return Rejected(
                TOO_MANY_PIXELS,
                f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}",
            )
        if width < 1 or height < 1:
            return Rejected(DECODE_ERROR, f"degenerate size {width}x{height}")
        conversions: list[str] = []
        fmt = img.format or ""
        is_jpeg_name = filename.lower().endswith(_JPEG_NAMES)
        if fmt == "PNG" and is_jpeg_name:
            conversions.append(PNG_AS_JPEG)
        elif fmt not in ("JPEG", "MPO") and fmt:
            conversions.append(f"{OTHER_FORMAT}:{fmt.lower()}")
        out_w, out_h = target_size(width, height, resize_short)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if fmt == "JPEG" and (out_w, out_h) != (width, height):
                    # DCT-domain downscale by 1/2, 1/4 or 1/8 while decoding, never below the target.
                    img.draft("RGB", (out_w, out_h))
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                img.load()
        except OSError as exc:
            text = str(exc)
            reason = TRUNCATED if "truncated" in text or "broken data stream" in text else DECODE_ERROR
            return Rejected(reason, f"cannot decode: {text}")
        except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return Rejected(DECODE_ERROR, f"cannot decode: {exc}")
        if (
            fmt == "JPEG"
            and img.mode == "RGB"
            and (out_w, out_h) == (width, height)
            and not img.info.get("progressive")
        ):
            return Processed(data=data, height=height, width=width, conversions=tuple(conversions))
        try:
            rgb = _to_rgb(img, conversions)
            if rgb.size != (out_w, out_h):
                rgb = resize(rgb, (out_w, out_h))
            buf = io.BytesIO()
            rgb.save(buf, format="JPEG", quality=quality, optimize=False)
        except (OSError, ValueError) as exc:
            return Rejected(DECODE_ERROR, f"cannot convert: {exc}")
        return Processed(data=buf.getvalue(), height=out_h, width=out_w, conversions=tuple(conversions))


def probe_jpeg(data: bytes) -> tuple[int, int]:
    """(height, width) of encoded image bytes, reading only the header. Used by tests and predict."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size[1], img.size[0]
