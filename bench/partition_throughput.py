"""Partition-job throughput on real photographs, as a ratio to a plain Pillow loop measured in the same run.

    .venv/bin/python bench/partition_throughput.py [--cores 2] [--workdir /tmp/bench-partition] [--scale 1.0]
                                                   [--quick: --scale 0.4]

Input: ~500x375 JPEGs made of scikit-learn's two sample photographs (bench/photo_tree.py: seeded crops,
rescales and re-encodes), in two shapes:
  * few large classes: 4 classes (250 then 1,250 images each);
  * many small classes: 5 images a class (200 then 1,000 classes: issue #13's tree), the shape of ImageNet's
    validation split, ImageNet-21k and most fine-grained datasets.
Prints, for each shape:
  * baseline: a plain Pillow loop (read, decode, resize short side to 256 bicubic, JPEG q90) over the larger
    tree's files on ``--cores`` processes: images/s per core;
  * marginal: the job's extra images over its extra wall time between the smaller and the larger tree of the
    shape, in one Spark session (start-up, listing and publishing costs common to both cancel), per core, and
    its ratio to the baseline (the issue #13 target is >= 0.8);
  * whole job: the larger tree's images over the job's wall time (session up), and over Spark session start
    plus that (end to end), per core;
  * the manifest's efficiency (executor work seconds / slot seconds) and task count.
Then, once: our per-image work in one process (the floor), full decode + PNG (Petastorm's ImageNet example)
for comparison, bytes per image, and the executors' peak RSS at both sizes.
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from figures import Figure, emit, parse_sized
from photo_tree import make_pool, make_tree
from PIL import Image

from imagenet_spark import logs
from imagenet_spark.config import PartitionConfig, resolve
from imagenet_spark.data.images import process_image

log = logging.getLogger("bench.partition")

# (name, (classes, per class) of the smaller tree, of the larger tree)
SHAPES = (("few large classes", (4, 250), (4, 1250)), ("many small classes", (200, 5), (1000, 5)))
Shapes = tuple[tuple[str, tuple[int, int], tuple[int, int]], ...]


def scaled(scale: float) -> Shapes:
    """SHAPES with the large-class sizes (few large) and the class counts (many small) times ``scale``."""
    (few, (fc, fs), (fc2, fl)), (many, (mc, ms), (mc2, ml)) = SHAPES
    return ((few, (fc, round(fs * scale)), (fc2, round(fl * scale))),
            (many, (round(mc * scale), ms), (round(mc2 * scale), ml)))


def pillow_plain(path: str) -> int:
    """The baseline's work on one file: what a plain Pillow script does (no draft, no fixes)."""
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    scale = 256 / min(rgb.size)
    if scale < 1:
        rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)
    return len(buf.getvalue())


