"""The partition job's JPEG fast path (``data/fast_jpeg.py``) changes nothing but speed.

Checked against Pillow's path (the same ``process_image`` with the fast path switched off), on real
photographs (scikit-learn's two, re-encoded in the shapes ILSVRC2012 has: ~500x375 baseline, progressive, 4:4:4,
restart markers, odd sizes, an sRGB and a non-sRGB profile, large enough for draft decoding) and on a seeded
corpus of damaged copies (truncated, bytes flipped, runs zeroed): the same outcome, reason and bytes for every
input, and the fast path really taken for the inputs it is for.
"""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageCms
from sklearn import datasets as sklearn_datasets

from imagenet_spark.data import fast_jpeg, images

from .test_edges import ADOBE_LIKE

pytest.importorskip("simplejpeg")
pytest.importorskip("cv2")

SETTINGS = dict(resize_short=256, quality=90, max_pixels=images.DEFAULT_MAX_PIXELS)


def _jpeg(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """Named re-encodings of the two real photographs (640x427)."""
    china, flower = (Image.open(p).convert("RGB") for p in sklearn_datasets.load_sample_images().filenames)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # unusable for RGB: ignored
    big = china.resize((1700, 1134), Image.Resampling.BICUBIC)
    return {
        "500x375 q90": _jpeg(china.resize((500, 375)), quality=90),
        "375x500 q75": _jpeg(flower.resize((375, 500)), quality=75),
        "640x427 q95 4:4:4": _jpeg(flower, quality=95, subsampling=0),
        "progressive": _jpeg(china, quality=85, progressive=True),
        "restart markers": _jpeg(flower.resize((513, 301)), quality=88, restart_marker_blocks=4),
        "odd 257x1021": _jpeg(china.resize((257, 1021)), quality=92),
        "srgb profile": _jpeg(flower, quality=90, icc_profile=srgb),
        "unusable profile": _jpeg(china, quality=90, icc_profile=lab),
        "adobe-like profile": _jpeg(china, quality=90, icc_profile=ADOBE_LIKE),  # Pillow's path converts it
        "draft 1700x1134": _jpeg(big, quality=90),  # 1/4 in the DCT domain, as Pillow's draft
        "draft 800x520": _jpeg(flower.resize((800, 520)), quality=90),  # 1/2
        "draft 1024x700": _jpeg(china.resize((1024, 700)), quality=90),  # simplejpeg would take 3/8: Pillow's
        "needs no resize": _jpeg(china.resize((300, 256)), quality=90),
    }


#: The photos the fast path is for (RGB JPEG needing a resize, no profile to apply, a scale both libraries pick).
FAST = {"500x375 q90", "375x500 q75", "640x427 q95 4:4:4", "progressive", "restart markers", "odd 257x1021",
        "srgb profile", "unusable profile", "draft 1700x1134", "draft 800x520"}


def _both(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object, bool]:
    """(fast-path outcome, Pillow-path outcome, whether the fast path produced the first)."""
    taken = []
    real = fast_jpeg.resize_jpeg

    def spy(*args: object) -> bytes | None:
        out = real(*args)  # type: ignore[arg-type]
        taken.append(out is not None)
        return out

    with monkeypatch.context() as m:
        m.setattr(fast_jpeg, "resize_jpeg", spy)
        fast = images.process_image(data, filename="x.JPEG", **SETTINGS)
    with monkeypatch.context() as m:
        m.setattr(fast_jpeg, "simplejpeg", lambda: None)
        slow = images.process_image(data, filename="x.JPEG", **SETTINGS)
    return fast, slow, any(taken)


def test_real_photos_give_the_same_bytes_either_way(photos, monkeypatch):
    for name, data in photos.items():
        fast, slow, taken = _both(data, monkeypatch)
        assert isinstance(fast, images.Processed), name
        assert fast == slow, f"{name}: the fast path's output differs from Pillow's path"
        assert taken == (name in FAST), f"{name}: fast path taken={taken}"


def _damaged(data: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(("truncate", "flip", "zero"))
    start = rng.randrange(2, len(data))
    if kind == "truncate":
        return data[:start]
    out = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(2, len(out))] ^= 1 << rng.randrange(8)
    else:
        out[start:start + rng.randint(1, 400)] = bytes(min(400, len(out) - start))
    return bytes(out)


@pytest.mark.parametrize("seed", range(4))
def test_damaged_copies_get_the_same_outcome_either_way(photos, monkeypatch, seed):
    rng = random.Random(seed)
    sources = [photos[name] for name in sorted(FAST)]
    outcomes = set()
    for i in range(60):
        data = _damaged(rng.choice(sources), rng)
        fast, slow, _ = _both(data, monkeypatch)
        assert fast == slow, f"seed {seed} case {i}: {fast!r:.120} != {slow!r:.120}"
        outcomes.add(type(fast).__name__ if isinstance(fast, images.Processed) else fast.reason)
    assert len(outcomes) >= 2, outcomes  # the corpus reaches both accepted and rejected inputs


def test_draft_scale_matches_pillows_choice():
    assert fast_jpeg.draft_scale((500, 375), (341, 256)) == 1
    assert fast_jpeg.draft_scale((1700, 1134), (384, 256)) == 4
    assert fast_jpeg.draft_scale((1024, 1024), (256, 256)) == 4
    assert fast_jpeg.draft_scale((4096, 4096), (256, 256)) == 8
    assert fast_jpeg.draft_scale((600, 511), (300, 256)) == 1
