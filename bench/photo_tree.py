"""ImageNet-like input trees made of real photographs, for the partition benchmarks.

Why not the fake generator: its synthetic images compress and decode unlike photos. Here every image is a
seeded crop, rescale and re-encode of one of scikit-learn's two sample photographs (640x427 JPEGs shipped in
the wheel, no network), to about 500x375 at JPEG quality 85-95, like ILSVRC2012's training images. A pool of
distinct images is generated once and a tree of any shape is made of hard links into it (generating is the
slow part; hard links are real files inside the tree, which the job reads like any other).
"""

from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)


def make_pool(directory: Path, count: int, seed: int = 0, *, grain: bool = False) -> list[Path]:
    """``count`` distinct ~500x375 JPEGs under ``directory`` (reused when already there).

    ``grain``: add seeded sensor-like grain (luminance sigma 6-12 levels, half that in colour) and save at
    quality 92-97, which brings the mean to ILSVRC2012's ~110 KB per training image. Why: decoding time grows
    with the coded bytes, and the plain pool (~48 KB: two 640x427 photos rescaled, smoother than camera
    photos) makes any decode-only baseline look cheaper than it is on the real files. Give it its own
    ``directory``."""
    from sklearn.datasets import load_sample_images

    directory.mkdir(parents=True, exist_ok=True)
    existing = sorted(directory.glob("img*.JPEG"))
    if len(existing) >= count:
        return existing[:count]
    sources = [Image.open(f).convert("RGB") for f in load_sample_images().filenames]
    rng = random.Random(seed)
    out = []
    for n in range(count):
        src = sources[n % len(sources)]
        scale = rng.uniform(0.55, 1.0)
        w, h = int(src.width * scale), int(src.height * scale)
        x, y = rng.randint(0, src.width - w), rng.randint(0, src.height - h)
        crop = src.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        target_w = rng.randint(450, 550)
        crop = crop.resize((target_w, max(8, round(target_w * h / w))), Image.Resampling.BICUBIC)
        quality = rng.randint(85, 95)
        if grain:
            crop, quality = _grained(crop, rng), rng.randint(92, 97)
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=quality)
        path = directory / f"img{n:05d}.JPEG"
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def _grained(img: Image.Image, rng: random.Random) -> Image.Image:
    """``img`` with seeded Gaussian grain: one luminance field over all channels plus a weaker one per channel."""
    import numpy as np

    noise = np.random.default_rng(rng.randrange(1 << 30))
    sigma = rng.uniform(6.0, 12.0)
    pixels = np.asarray(img, np.float32)
    grain = noise.normal(0, sigma, pixels.shape[:2] + (1,)) + noise.normal(0, sigma / 2, pixels.shape)
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))


def make_tree(root: Path, pool: list[Path], classes: int, per_class: int) -> list[Path]:
    """A ``folders`` tree ``root/train/c00000/*.JPEG``: ``classes`` x ``per_class`` hard links into the pool
    (cycled, so a tree larger than the pool repeats images under other names)."""
    files = []
    n = 0
    for c in range(classes):
        folder = root / "train" / f"c{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            dst = folder / f"{c:05d}_{i:04d}.JPEG"
            os.link(pool[n % len(pool)], dst)
            files.append(dst)
            n += 1
    return files
