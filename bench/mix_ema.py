"""What mixup/cutmix and the weight EMA cost: ratios to the plain step and stream measured in the same run.

* step: the jobs' own step (``steps.make_step_functions``) with and without the EMA update (``train/ema.py``),
  same model, data, batch and optimizer; the EMA adds one multiply-add per weight per step.
* stream: batches through ``data/mix.py``'s ``mix_batches`` (mixup + cutmix, switching) against the same
  batches unmixed, from memory (so the ratio shows the mixing alone, not the decoding it hides behind).

Usage: ``python bench/mix_ema.py [--model resnet18] [--image-size 64] [--batch 32] [--steps 20]`` (``--quick``: 10
steps).
"""

from __future__ import annotations

import argparse
import logging
import time

from figures import Figure, emit, parse_sized

log = logging.getLogger("bench.mix_ema")


def _step_seconds(model_name: str, image_size: int, batch: int, steps: int, ema: bool) -> float:
    import numpy as np
    import tensorflow as tf

    from imagenet_spark.distribute.backends import make_backend
    from imagenet_spark.distribute.context import WorkerContext
    from imagenet_spark.models import build
    from imagenet_spark.train.ema import WeightAverage
    from imagenet_spark.train.steps import make_step_functions
    from imagenet_spark.train_config import TrainConfig

    classes = 10
    cfg = TrainConfig(data="-", model_dir="-", model=model_name, workers=1, backend="off", global_batch_size=batch)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 4, image_size, image_size, 3)).astype("float32")
    y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch * 4)]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat().prefetch(4)
    backend = make_backend("off", WorkerContext())
    model = build(model_name, num_classes=classes, image_size=image_size)
    average = WeightAverage(model, decay=0.999, warmup=True, strategy=backend.strategy) if ema else None
    sums = {n: tf.keras.metrics.Sum(name=n) for n in ("loss", "top1", "top5", "count", "nonfinite")}
    train_steps, _ = make_step_functions(cfg, backend, model, tf.keras.optimizers.SGD(0.01, momentum=0.9), sums,
                                         num_classes=classes, average=average, mean=(0.0,) * 3,
                                         std=(1.0,) * 3)  # normal data: identity normalisation, still timed
    it = iter(ds)
    train_steps(it, tf.constant(3))  # trace and warm up
    float(sums["loss"].result())
    start = time.perf_counter()
    train_steps(it, tf.constant(steps))
    float(sums["loss"].result())
    return (time.perf_counter() - start) / steps


def _stream_seconds(image_size: int, batch: int, batches: int, mixed: bool) -> float:
    import numpy as np
    import tensorflow as tf

    from imagenet_spark.data.mix import MixSettings, mix_batches

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, image_size, image_size, 3)).astype("float32")
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    ds = tf.data.Dataset.from_tensors((x, y)).repeat(batches)
    settings = MixSettings(mixup_alpha=0.2, cutmix_alpha=1.0) if mixed else MixSettings()
    ds = mix_batches(ds, settings, key=1)
    start = time.perf_counter()
    for _ in ds:
        pass
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parse_sized(parser, quick={"steps": 10})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plain = min(_step_seconds(args.model, args.image_size, args.batch, args.steps, ema=False) for _ in range(2))
    ema = min(_step_seconds(args.model, args.image_size, args.batch, args.steps, ema=True) for _ in range(2))
    log.info("step %s %dpx batch %d: plain %.4f s, with EMA %.4f s, ratio %.3f", args.model, args.image_size,
             args.batch, plain, ema, ema / plain)
    shape = f"{args.model} {args.image_size} px, batch {args.batch}"
    emit(Figure(script="mix_ema", figure="step with EMA", value=ema * 1000, baseline_name="plain step",
                baseline=plain * 1000, unit="ms/step", better="lower", shape=f"{shape}, {args.steps} steps, best of 2"))
    unmixed = min(_stream_seconds(args.image_size, args.batch, 200, mixed=False) for _ in range(2))
    mixed = min(_stream_seconds(args.image_size, args.batch, 200, mixed=True) for _ in range(2))
    log.info("stream %dpx batch %d: unmixed %.5f s/batch, mixup+cutmix %.5f s/batch (+%.5f s per batch, %.1f%% of "
             "the plain step)", args.image_size, args.batch, unmixed, mixed, mixed - unmixed,
             100 * (mixed - unmixed) / plain)
    emit(Figure(script="mix_ema", figure="mixup+cutmix stream + plain step", value=(plain + mixed - unmixed) * 1000,
                baseline_name="plain step", baseline=plain * 1000, unit="ms/step", better="lower",
                shape=f"{shape}, 200 batches from memory, best of 2 (mixing not overlapped)"))


if __name__ == "__main__":
    main()
