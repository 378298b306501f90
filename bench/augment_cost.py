"""What each train transform costs: images/s of ``preprocess_train`` on one thread, as ratios to the default
(``augment=imagenet``) measured in the same run.

Why one thread over bytes in memory: that is the per-image work a training worker's tf.data map multiplies by
its cores; reading and batching are the same for every preset. Inputs: sklearn's two real photographs resized
to ImageNet's typical 500x375 (and 375x500) and re-encoded as JPEG q90, as the partition job stores them.

    .venv/bin/python bench/augment_cost.py [--images 256] [--size 224] [--quick: 128 images]
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from typing import Any

from figures import Figure, emit, parse_sized

log = logging.getLogger("bench.augment_cost")

CASES: dict[str, dict[str, Any]] = {
    "imagenet (default)": {},
    "light": {"augment": "light"},
    "none (eval transform)": {"augment": "none"},
    "imagenet + RandAugment N=2 M=9": {"randaugment_layers": 2, "randaugment_magnitude": 9},
    "light + RandAugment N=2 M=9": {"augment": "light", "randaugment_layers": 2, "randaugment_magnitude": 9},
}


def _photos() -> list[bytes]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = []
    for path in load_sample_images().filenames:
        photo = Image.open(path).convert("RGB")
        for size in [(500, 375), (375, 500)]:
            buf = io.BytesIO()
            photo.resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def _rate(spec: Any, blobs: list[bytes], *, images: int, size: int) -> float:
    """Images/s of the transform over ``images`` elements on a one-thread tf.data pipeline (after a warm-up)."""
    import tensorflow as tf

    from imagenet_spark.data.augment import preprocess_train

    key = tf.constant(1, tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(blobs).repeat().enumerate().map(
        lambda i, b: preprocess_train(b, image_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                      seed=tf.stack([key, 2 * i]), spec=spec)).batch(32)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    iterator = iter(ds.with_options(options))
    next(iterator)  # trace and warm up
    start = time.perf_counter()
    for _ in range(images // 32):
        next(iterator)
    return (images // 32) * 32 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    args = parse_sized(parser, quick={"images": 128})
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from imagenet_spark.config import resolve
    from imagenet_spark.data.augment import augment_spec
    from imagenet_spark.train_config import TrainConfig

    blobs = _photos()
    base = None
    for name, overrides in CASES.items():
        cfg = resolve(TrainConfig, explicit={"data": "/d", "model_dir": "/m", **overrides})
        rate = _rate(augment_spec(cfg, eval_resize=round(args.size / 0.875)), blobs, images=args.images,
                     size=args.size)
        base = base or rate
        log.info("%-34s %7.1f images/s, one thread   ratio %.2f", name, rate, rate / base)
        if name != next(iter(CASES)):
            emit(Figure(script="augment_cost", figure=f"train transform {name}", value=rate,
                        baseline_name="imagenet (default)", baseline=base, unit="images/s",
                        shape=f"{args.images} JPEGs 500x375 -> {args.size} px, one thread"))


if __name__ == "__main__":
    main()
