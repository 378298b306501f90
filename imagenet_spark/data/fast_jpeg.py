"""The partition job's fast path for its commonest input: an RGB JPEG that only needs resizing.

Why: on ILSVRC2012-shaped data (photos ~500x375, resized to 256) Pillow's path spends about a quarter of each
image's time outside the codec, mostly copying the decoded pixels into numpy for OpenCV's resize and back into
Pillow for the encode (profiled on bench/partition_vs_tfrecord.py's photos: 3.1 -> 2.3 ms an image). Here the
pixels stay in one numpy array from decode to encode: libjpeg-turbo through ``simplejpeg`` decodes (straight to
BGR), OpenCV resizes and encodes. The output is the same bytes as Pillow's path (same libjpeg-turbo decode, same
OpenCV resize, and OpenCV's encoder at the same quality writes what Pillow's does; ``tests/test_fast_jpeg.py``
checks it on real photos).

Large images are reduced in the DCT domain by the same power of two as Pillow's draft mode, where simplejpeg's
own choice of scale agrees with it. What stays with Pillow's path (:func:`imagenet_spark.data.images.process_image`
decides): every other mode, format or colour profile; a 2x reduction where simplejpeg would take 3/8; and any input
libjpeg-turbo so much as warns about (``strict``): Pillow's path then rejects it with its reason, or accepts it
as it always has. Both libraries are optional (``fast-jpeg`` and ``fast-resize`` extras); without either,
Pillow does it all.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def simplejpeg() -> Any:
    """simplejpeg if installed (it is in both locks), else None: Pillow's path does the work, ~1.5x slower."""
    try:
        import simplejpeg as module
    except ImportError:
        log.info("simplejpeg not installed: JPEGs are decoded by Pillow's path (install imagenet-spark[fast-jpeg])")
        return None
    return module


def draft_scale(size: tuple[int, int], target: tuple[int, int]) -> int:
    """The power-of-two reduction Pillow's ``draft`` applies decoding a JPEG of ``size`` for ``target`` (1: none)."""
    scale = min(size[0] // target[0], size[1] // target[1])
    for reduction in (8, 4, 2):
        if scale >= reduction:
            return reduction
    return 1


def interpolation(cv2: Any, width: int, target_width: int) -> int:
    """OpenCV's filter for a downscale: bicubic below 2x (a JPEG's draft decoding already did any power-of-two
    reduction, in the DCT domain), area averaging at 2x and more, so nothing aliases."""
    return int(cv2.INTER_AREA if width / target_width >= 2.0 else cv2.INTER_CUBIC)


def _decode_plan(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, tuple[int, int]] | None:
    """(Pillow's draft reduction, the size libjpeg-turbo then decodes a JPEG of ``size`` at) for ``target``, or
    None where simplejpeg would pick another scale: it takes the smallest M/8 that still covers ``target``, so
    for a 2x reduction 3/8 wins whenever it covers (Pillow's draft only knows powers of two)."""
    scale = draft_scale(size, target)
    if scale == 2 and -(-size[0] * 3 // 8) >= target[0] and -(-size[1] * 3 // 8) >= target[1]:
        return None
    return scale, (-(-size[0] // scale), -(-size[1] // scale))


def resize_jpeg(data: bytes, size: tuple[int, int], target: tuple[int, int], quality: int, cv2: Any) -> bytes | None:
    """``data`` (a JPEG of ``size`` whose header says RGB) decoded, reduced in the DCT domain as Pillow's draft
    mode would, resized to ``target`` as ``images.resize`` does, and encoded at ``quality``; None when this
    path does not apply or libjpeg-turbo reported anything (the caller then takes Pillow's path)."""
    codec = simplejpeg()
    plan = _decode_plan(size, target)
    if codec is None or cv2 is None or plan is None:
        return None
    scale, decoded = plan
    reduced = target if scale > 1 else (0, 0)  # at scale 1 no minimum: simplejpeg would pick an M/8 itself
    try:
        bgr = codec.decode_jpeg(data, colorspace="BGR", strict=True, min_factor=scale, min_width=reduced[0],
                                min_height=reduced[1])
    except ValueError:  # an error or a warning (truncated, corrupt data): Pillow's path classifies it
        return None
    if (bgr.shape[1], bgr.shape[0]) != decoded:
        return None
    if decoded != target:
        bgr = cv2.resize(bgr, target, interpolation=interpolation(cv2, decoded[0], target[0]))
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return encoded.tobytes() if ok else None
