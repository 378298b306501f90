"""The small-data preset against a plain Keras ``model.fit``, on a real dataset nobody here generated (issue #11).

    .venv/bin/python bench/small_data.py --lock /tmp/heavy.lock            # all parts, lock held per part
    .venv/bin/python bench/small_data.py --only ours --lock /tmp/heavy.lock  # one part (results kept in --work)
        [--work /tmp/small_data] [--model resnet18] [--image-size 32] [--epochs 8] [--batch 64]
        [--seed 0] [--train-seed 0] [--config conf/train/small_images.yaml] [--set key=value ...]
        [--quick: 4 epochs (make bench); --full: the defaults]

Data: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, 10 classes, shipped in the wheel), written
as a user would bring it: PNG files upscaled to ``--image-size`` (Pillow bicubic), a seeded stratified 80/20 split,
``train/<class>/`` and ``validation/<class>/`` folders; then the real partition job (``jobs/partition.py --master
local[2] --layout folders --resize-short S``, a no-op at the images' own size) makes the dataset both sides
read.

* baseline: one process, plain ``tf.keras`` ``model.fit`` of the same registry model (same image size, epochs and
  global batch), Adam at Keras' default rate 1e-3, plain cross-entropy, no augmentation, no weight decay; its
  images are the dataset's stored JPEGs through the trainer's own eval transform (``augment.preprocess_eval``) for
  training and validation, so both sides see the same pixels at evaluation. Validation top-1 after the last epoch.
* ours: ``jobs/train_barrier.py --master local[2] --config PRESET --workers 2 --backend mwms`` with the same
  model, size, epochs and batch; ``val_top1`` of the last epoch in ``metrics.json``.

Prints both top-1s, ours/baseline (acceptance: >= 0.98), the wall times and the exact commands. Each part holds
``--lock`` (flock) only while it runs, so other users of the machine get turns between parts.

Measured here (2 shared cores; resnet18, batch 64): 32 px, 8 epochs: ours 0.983 vs baseline 0.986, ratio 0.997
(train seeds 1, 2: 0.992, 1.014); 64 px, 6 epochs: 0.972 vs 0.961, 1.012. Ours takes 2.2-2.7x the baseline's wall
time (Spark and worker start, per-epoch evaluation, two workers sharing two cores); whole bench 5-7 minutes at 32 px.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

from figures import Figure, emit, parse_sized

REPO = Path(__file__).resolve().parents[1]
# The acceptance (ours/baseline top-1 >= 0.98) is judged at the full size: at make bench's 4 epochs top-1 is still
# climbing, and three train seeds gave 0.93-0.97 at one commit (0.94-0.97 at the one before).
ACCEPTANCE_EPOCHS = 8
Part = Literal["prepare", "baseline", "ours", "report"]
log = logging.getLogger("bench.small_data")


@contextlib.contextmanager
def held(lock: str | None) -> Iterator[None]:
    """flock ``lock`` for one heavy part (the machine is shared; see the module docstring)."""
    if not lock:
        yield
        return
    with open(lock, "a") as handle:
        log.info("waiting for %s", lock)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _spark_env() -> dict[str, str]:
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
                PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def _own_command(args: argparse.Namespace, part: str) -> str:
    """The command line that reruns ``part`` of this bench with the same settings."""
    return shlex.join([sys.executable, str(REPO / "bench/small_data.py"), "--only", part, "--work", str(args.work),
                       "--model", args.model, "--image-size", str(args.image_size), "--epochs", str(args.epochs),
                       "--batch", str(args.batch), "--seed", str(args.seed), "--train-seed", str(args.train_seed)])


def _results(work: Path) -> dict[str, Any]:
    path = work / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(work: Path, key: str, value: dict[str, Any]) -> None:
    results = _results(work)
    results[key] = value
    (work / "results.json").write_text(json.dumps(results, indent=2))


def write_tree(raw: Path, image_size: int, seed: int) -> dict[str, int]:
    """load_digits as PNG class folders, upscaled to ``image_size``; a seeded stratified 80/20 split."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(index, test_size=0.2, random_state=seed, stratify=digits.target)
    counts = {}
    for split, idx in (("train", train_idx), ("validation", val_idx)):
        for i in idx:
            folder = raw / split / f"digit_{digits.target[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize((image_size, image_size), Image.BICUBIC).save(
                folder / f"{i:04d}.png")
        counts[split] = len(idx)
    return counts


