"""The whole partition job against a serial TFRecord converter on the same tree, same machine, same run
(issue #13 goal 1's last clause: ours must finish first although it resizes and re-encodes and the converter
does not).

    .venv/bin/python bench/partition_vs_tfrecord.py [--classes 1000] [--per-class 5] [--val 200] [--rounds 2]
                                                    [--cores 2] [--workdir /tmp/bench-vs-tfrecord]
                                                    [--quick: --classes 100 --val 100]

The tree: issue #13's shape (many classes of a few images plus a validation split) in the ILSVRC layout
(``train/<wnid>/*.JPEG``, flat ``validation/`` + ``synset_labels.txt``), made of ~500x375 real photographs
(bench/photo_tree.py's pool, hard-linked). ``--pool ilsvrc`` (the default) grains them to ILSVRC2012's ~110 KB
per image, the issue's tree (decoding, all the converter does, costs in proportion to the coded bytes);
``--pool light`` keeps the plain ~48 KB pool, smoother than camera photos.

Baseline: what tensorflow/tpu's ``imagenet_to_gcs.py`` does, written here from its description (that script
and a real ILSVRC tree are not available offline): ONE Python process, no Spark; per image, read the bytes,
decode them with TensorFlow to check them (``tf.io.decode_jpeg``, channels 3; a PNG or a CMYK JPEG is first
re-encoded as an RGB JPEG at quality 100, as its ImageCoder does, found here by content instead of its list of
ILSVRC file names), then write a ``tf.train.Example`` with the ORIGINAL bytes and the label, synset, height
and width features into TFRecord shards (train shuffled with seed 0, shard counts sized from the data by
:func:`imagenet_spark.data.tfrecord.shard_count`). Its wall: from its process start to the last shard closed.

Ours: a fresh process running ``jobs/partition.py --master local[<cores>]`` with default settings (resize
256, JPEG q90), like a user: wall from process start to the dataset published (manifest.json written, the
same moment as the converter's last shard closed; Spark start included), and to exit for both tools (the
converter's TensorFlow teardown; our interpreter's and JVM's, Spark's own shutdown); also the job-only wall
(the manifest's ``wall_time_s``: from the listing on, which the command runs while the JVM starts, so it
includes most of Spark's start since 88fde89). The two run alternately for ``--rounds`` rounds; medians are reported.
Ratio: ours / serial (lower is better; the goal is < 1.0 for the whole job).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from figures import Figure, emit, parse_sized
from photo_tree import make_pool

from imagenet_spark import logs
from imagenet_spark.data.tfrecord import shard_count, shard_name

log = logging.getLogger("bench.partition_vs_tfrecord")

REPO = Path(__file__).resolve().parents[1]
LABELS_FILE = "synset_labels.txt"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


@dataclass(frozen=True)
class Run:
    """One timed run of either tool: seconds from process start to its output complete (serial: last shard
    closed; ours: manifest.json written, the moment the dataset is published), images written, output bytes
    per image, job-only seconds (ours: the manifest's wall_time_s; serial: its wall), per-image work seconds
    (ours: the executors' work, summed over both cores; serial: its time after importing TensorFlow) and
    seconds from process start to exit (interpreter and JVM teardown included)."""

    wall_s: float
    images: int
    bytes_per_image: float
    job_s: float
    work_s: float
    exit_s: float


def make_ilsvrc_tree(root: Path, pool: list[Path], classes: int, per_class: int, val: int) -> int:
    """``root/train/n%08d/*.JPEG`` (``classes`` x ``per_class``) and a flat ``root/validation`` of ``val``
    images with ``synset_labels.txt`` (one wnid per sorted file name), all hard links into ``pool``."""
    wnids = [f"n{c:08d}" for c in range(classes)]
    n = 0
    for wnid in wnids:
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(per_class):
            os.link(pool[n % len(pool)], folder / f"{wnid}_{i}.JPEG")
            n += 1
    (root / "validation").mkdir(parents=True)
    labels = []
    for i in range(val):
        os.link(pool[n % len(pool)], root / "validation" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
        labels.append(wnids[i % classes])
        n += 1
    (root / "validation" / LABELS_FILE).write_text("\n".join(labels) + "\n")
    return n


# ---- the serial converter (runs in its own process: ``--serial SRC DST``) ----

def _jpeg_components(data: bytes) -> int:
    """The component count of a JPEG's frame header (4 for CMYK/YCCK), 0 when none is found."""
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return 0
        marker = data[pos + 1]
        if marker in _SOF_MARKERS:
            return data[pos + 9]
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return 0


def check_image(tf: Any, data: bytes) -> tuple[bytes, int, int]:
    """The converter's per-image work: (JPEG bytes to store, height, width); PNG and CMYK become RGB JPEGs."""
    if data.startswith(_PNG_MAGIC):
        data = tf.io.encode_jpeg(tf.io.decode_png(data, channels=3), format="rgb", quality=100).numpy()
    elif _jpeg_components(data) == 4:
        data = tf.io.encode_jpeg(tf.io.decode_jpeg(data, channels=0), format="rgb", quality=100).numpy()
    image = tf.io.decode_jpeg(data, channels=3)
    if len(image.shape) != 3 or image.shape[2] != 3:
        raise SystemExit(f"decoded to shape {image.shape}, not HxWx3")
    return data, int(image.shape[0]), int(image.shape[1])


def list_split(src: Path, split: str) -> list[tuple[Path, str]]:
    """(file, wnid) of a split: train from its class folders, shuffled with seed 0; validation from the labels."""
    if split == "train":
        files = sorted((p, p.parent.name) for p in (src / "train").glob("*/*.JPEG"))
        random.Random(0).shuffle(files)
        return files
    labels = (src / "validation" / LABELS_FILE).read_text().split()
    return list(zip(sorted((src / "validation").glob("*.JPEG")), labels, strict=True))


def write_split(tf: Any, files: list[tuple[Path, str]], labels: dict[str, int], dst: Path, split: str) -> int:
    """Write one split's shards in order (contiguous chunks of the list); returns the records written."""
    def feature(value: bytes | int) -> Any:
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    shards = shard_count("train" if split == "train" else "validation", len(files),
                         sum(p.stat().st_size for p, _ in files), row_groups=len(files))
    chunk = -(-len(files) // shards)
    for s in range(shards):
        with tf.io.TFRecordWriter(str(dst / shard_name(split, s, shards))) as writer:
            for path, wnid in files[s * chunk:(s + 1) * chunk]:
                data, height, width = check_image(tf, path.read_bytes())
                example = tf.train.Example(features=tf.train.Features(feature={
                    "image/height": feature(height), "image/width": feature(width),
                    "image/colorspace": feature(b"RGB"), "image/channels": feature(3),
                    "image/class/label": feature(labels[wnid]), "image/class/synset": feature(wnid.encode()),
                    "image/format": feature(b"JPEG"), "image/filename": feature(path.name.encode()),
                    "image/encoded": feature(data)}))
                writer.write(example.SerializeToString())
    return len(files)


def serial_convert(src: Path, dst: Path) -> None:
    """The baseline process's body; prints one JSON line: records, output bytes and when the last shard closed."""
    import tensorflow as tf

    imported = time.time()
    dst.mkdir(parents=True)
    labels = {w: i + 1 for i, w in enumerate(sorted(p.name for p in (src / "train").iterdir()))}  # 0: background
    records = sum(write_split(tf, list_split(src, split), labels, dst, split) for split in ("train", "validation"))
    closed = time.time()
    print(json.dumps({"records": records, "bytes": sum(p.stat().st_size for p in dst.iterdir()), "closed": closed,
                      "imported": imported}))


# ---- the timed runs ----

def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall-clock start, seconds to exit, stdout) of a fresh process; exits the bench when it fails."""
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{cmd[1]} failed (rc {proc.returncode})")
    return start, time.time() - start, proc.stdout


def run_serial(src: Path, dst: Path) -> Run:
    start, exit_s, out = _run([sys.executable, __file__, "--serial", str(src), str(dst)])
    result = json.loads(out.strip().splitlines()[-1])
    wall = result["closed"] - start
    records = result["records"]
    return Run(wall, records, result["bytes"] / records, wall, result["closed"] - result["imported"], exit_s)


def run_ours(src: Path, dst: Path, cores: int) -> Run:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    start, exit_s, _out = _run([sys.executable, str(REPO / "jobs/partition.py"), "--master", f"local[{cores}]",
                                "--input", str(src), "--output", str(dst)], env)
    published = (dst / "manifest.json").stat().st_mtime - start
    manifest = json.loads((dst / "manifest.json").read_text())
    return Run(published, manifest["totals"]["inputs"], manifest["bytes"]["per_image"], manifest["wall_time_s"],
               manifest["executor_seconds"], exit_s)


def rounds(src: Path, work: Path, cores: int, count: int) -> dict[str, list[Run]]:
    """Serial, ours, serial, ours, ... on the same files; each output folder fresh."""
    runs: dict[str, list[Run]] = {"serial": [], "ours": []}
    for r in range(count):
        for name in runs:
            dst = work / f"out_{name}"
            shutil.rmtree(dst, ignore_errors=True)
            run = run_serial(src, dst) if name == "serial" else run_ours(src, dst, cores)
            runs[name].append(run)
            job = f"; job-only {run.job_s:6.2f} s" if name == "ours" else ""
            print(f"round {r + 1} {name:6s}: output complete {run.wall_s:6.2f} s, exit {run.exit_s:6.2f} s "
                  f"({run.images} images{job}), "
                  f"{run.bytes_per_image / 1000:.1f} KB per image", flush=True)
    return runs


def report(runs: dict[str, list[Run]], shape: str, cores: int) -> None:
    """Medians, images/s, bytes per image and the ratios; emits the whole-job and job-only figures."""
    med = {name: (statistics.median(r.wall_s for r in rs), statistics.median(r.job_s for r in rs))
           for name, rs in runs.items()}
    serial, (ours, ours_job) = med["serial"][0], med["ours"]
    images = runs["ours"][0].images
    for name, label in (("serial", "serial TFRecord converter (1 process)"),
                        ("ours", f"ours, jobs/partition.py local[{cores}]")):
        print(f"{label}: median wall {med[name][0]:.2f} s = {images / med[name][0]:.1f} images/s, "
              f"{runs[name][0].bytes_per_image / 1000:.1f} KB per image")
    work = {name: statistics.median(r.work_s for r in rs) / images * 1000 for name, rs in runs.items()}
    print(f"work per image: serial {work['serial']:.2f} ms (after its imports), ours {work['ours']:.2f} ms "
          f"(executor seconds, over {cores} cores)")
    print(f"ours job-only (manifest wall_time_s): median {ours_job:.2f} s = {images / ours_job:.1f} images/s; "
          f"outside it (interpreter, imports, Spark start beyond the listing, stop): {ours - ours_job:.2f} s")
    exits = {name: statistics.median(r.exit_s for r in rs) for name, rs in runs.items()}
    print(f"ratio ours/serial: whole job to output complete {ours / serial:.2f}, to process exit "
          f"{exits['ours'] / exits['serial']:.2f} (serial {exits['serial']:.2f} s, ours {exits['ours']:.2f} s), "
          f"job-only {ours_job / serial:.2f} (lower is better; goal < 1.0): ours is "
          f"{'FASTER' if ours < serial else 'SLOWER'}")
    emit(Figure(script="partition_vs_tfrecord", figure="partition whole job to process exit vs serial TFRecord "
                "converter", value=exits["ours"], baseline_name="serial imagenet_to_gcs-style converter",
                baseline=exits["serial"], unit="s", better="lower", shape=shape))
    for figure, value in (("whole job (process start to output complete)", ours),
                          ("job only (manifest wall_time_s)", ours_job)):
        emit(Figure(script="partition_vs_tfrecord", figure=f"partition {figure} vs serial TFRecord converter",
                    value=value, baseline_name="serial imagenet_to_gcs-style converter", baseline=serial,
                    unit="s", better="lower", shape=shape))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--pool", choices=("ilsvrc", "light"), default="ilsvrc",
                        help="ilsvrc: photos grained to ILSVRC2012's ~110 KB per image (the issue's tree); "
                             "light: the plain ~48 KB pool")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-vs-tfrecord")
    parser.add_argument("--serial", nargs=2, type=Path, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = parse_sized(parser, quick={"classes": 100, "val": 100})
    if args.serial:
        serial_convert(*args.serial)
        return 0
    logs.configure("WARNING")
    grain = args.pool == "ilsvrc"
    pool = make_pool(args.workdir / ("pool-ilsvrc" if grain else "pool"), 400, grain=grain)
    src = args.workdir / "tree"
    shutil.rmtree(src, ignore_errors=True)
    total = make_ilsvrc_tree(src, pool, args.classes, args.per_class, args.val)
    mean_kb = statistics.mean(p.stat().st_size for p in pool) / 1000
    shape = (f"{args.classes} classes x {args.per_class} + {args.val} validation, photos ~500x375 "
             f"(~{mean_kb:.0f} KB, {args.pool} pool), ILSVRC layout; {args.cores} cores")
    print(f"tree: {total} images, {shape}")
    report(rounds(src, args.workdir, args.cores, args.rounds), shape, args.cores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
