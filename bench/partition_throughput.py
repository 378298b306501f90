"""Partition-job throughput on ImageNet-like JPEGs, beside a naive baseline measured in the same run.

    .venv/bin/python bench/partition_throughput.py [--images 800] [--workdir /tmp/bench-partition]

Prints, for ~500x375 ~110 KB JPEGs, resize_short 256, quality 90:
  * floor: our per-image work (decode with draft + fix + resize + encode) in this process, images/s on one core;
  * naive: full decode + PNG re-encode (what Petastorm's ImageNet example stores), images/s on one core;
  * job: the whole Spark job (listing, tasks, Parquet, metadata, publish) on local[2], images/s per core;
  * bytes per image in and out, and the executors' peak RSS at two dataset sizes (memory must not grow).
Figures are ratios to the baseline in the same run, so they are comparable across machines.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from PIL import Image

from imagenet_spark import logs
from imagenet_spark.config import PartitionConfig, resolve
from imagenet_spark.data.fake import FakeSpec, write_ilsvrc
from imagenet_spark.data.images import process_image

log = logging.getLogger("bench.partition")


def _naive(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
        rgb.load()
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue()


def _rate(fn, blobs: list[bytes]) -> tuple[float, int]:
    start = time.perf_counter()
    out = 0
    for blob in blobs:
        out += len(fn(blob))
    return len(blobs) / (time.perf_counter() - start), out // len(blobs)


def _replicate(src: Path, dst: Path, copies: int) -> int:
    """An ILSVRC train tree of ``copies`` x the images of ``src``, as symlinks (generating is the slow part)."""
    n = 0
    for cls in sorted((src / "train").iterdir()):
        out = dst / "train" / cls.name
        out.mkdir(parents=True)
        for f in sorted(cls.iterdir()):
            for c in range(copies):
                (out / f"c{c}_{f.name}").symlink_to(f)
                n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=800, help="distinct generated JPEGs")
    parser.add_argument("--copies", type=int, default=8, help="the large run lists each image this many times")
    parser.add_argument("--workdir", default="/tmp/bench-partition")
    args = parser.parse_args()
    logs.configure("WARNING")
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    classes = 8
    raw = work / "raw"
    t0 = time.perf_counter()
    write_ilsvrc(raw, FakeSpec(num_classes=classes, train_per_class=args.images // classes, val_per_class=0,
                               realistic=True, size_jitter=0.1))
    blobs = [p.read_bytes() for p in sorted((raw / "train").rglob("*.JPEG"))]
    in_bytes = sum(map(len, blobs)) // len(blobs)
    print(f"generated {len(blobs)} JPEGs, mean {in_bytes / 1000:.0f} KB, in {time.perf_counter() - t0:.1f} s")

    ours = lambda b: process_image(b, filename="x.JPEG", resize_short=256, quality=90, max_pixels=10**8).data  # noqa: E731
    floor, out_bytes = _rate(ours, blobs)
    naive, naive_bytes = _rate(_naive, blobs)
    print(f"floor  (one core, in process): {floor:7.1f} images/s, {out_bytes / 1000:.0f} KB/image out")
    print(f"naive  (decode + PNG, 1 core): {naive:7.1f} images/s, {naive_bytes / 1000:.0f} KB/image out")
    print(f"ratio  floor / naive: {floor / naive:.2f}x faster, {naive_bytes / out_bytes:.1f}x smaller")
    big = work / "raw_big"
    _replicate(raw, big, args.copies)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from imagenet_spark.data.partition import run_partition
    from imagenet_spark.spark.session import build_session

    cores = 2
    spark = build_session("bench-partition", master=f"local[{cores}]",
                          conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    preset = Path(__file__).parents[1] / "conf/partition/imagenet.yaml"
    runs = {}
    for name, src in (("warmup", raw), ("small", raw), ("large", big)):
        cfg = resolve(PartitionConfig, preset=preset, explicit=dict(input=str(src), output=str(work / f"out_{name}")))
        runs[name] = run_partition(spark, cfg)
    spark.stop()
    small, large = runs["small"], runs["large"]
    for name, m in (("small", small), ("large", large)):
        n = m["totals"]["inputs"]
        print(f"job    {name:5s} (local[{cores}]): {n:6d} images in {m['wall_time_s']:6.2f} s = "
              f"{n / m['wall_time_s'] / cores:6.1f} images/s per core end to end")
    marginal = (large["totals"]["inputs"] - small["totals"]["inputs"]) / (large["wall_time_s"] - small["wall_time_s"])
    print(f"job    marginal (fixed start-up removed): {marginal / cores:6.1f} images/s per core = "
          f"{marginal / cores / floor:.2f} of the in-process floor, {marginal / cores / naive:.1f}x the naive baseline")
    print(f"bytes  per image: in {in_bytes / 1000:.0f} KB, out {large['bytes']['per_image'] / 1000:.1f} KB")
    print(f"memory executor peak RSS: {small['executor_peak_rss_mb']} MB at {small['totals']['inputs']} images, "
          f"{large['executor_peak_rss_mb']} MB at {large['totals']['inputs']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
