"""The partition job's fast path for its commonest input: an RGB JPEG that only needs resizing.

Why: on ILSVRC2012-shaped data (photos ~500x375, resized to 256) Pillow's path spends about a third of each
image's time outside the codec: copying the decoded pixels into numpy for OpenCV's resize and back into Pillow
for the encode (``bench/partition_vs_tfrecord.py``). Here the pixels stay in one numpy array from decode to
encode: libjpeg-turbo through ``simplejpeg`` decodes (straight to BGR), OpenCV resizes and encodes. The output
is the same bytes as Pillow's path (same libjpeg-turbo decode, same OpenCV resize, and OpenCV's encoder at the
same quality writes what Pillow's does; ``tests/test_fast_jpeg.py`` checks it on real photos).

What stays with Pillow's path (:func:`imagenet_spark.data.images.process_image` decides): every other mode,
format or colour profile; images large enough for its draft (DCT-domain) reduction; and any input libjpeg-turbo
so much as warns about (``strict``): Pillow's path then rejects it with its reason, or accepts it as it always
has. Both libraries are optional (``fast-jpeg`` and ``fast-resize`` extras); without either, Pillow does it all.
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


def resize_jpeg(data: bytes, size: tuple[int, int], target: tuple[int, int], quality: int, cv2: Any) -> bytes | None:
    """``data`` (a JPEG of ``size`` whose header says RGB) decoded, resized to ``target`` as
    ``images.resize`` does, and encoded at ``quality``; None when this path does not apply or libjpeg-turbo
    reported anything (the caller then takes Pillow's path)."""
    codec = simplejpeg()
    if codec is None or cv2 is None or draft_scale(size, target) > 1:
        return None
    try:
        bgr = codec.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError:  # an error or a warning (truncated, corrupt data): Pillow's path classifies it
        return None
    if (bgr.shape[1], bgr.shape[0]) != size:
        return None
    resized = cv2.resize(bgr, target, interpolation=interpolation(cv2, size[0], target[0]))
    ok, encoded = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return encoded.tobytes() if ok else None
