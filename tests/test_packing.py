"""Task packing in the partition job (issue #13): many small classes share a Spark task, each class still gets
its own ``synset=X/part-N.parquet``; the manifest reports efficiency; TFRecord shard counts come from the data."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagenet_spark.config import PartitionConfig, resolve
from imagenet_spark.data import layouts, resume
from imagenet_spark.data.tasks import PartitionError, pack_target, plan_tasks
from imagenet_spark.data.tfrecord import shard_count
from imagenet_spark.jobs.partition import run_partition


def _jpeg(rng: random.Random, size: tuple[int, int] = (20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3))).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _tree(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """``root/train/<class>/<class>_<i>.jpg`` with ``sizes[class]`` tiny JPEGs each."""
    rng = random.Random(seed)
    for cls, n in sizes.items():
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{cls}_{i:02d}.jpg").write_bytes(_jpeg(rng))
    return root


def _cfg(src: Path, dst: Path, **kw) -> PartitionConfig:
    base = dict(input=str(src), output=str(dst), resize_short=16, images_per_task=16, rows_per_row_group=4,
                max_reject_fraction=0.0)
    return resolve(PartitionConfig, explicit={**base, **kw})


SMALL_CLASSES = {f"c{i:02d}": 3 for i in range(24)}  # 72 images: one task per class would be 24 tasks


# --------------------------------------------------------------------------------------------------
# Planning (pure)


def test_small_classes_are_packed_and_large_classes_split(tmp_path):
    sizes = {"a_big": 37, **{f"b{i:02d}": 3 for i in range(10)}, "c_mid": 16}
    listing = layouts.discover(str(_tree(tmp_path / "raw", sizes)))
    tasks = plan_tasks(listing, 16, pack_images=16)
    units = [u for t in tasks for u in t.units]
    # one unit (one Parquet file) per class slice: a_big is cut into 16 + 16 + 5, the others are whole
    assert [(u.synset, u.index, len(u.items)) for u in units][:4] == [
        ("a_big", 0, 16), ("a_big", 1, 16), ("a_big", 2, 5), ("b00", 0, 3)]
    assert sorted(u.id for u in units) == [u.id for u in units] and len({u.id for u in units}) == len(units)
    per_task = [[u.synset for u in t.units] for t in tasks]
    assert per_task == [["a_big"], ["a_big"], ["a_big", "b00", "b01", "b02"], ["b03", "b04", "b05", "b06", "b07"],
                        ["b08", "b09"], ["c_mid"]]
    assert all(len(t.items()) <= 16 for t in tasks)
    assert [t.id for t in tasks] == [t.units[0].id for t in tasks]
    # every listed file in exactly one unit; the plan is deterministic, keys included
    assert sorted(i.filename for t in tasks for i in t.items()) == sorted(i.filename for i in listing.items)
    again = plan_tasks(layouts.discover(listing.root), 16, pack_images=16)
    assert [(t.id, t.key) for t in again] == [(t.id, t.key) for t in tasks]
    # unpacked: one task per class slice, as before packing existed
    assert len(plan_tasks(listing, 16)) == len(units) == 3 + 10 + 1


def test_packs_never_mix_splits_and_keys_follow_their_inputs(tmp_path):
    root = _tree(tmp_path / "raw", {"a": 2, "b": 2})
    for cls in ("a", "b"):
        (root / "validation" / cls).mkdir(parents=True)
        (root / "validation" / cls / "v.jpg").write_bytes(_jpeg(random.Random(1)))
    listing = layouts.discover(str(root))
    stats = resume.input_stats(listing)
    tasks = plan_tasks(listing, 16, stats, pack_images=16)
    assert [(t.split, [u.synset for u in t.units]) for t in tasks] == [
        ("train", ["a", "b"]), ("validation", ["a", "b"])]
    changed = dict(stats)
    uri = next(i.uri for i in listing.items if i.filename == "train/b/b_01.jpg")
    changed[uri] = (stats[uri][0] + 1, stats[uri][1])
    rekeyed = plan_tasks(listing, 16, changed, pack_images=16)
    assert [t.key == u.key for t, u in zip(tasks, rekeyed)] == [False, True]


def test_pack_target_aims_at_three_tasks_per_slot_within_bounds(tmp_path):
    listing = layouts.discover(str(_tree(tmp_path / "raw", {f"c{i}": 50 for i in range(12)})))  # 600 files
    assert pack_target(listing, 256, slots=2) == 100  # 600 / (2 slots x 3)
    assert pack_target(listing, 64, slots=2) == 64  # never over images_per_task (the file size cap)
    assert pack_target(listing, 256, slots=64) == 32  # not below PACK_MIN_IMAGES on a big cluster
    assert pack_target(listing, 8, slots=64) == 8


def test_pack_target_lowered_so_the_tasks_fill_whole_rounds(tmp_path):
    """62 classes of 5 (310 files) on 2 slots: a third of a slot's share is 52 images, 10 classes a task, 7
    tasks, the 7th alone on its slot at the end; 44 (8 classes) gives 8 tasks. Never below three quarters of
    the target, and one slot needs no rounding."""
    listing = layouts.discover(str(_tree(tmp_path / "raw", {f"c{i:02d}": 5 for i in range(62)})))
    assert len(plan_tasks(listing, 256, pack_images=52)) == 7
    assert pack_target(listing, 256, slots=2) == 44
    assert len(plan_tasks(listing, 256, pack_images=44)) == 8
    assert pack_target(listing, 256, slots=1) == 104  # 310 / 3: one slot, no rounds to fill
    assert pack_target(listing, 256, slots=5) == 32  # PACK_MIN_IMAGES: 11 tasks, no multiple of 5, none lower allowed


# --------------------------------------------------------------------------------------------------
# The job on real Spark


def _stage_tasks(spark) -> dict[int, int]:
    """Tasks per stage of every stage the application still remembers (StatusTracker, stage ids from 0)."""
    tracker = spark.sparkContext.statusTracker()
    out: dict[int, int] = {}
    stage = misses = 0
    while misses < 20:
        info = tracker.getStageInfo(stage)
        if info is None:
            misses += 1
        else:
            out[stage], misses = info.numTasks, 0
        stage += 1
    return out


def test_many_small_classes_run_as_few_tasks_one_file_per_class(spark, tmp_path):
    src = _tree(tmp_path / "raw", SMALL_CLASSES)
    dst = tmp_path / "ds"
    before = _stage_tasks(spark)
    manifest = run_partition(spark, _cfg(src, dst))
    # local[2]: 72 files / (2 slots x 3) = 12 -> the 32-image floor, capped by images_per_task=16: 5 classes a task
    assert manifest["pack_images"] == 16 and manifest["tasks"] == {"planned": 5, "run": 5}
    new_stages = {k: v for k, v in _stage_tasks(spark).items() if k not in before}
    assert sum(new_stages.values()) == 5, "one Spark task per packed task, not one per class (24)"
    assert manifest["counts"] == {"train": {c: 3 for c in SMALL_CLASSES}}
    assert manifest["totals"] == {"listed": 72, "inputs": 72, "written": 72, "rejected": 0, "skipped": 0}
    assert manifest["slots"] == 2 and 0 < manifest["efficiency"] < 1
    files = sorted(str(p.relative_to(dst / "train")) for p in (dst / "train").rglob("*.parquet"))
    assert files == [f"synset={c}/part-00000.parquet" for c in SMALL_CLASSES]
    rows = pq.read_table(dst / "train").to_pylist()
    assert sorted(r["filename"] for r in rows) == sorted(f"train/{c}/{c}_{i:02d}.jpg" for c in SMALL_CLASSES
                                                          for i in range(3))
    labels = {line.split("\t")[1]: int(line.split("\t")[0]) for line in (dst / "labels.txt").read_text().splitlines()}
    assert all(r["label"] == labels[r["synset"]] and r["filename"].split("/")[1] == r["synset"] for r in rows)
    public = json.loads((dst / "manifest.json").read_text())
    assert public["efficiency"] == manifest["efficiency"] and public["tasks"] == manifest["tasks"]


def test_resume_after_fixing_an_input_redoes_only_its_packed_task(spark, tmp_path):
    src = _tree(tmp_path / "raw", SMALL_CLASSES)
    broken = src / "train" / "c07" / "c07_01.jpg"
    broken.write_bytes(b"not a jpeg")
    dst = tmp_path / "ds"
    with pytest.raises(PartitionError, match="max_reject_fraction"):
        run_partition(spark, _cfg(src, dst))
    staged = dst / "_staging" / "train"
    mtimes = {p.parent.name: p.stat().st_mtime_ns for p in staged.rglob("part-*.parquet")}
    assert len(mtimes) == 24
    broken.write_bytes(_jpeg(random.Random(7), size=(24, 16)))  # the fix: a good image, another shape
    manifest = run_partition(spark, _cfg(src, dst, resume=True))
    assert manifest["input_changes"]["changed"] == 1
    assert manifest["resumed_tasks"] == 4 and manifest["tasks"] == {"planned": 5, "run": 1}
    assert manifest["totals"]["written"] == 72 and manifest["totals"]["rejected"] == 0
    redone = {p.parent.name for p in (dst / "train").rglob("part-*.parquet")
              if p.stat().st_mtime_ns != mtimes[p.parent.name]}
    assert redone == {f"synset=c{i:02d}" for i in range(5, 10)}, "exactly the classes packed with c07"
    row = next(r for r in pq.read_table(dst / "train").to_pylist() if r["filename"] == "train/c07/c07_01.jpg")
    assert (row["width"], row["height"]) == (24, 16)


# --------------------------------------------------------------------------------------------------
# TFRecord shard counts


def test_tfrecord_shard_counts_come_from_the_data():
    assert shard_count("train", 1_281_167, 40 << 30, 20_000) == 1024  # ImageNet: imagenet_to_gcs's counts
    assert shard_count("validation", 50_000, 2 << 30, 800) == 128
    assert shard_count("train", 51, 2 << 20, 3) == 1  # 51 images: one shard, not 1,024 Spark tasks
    assert shard_count("train", 5_000, 200 << 20, 80) == 4  # ~1,250 records per shard
    assert shard_count("train", 2_000, 1 << 30, 40) == 8  # large images: at most 128 MiB a shard
    assert shard_count("train", 5_000, 200 << 20, 2) == 2  # never more shards than row groups (empty files)
    assert shard_count("validation", 0, 0, 0) == 1
    assert shard_count("train", 51, 2 << 20, 3, override=7) == 7  # tfrecord_train_shards as an override


def test_tfrecord_shard_override_is_validated():
    from imagenet_spark.config import ConfigError

    assert resolve(PartitionConfig, explicit=dict(input="x", output="y")).tfrecord_train_shards is None
    with pytest.raises(ConfigError, match="tfrecord_validation_shards=0: must be at least 1"):
        resolve(PartitionConfig, explicit=dict(input="x", output="y", tfrecord_validation_shards=0))


def test_tfrecord_of_a_small_dataset_is_one_shard_per_split(spark, tmp_path):
    src = _tree(tmp_path / "raw", {f"c{i}": 4 for i in range(5)})
    dst = tmp_path / "ds"
    manifest = run_partition(spark, _cfg(src, dst, tfrecord=True))
    assert sorted(p.name for p in (dst / "tfrecord").iterdir()) == ["train-00000-of-00001"]
    assert manifest["tfrecord"]["shards"] == {"train": 1} and manifest["tfrecord"]["records"] == {"train": 20}