def prepare(args: argparse.Namespace) -> None:
    """Write the image tree and run the real partition job on it."""
    raw, ds = args.work / "raw", args.work / "ds"
    if raw.exists():
        import shutil

        shutil.rmtree(raw)
    counts = write_tree(raw, args.image_size, args.seed)
    cmd = [sys.executable, str(REPO / "jobs/partition.py"), "--master", "local[2]", "--input", str(raw),
           "--output", str(ds), "--layout", "folders", "--resize-short", str(args.image_size), "--overwrite",
           "--set", "rows_per_row_group=32"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=_spark_env(), capture_output=True, text=True, cwd=args.work)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"partition job failed (rc {proc.returncode})")
    _save(args.work, "prepare", {"counts": counts, "wall_s": wall, "command": shlex.join(cmd)})
    log.info("dataset %s: %s images written as PNG, partitioned in %.0f s", ds, counts, wall)


def _split(ds: Path, split: str) -> tuple[list[bytes], Any]:
    """(JPEG bytes, labels) of one split, read straight from the dataset's Parquet files."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(ds / split, columns=["image", "label"])
    return table.column("image").to_pylist(), np.asarray(table.column("label").to_pylist(), np.int32)


def baseline(args: argparse.Namespace) -> None:
    """Plain single-process ``model.fit``: same model, size, epochs, batch; no augmentation (docstring above)."""
    import tensorflow as tf

    from imagenet_spark.data.augment import preprocess_eval
    from imagenet_spark.models import build, info

    tf.keras.utils.set_random_seed(args.train_seed)
    model_info = info(args.model)
    eval_resize = max(args.image_size, round(args.image_size / 0.875))  # what the trainer uses (planning.py)

    def stream(split: str, shuffle: bool) -> tuple[Any, int]:
        images, labels = _split(args.work / "ds", split)
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        if shuffle:
            ds = ds.shuffle(len(labels), seed=args.train_seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda b, y: (preprocess_eval(b, image_size=args.image_size, eval_resize=eval_resize,
                                                  mean=model_info.mean, std=model_info.std), y),
                    num_parallel_calls=2)
        return ds.batch(args.batch, drop_remainder=shuffle).prefetch(2), len(labels)

    train_ds, n_train = stream("train", True)
    val_ds, n_val = stream("validation", False)
    model = build(args.model, num_classes=10, image_size=args.image_size)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="top1")])
    start = time.perf_counter()
    model.fit(train_ds, epochs=int(args.epochs), verbose=2)
    wall = time.perf_counter() - start
    top1 = float(model.evaluate(val_ds, verbose=0, return_dict=True)["top1"])
    _save(args.work, "baseline", {"val_top1": top1, "wall_s": wall, "train_images": n_train, "val_images": n_val,
                                  "optimizer": "Adam(1e-3)", "command": _own_command(args, "baseline")})
    log.info("baseline: val top-1 %.4f in %.0f s", top1, wall)


def ours(args: argparse.Namespace) -> None:
    """Two MWMS workers in local[2] with the preset; the last epoch's val_top1 from metrics.json."""
    model_dir = args.work / "model"
    cmd = [sys.executable, str(REPO / "jobs/train_barrier.py"), "--master", "local[2]", "--config", args.config,
           "--data", str(args.work / "ds"), "--model-dir", str(model_dir), "--workers", "2", "--backend", "mwms",
           "--model", args.model, "--image-size", str(args.image_size), "--epochs", str(args.epochs),
           "--global-batch-size", str(args.batch), "--overwrite", "--set", "track=false",
           "--set", f"seed={args.train_seed}"]
    for setting in args.set:
        cmd += ["--set", setting]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=_spark_env(), capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    (args.work / "ours.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"training job failed (rc {proc.returncode}; log: {args.work / 'ours.log'})")
    epochs = json.loads((model_dir / "metrics.json").read_text())
    top1 = float(epochs[-1]["val_top1"])
    _save(args.work, "ours", {"val_top1": top1, "wall_s": wall, "per_epoch_val_top1":
                              [e.get("val_top1") for e in epochs], "train_time_s":
                              sum(e.get("train_time_s") or 0.0 for e in epochs), "command": shlex.join(cmd)})
    log.info("ours: val top-1 %.4f in %.0f s", top1, wall)


def report(args: argparse.Namespace) -> None:
    """Print both figures, the ratio and the commands (from results.json, so parts may run separately)."""
    res = _results(args.work)
    for key in ("prepare", "baseline", "ours"):
        if key in res:
            print(f"{key:9s} {res[key]['command']}")
    if "baseline" in res and "ours" in res:
        b, o = res["baseline"], res["ours"]
        print(f"baseline  model.fit {b['optimizer']}: val top-1 {b['val_top1']:.4f}, {b['wall_s']:.0f} s "
              f"({b['train_images']} train / {b['val_images']} validation images)")
        print(f"ours      2 MWMS workers, {args.config}: val top-1 {o['val_top1']:.4f}, {o['wall_s']:.0f} s "
              f"of which training steps {o['train_time_s']:.0f} s (per epoch: "
              f"{', '.join(f'{v:.3f}' for v in o['per_epoch_val_top1'] if v is not None)})")
        ratio = o["val_top1"] / b["val_top1"]
        shape = (f"load_digits {b['train_images']} train / {b['val_images']} val, {args.model} {args.image_size} px, "
                 f"{args.epochs} epochs, batch {args.batch}")
        emit(Figure(script="small_data", figure="val top-1, 2 MWMS workers + preset", value=o["val_top1"],
                    baseline_name="plain model.fit", baseline=b["val_top1"], unit="", shape=shape))
        emit(Figure(script="small_data", figure="wall time, 2 MWMS workers + preset", value=o["wall_s"],
                    baseline_name="plain model.fit", baseline=b["wall_s"], unit="s", better="lower", shape=shape))
        verdict = (("PASS" if ratio >= 0.98 else "FAIL") if args.epochs >= ACCEPTANCE_EPOCHS else
                   f"judged at {ACCEPTANCE_EPOCHS}+ epochs (--full); at {args.epochs} top-1 still climbs and swings "
                   "with the seed")
        print(f"ratio     ours/baseline top-1 {ratio:.3f} (acceptance >= 0.98: {verdict}); "
              f"wall ours/baseline {o['wall_s'] / b['wall_s']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=get_args(Part), action="append",
                        help="run only these parts (repeatable; default: all)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/small_data"))
    parser.add_argument("--lock", default=None, help="flock this file for each heavy part (/tmp/heavy.lock here)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="the train/validation split's seed")
    parser.add_argument("--train-seed", type=int, default=0, help="both trainings' seed (weights, order, crops)")
    parser.add_argument("--config", default=str(REPO / "conf/train/small_images.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra setting for ours (tuning runs; the figure to report uses the preset alone)")
    args = parse_sized(parser, quick={"epochs": 4})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    parts = args.only or list(get_args(Part))
    heavy = {"prepare": prepare, "baseline": baseline, "ours": ours}
    for part in parts:
        if part in heavy:
            with held(args.lock):
                heavy[part](args)
    report(args)


if __name__ == "__main__":
    main()