def _naive(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue()


def _rate(fn: Callable[[bytes], Any], blobs: list[bytes]) -> tuple[float, int]:
    start = time.perf_counter()
    out = sum(len(fn(blob)) for blob in blobs)
    return len(blobs) / (time.perf_counter() - start), out // len(blobs)


def baseline_per_core(files: list[Path], cores: int) -> float:
    """Images/s per core of :func:`pillow_plain` over ``files`` on ``cores`` worker processes."""
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(pillow_plain, [str(f) for f in files[:cores * 4]])  # start the workers, import Pillow
        start = time.perf_counter()
        pool.map(pillow_plain, [str(f) for f in files], chunksize=16)
        return len(files) / (time.perf_counter() - start) / cores


def _job(spark: Any, src: Path, dst: Path) -> dict[str, Any]:
    from imagenet_spark.jobs.partition import run_partition

    preset = Path(__file__).parents[1] / "conf/partition/imagenet.yaml"
    cfg = resolve(PartitionConfig, preset=preset, explicit=dict(input=str(src), output=str(dst)))
    return run_partition(spark, cfg)


def run_shapes(work: Path, pool: list[Path], cores: int, shapes: Shapes) -> dict[str, dict[str, Any]]:
    """Per shape: baseline, both job runs and the session start-up time."""
    from imagenet_spark.spark.session import build_session

    trees = {}
    for name, small, large in shapes:
        trees[name] = (make_tree(work / f"{name[:4]}_small", pool, *small),
                       make_tree(work / f"{name[:4]}_large", pool, *large))
    t0 = time.perf_counter()
    spark = build_session("bench-partition", master=f"local[{cores}]",
                          conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    spark.sparkContext.parallelize(range(cores), cores).count()
    startup = time.perf_counter() - t0
    _job(spark, work / "warmup", work / "out_warmup")  # the Python workers' first imports
    out = {}
    for name, _small, _large in shapes:
        small_files, large_files = trees[name]
        runs = {size: _job(spark, work / f"{name[:4]}_{size}", work / f"out_{name[:4]}_{size}")
                for size in ("small", "large")}
        out[name] = {"baseline": baseline_per_core(large_files, cores), "runs": runs, "startup": startup}
    spark.stop()
    return out


def report(name: str, figures: dict[str, Any], cores: int, floor: float) -> float:
    small, large = figures["runs"]["small"], figures["runs"]["large"]
    n_small, n_large = small["totals"]["inputs"], large["totals"]["inputs"]
    marginal = (n_large - n_small) / (large["wall_time_s"] - small["wall_time_s"]) / cores
    whole = n_large / large["wall_time_s"] / cores
    end_to_end = n_large / (figures["startup"] + large["wall_time_s"]) / cores
    base = figures["baseline"]
    emit(Figure(script="partition_throughput", figure=f"{name}: job marginal", value=marginal,
                baseline_name="plain Pillow loop", baseline=base, unit="images/s/core",
                shape=f"{n_small} -> {n_large} photos ~500x375, {large['num_classes']} classes, local[{cores}]"))
    print(f"{name}: {n_small} -> {n_large} images, {large['num_classes']} classes, {large['tasks']['run']} tasks")
    print(f"  baseline Pillow loop ({cores} processes): {base:6.1f} images/s per core")
    print(f"  job marginal: {marginal:6.1f} images/s per core = {marginal / base:.2f} of the baseline "
          f"({marginal / floor:.2f} of our own per-image floor)")
    print(f"  whole job {large['wall_time_s']:.2f} s: {whole:6.1f} images/s per core = {whole / base:.2f} of the "
          f"baseline; efficiency {large['efficiency']:.2f}; with Spark start ({figures['startup']:.1f} s) "
          f"{end_to_end:6.1f} = {end_to_end / base:.2f}")
    return marginal / base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bench-partition"))
    parser.add_argument("--scale", type=float, default=1.0, help="large classes' sizes and small classes' counts x")
    args = parse_sized(parser, quick={"scale": 0.4})
    shapes = scaled(args.scale)
    logs.configure("WARNING")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    work = Path(args.workdir)
    for child in work.glob("*") if work.exists() else []:
        if child.name != "pool":
            shutil.rmtree(child)
    pool = make_pool(work / "pool", 400)
    make_tree(work / "warmup", pool, 40, 5)
    blobs = [p.read_bytes() for p in pool[:200]]
    print(f"{len(pool)} distinct JPEGs, mean {sum(map(len, blobs)) / len(blobs) / 1000:.0f} KB")
    ours = lambda b: process_image(b, filename="x.JPEG", resize_short=256, quality=90, max_pixels=10**8).data  # noqa: E731
    floor, out_bytes = _rate(ours, blobs)
    naive, naive_bytes = _rate(_naive, blobs[:50])
    print(f"floor  (our per-image work, one core, in process): {floor:6.1f} images/s, {out_bytes / 1000:.0f} KB out; "
          f"naive full decode + PNG: {naive:5.1f} images/s, {naive_bytes / 1000:.0f} KB out")
    figures = run_shapes(work, pool, args.cores, shapes)
    ratios = {name: report(name, figures[name], args.cores, floor) for name, _s, _l in shapes}
    runs = figures[shapes[0][0]]["runs"]
    print(f"memory executor peak RSS: {runs['small']['executor_peak_rss_mb']} MB at "
          f"{runs['small']['totals']['inputs']} images, {runs['large']['executor_peak_rss_mb']} MB at "
          f"{runs['large']['totals']['inputs']}; bytes per image out "
          f"{runs['large']['bytes']['per_image'] / 1000:.1f} KB")
    print("ratios (marginal / baseline): " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
