"""JPEG codecs for the partition job's per-image work: decode + resize short side to 256 + encode q90, one core.

    .venv/bin/python bench/jpeg_codecs.py [--extra-path DIR] [--images 120] [--quick: 60 images]

Compared on real photographs (bench/photo_tree.py) at two sizes, ~500x375 (ILSVRC2012's typical training
image: no power-of-two reduction applies) and ~1600x1070 (its large ones: decoding at 1/4 applies):
  * ours: ``images.process_image``: an RGB JPEG under 2x the target goes through ``data/fast_jpeg.py``
    (simplejpeg's libjpeg-turbo decode straight into numpy, OpenCV resize and encode: the same bytes as the
    Pillow path); anything else through Pillow (draft mode, OpenCV resize, Pillow encode), with the
    ICC/CMYK/grayscale rules;
  * Pillow alone: full decode, bicubic resize, encode (what a plain Pillow script does);
  * OpenCV: ``imdecode`` with ``IMREAD_REDUCED_COLOR_2/4/8`` where the image is that much larger than needed,
    ``resize``, ``imencode`` (no ICC conversion: colour-managed inputs would come out wrong);
  * simplejpeg with scaled decoding (libjpeg-turbo's M/8 factors through ``min_width``/``min_height``) and
    its own encoder, when importable. Its scaled factors under 2x decode slower than a full decode (its docs
    say so), and its encoder ignores ``fastdct=False`` (0.2 dB below Pillow's at the same quality): why the
    job's fast path decodes at full size with it and encodes with OpenCV.
Prints images/s of each and its ratio to ours. Only figures: nothing here is used by the job.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from figures import Figure, emit, parse_sized
from photo_tree import make_pool
from PIL import Image

from imagenet_spark.data.images import process_image, target_size

cv2.setNumThreads(1)


def ours(data: bytes) -> bytes:
    return process_image(data, filename="x.JPEG", resize_short=256, quality=90, max_pixels=10**8).data


def pillow_plain(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    rgb = rgb.resize(target_size(*rgb.size, 256), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _cv2_resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    factor = arr.shape[1] / size[0]
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA if factor >= 2 else cv2.INTER_CUBIC)


def opencv(data: bytes) -> bytes:
    w, h = Image.open(io.BytesIO(data)).size  # header only, as the job's probe does
    size = target_size(w, h, 256)
    flag = cv2.IMREAD_COLOR
    for reduce, reduced_flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                 (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if min(w, h) >= 256 * reduce:
            flag = reduced_flag
            break
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    ok, out = cv2.imencode(".jpg", _cv2_resize(arr, size), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return out.tobytes()


def simplejpeg_codec() -> Callable[[bytes], bytes] | None:
    try:
        import simplejpeg
    except ImportError:
        return None

    def run(data: bytes) -> bytes:
        h, w, _cs, _sub = simplejpeg.decode_jpeg_header(data)  # height first
        size = target_size(w, h, 256)
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=size[0], min_height=size[1])
        return simplejpeg.encode_jpeg(np.ascontiguousarray(_cv2_resize(arr, size)), quality=90, colorspace="RGB")

    return run


def _rate(fn: Callable[[bytes], Any], blobs: list[bytes], repeat: int = 3) -> float:
    fn(blobs[0])
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for blob in blobs:
            fn(blob)
        best = min(best, time.perf_counter() - start)
    return len(blobs) / best


def _large(blobs: list[bytes], scale: float) -> list[bytes]:
    out = []
    for data in blobs:
        img = Image.open(io.BytesIO(data)).convert("RGB")
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra-path", help="a folder to append to sys.path (where simplejpeg was installed)")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bench-partition"))
    args = parse_sized(parser, quick={"images": 60})
    if args.extra_path:
        sys.path.append(args.extra_path)
    pool = make_pool(Path(args.workdir) / "pool", max(400, args.images))
    small = [p.read_bytes() for p in pool[:args.images]]
    sets = {"~500x375": small, "~1600x1070": _large(small[:args.images // 3], 3.2)}
    codecs: dict[str, Callable[[bytes], bytes] | None] = {
        "ours (fast path; Pillow draft when large)": ours, "Pillow alone": pillow_plain,
        "OpenCV reduced decode": opencv,
        "simplejpeg scaled decode": simplejpeg_codec()}
    for name, blobs in sets.items():
        base = _rate(ours, blobs)
        print(f"{name} ({len(blobs)} images, mean {sum(map(len, blobs)) / len(blobs) / 1000:.0f} KB):")
        for codec, fn in codecs.items():
            if fn is None:
                print(f"  {codec:38s} not installed")
                continue
            rate = base if fn is ours else _rate(fn, blobs)
            print(f"  {codec:38s} {rate:7.1f} images/s = {rate / base:.2f} of ours")
            if fn is not ours:
                emit(Figure(script="jpeg_codecs", figure=f"{codec}, {name}", value=rate, baseline_name="ours",
                            baseline=base, unit="images/s", shape=f"{len(blobs)} JPEGs {name} -> 256 px q90, one core"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
