"""images.process_image on each quirk of ILSVRC2012 and each kind of bad file (no Spark)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imagenet_spark.data import images


def _encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(w: int = 120, h: int = 90, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def _process(data: bytes, name: str = "x.JPEG", resize_short: int | None = 64, max_pixels: int = 10**8):
    return images.process_image(data, filename=name, resize_short=resize_short, quality=90, max_pixels=max_pixels)


@pytest.mark.parametrize("w,h,short,expected", [
    (500, 375, 256, (341, 256)), (375, 500, 256, (256, 341)), (200, 100, 256, (200, 100)),
    (500, 375, None, (500, 375)), (256, 256, 256, (256, 256)), (1000, 10, 8, (800, 8)),
])
def test_target_size_scales_short_side_and_never_upscales(w, h, short, expected):
    assert images.target_size(w, h, short) == expected


@pytest.mark.parametrize("mode,kind", [("CMYK", images.CMYK), ("L", images.GRAYSCALE)])
def test_jpeg_quirks_become_rgb(mode, kind):
    out = _process(_encode(_photo(mode=mode)))
    assert isinstance(out, images.Processed)
    assert kind in out.conversions
    with Image.open(io.BytesIO(out.data)) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (85, 64))
    assert (out.width, out.height) == (85, 64)


def test_png_named_jpeg_is_recorded_and_reencoded():
    out = _process(_encode(_photo(), "PNG"), name="n02105855_2933.JPEG")
    assert isinstance(out, images.Processed) and images.PNG_AS_JPEG in out.conversions
    assert Image.open(io.BytesIO(out.data)).format == "JPEG"


def test_palette_and_alpha():
    pal = _process(_encode(_photo().convert("P"), "PNG"), name="a.png")
    assert isinstance(pal, images.Processed) and images.PALETTE in pal.conversions
    assert images.ALPHA not in pal.conversions
    rgba = _photo().convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited over white
    out = _process(_encode(rgba, "PNG"), name="b.png")
    assert isinstance(out, images.Processed) and images.ALPHA in out.conversions
    arr = np.asarray(Image.open(io.BytesIO(out.data)))
    assert arr.mean() > 245


def test_small_rgb_jpeg_passes_through_unchanged():
    data = _encode(_photo(60, 40))
    out = _process(data)
    assert isinstance(out, images.Processed) and out.data == data and out.conversions == ()


def test_draft_decoding_still_gives_exact_target_size():
    out = _process(_encode(_photo(1024, 768)), resize_short=100)
    assert isinstance(out, images.Processed) and (out.width, out.height) == (133, 100)
    assert Image.open(io.BytesIO(out.data)).size == (133, 100)


@pytest.mark.parametrize("make,reason", [
    (lambda: b"", images.EMPTY),
    (lambda: b"hello, I am a text file pretending to be a JPEG\n", images.NOT_AN_IMAGE),
    (lambda: _encode(_photo())[:900], images.TRUNCATED),
])
def test_bad_files_are_rejected_with_a_reason(make, reason):
    out = _process(make())
    assert isinstance(out, images.Rejected), out
    assert out.reason == reason and out.detail


def test_decompression_bomb_is_rejected_before_decoding():
    data = _encode(Image.new("RGB", (4000, 3000)))
    out = _process(data, max_pixels=1_000_000)
    assert isinstance(out, images.Rejected) and out.reason == images.TOO_MANY_PIXELS
    assert "12000000" in out.detail and "max_pixels=1000000" in out.detail
