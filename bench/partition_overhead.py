"""Where a partition task's time goes on a tree of many small classes (the shape issue #13 measured).

    .venv/bin/python bench/partition_overhead.py [--classes 300] [--per-class 5] [--pack] [--quick: 100 classes, --pack]

Measured in one run, on ``local[2]``, over the same real-photo tree (bench/photo_tree.py):
  * image work: ``process_image`` over every file in this process (decode, fix, resize 256, JPEG q90);
  * per-task filesystem/metadata work: ``process_task`` for every planned task in this process, no Spark,
    minus the image work (reading, Parquet writer set-up, rename, result JSON);
  * Spark per-task cost: the same task dicts through ``parallelize(...).map(...)`` doing nothing (scheduling,
    task and result serialisation, Python worker hand-off); the workers' pids show whether they are reused;
  * the whole job: wall, slot seconds (slots x wall), executor work seconds, and the rest (driver listing,
    the storage probe job, publish).
``--pack`` plans with packing (several small classes per task, as the job now does); without it, one task
per class slice, as the job did before.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from figures import Figure, emit, parse_sized
from photo_tree import make_pool, make_tree

from imagenet_spark import logs
from imagenet_spark.config import PartitionConfig, resolve, to_dict

log = logging.getLogger("bench.partition_overhead")


def _noop(task: object) -> dict[str, object]:
    """A task that does nothing but answer with a result of a real one's size (its worker's pid for reuse)."""
    return {"pid": os.getpid(), "pad": "x" * 600}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--pack", action="store_true")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "bench-partition-overhead"))
    args = parse_sized(parser, quick={"classes": 100, "pack": True})
    logs.configure("WARNING")
    work = Path(args.workdir)
    shutil.rmtree(work / "tree", ignore_errors=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    shutil.rmtree(work / "staging", ignore_errors=True)
    pool = make_pool(work / "pool", min(400, args.classes * args.per_class))
    files = make_tree(work / "tree", pool, args.classes, args.per_class)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from imagenet_spark.data import images, layouts, resume
    from imagenet_spark.data.partition import process_task
    from imagenet_spark.data.tasks import pack_target, plan_tasks
    from imagenet_spark.jobs.partition import run_partition
    from imagenet_spark.spark.session import build_session

    cfg = resolve(PartitionConfig, explicit=dict(input=str(work / "tree"), output=str(work / "out")))
    t0 = time.perf_counter()
    for f in files:
        images.process_image(f.read_bytes(), filename=f.name, resize_short=256, quality=90, max_pixels=10**8)
    t_img = time.perf_counter() - t0

    t0 = time.perf_counter()
    listing = layouts.discover(cfg.input)
    t_list = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = resume.input_stats(listing)
    t_stats = time.perf_counter() - t0
    slots = 2
    target = pack_target(listing, cfg.images_per_task, slots) if args.pack else None
    tasks = plan_tasks(listing, cfg.images_per_task, stats, pack_images=target)
    cfg_dict = to_dict(cfg)
    t0 = time.perf_counter()
    for task in tasks:
        process_task(task, cfg_dict, str(work / "staging"))
    t_local = time.perf_counter() - t0
    print(f"tree: {len(files)} images in {args.classes} classes; {len(tasks)} tasks "
          f"({'packed, target ' + str(target) + ' images' if args.pack else 'one per class'})")
    print(f"driver: listing {t_list:.2f} s, stat {t_stats:.2f} s")
    print(f"image work in process: {t_img:.2f} s = {1000 * t_img / len(files):.2f} ms/image")
    print(f"process_task in process, no Spark: {t_local:.2f} s; per-task fs/metadata work "
          f"{1000 * (t_local - t_img) / len(tasks):.1f} ms/task")

    spark = build_session("bench-overhead", master=f"local[{slots}]",
                          conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    sc = spark.sparkContext
    sc.parallelize(range(4), 2).map(lambda x: x).collect()  # warm the Python workers
    t0 = time.perf_counter()
    out = sc.parallelize(tasks, len(tasks)).map(_noop).collect()
    t_noop = time.perf_counter() - t0
    pids = len({r["pid"] for r in out})
    print(f"spark no-op tasks: {t_noop:.2f} s wall for {len(tasks)} tasks = {1000 * t_noop * slots / len(tasks):.1f} "
          f"slot-ms/task (scheduling, task + result serialisation); {pids} distinct Python worker pid(s): "
          f"{'reused' if pids <= slots else 'not reused'}")
    t0 = time.perf_counter()
    manifest = run_partition(spark, cfg)
    wall = time.perf_counter() - t0
    spark.stop()
    work_s = manifest["executor_seconds"]
    emit(Figure(script="partition_overhead", figure="whole job, slot-seconds", value=slots * wall,
                baseline_name="the image work alone, in process", baseline=t_img, unit="s", better="lower",
                shape=f"{len(files)} photos ~500x375 in {args.classes} classes, {len(tasks)} tasks "
                      f"({'packed' if args.pack else 'one per class'}), local[{slots}]"))
    print(f"job: {wall:.2f} s wall, {slots * wall:.2f} slot-s, executor work {work_s:.2f} s "
          f"(efficiency {manifest.get('efficiency', work_s / (slots * wall)):.2f}); "
          f"{manifest.get('tasks', len(tasks))} tasks")
    print(f"  of the slot-seconds: image work ~{t_img:.1f}, per-task fs/metadata ~{t_local - t_img:.1f}, "
          f"Spark per-task ~{t_noop * slots:.1f}, the rest (driver listing/stat/probe/plan/publish, idle slots) "
          f"~{slots * wall - t_local - t_noop * slots:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
