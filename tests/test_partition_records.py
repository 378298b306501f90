"""The partition job's records keep their on-disk contracts: resume keys, task results and manifest.json.

Pure (no Spark, no files read): a hand-made listing with fixed URIs and stats, so the keys and the manifest are
the same on every machine. The pinned keys and ``fixtures/manifest_v1.json`` were produced by the dict-based code
before the records existed (commit 5da0e58): a staging dir written by it must resume, and manifest.json readers
must see the same keys, order and values."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from imagenet_spark import jsonio
from imagenet_spark.config import PartitionConfig, from_dict, to_dict
from imagenet_spark.data import layouts
from imagenet_spark.data.manifest import build_manifest, row_group_rows
from imagenet_spark.data.tasks import PartitionTask, TaskResult, plan_tasks

FIXTURES = Path(__file__).parent / "fixtures"


def _listing() -> layouts.Listing:
    items = []
    for split, cls, n in (("train", "a", 3), ("train", "b", 2), ("validation", "a", 1)):
        for i in range(n):
            items.append(layouts.Item(uri=f"file:/data/raw/{split}/{cls}/{cls}_{i}.jpg", split=split, synset=cls,
                                      filename=f"{split}/{cls}/{cls}_{i}.jpg", size=100 + i))
    items.append(layouts.Item(uri="file:/data/raw/validation/x.jpg", split="validation", synset="",
                              filename="validation/x.jpg", size=7, reject="unlabelled", detail="no label"))
    archives = (layouts.Archive(uri="file:/data/raw/train.tar", split="train", synset="c", filename="train.tar/c.tar",
                                size=4096, offset=512),)
    return layouts.Listing(layout="folders", root="file:/data/raw", classes=("a", "b", "c"), names={"a": "Aa"},
                           items=tuple(items), archives=archives, skipped=(("train/.DS_Store", "hidden"),))


def _stats(listing: layouts.Listing) -> dict[str, tuple[int, int]]:
    stats = {i.uri: (i.size, 1700000000000000000 + k) for k, i in enumerate(listing.items)}
    stats["file:/data/raw/train.tar"] = (4608, 1700000000000000099)
    return stats


def test_resume_keys_are_those_of_the_dict_based_plan():
    listing = _listing()
    unpacked = plan_tasks(listing, 2, _stats(listing))
    assert [(t.id, t.key) for t in unpacked] == [
        ("train/a/00000", "98ab5715b7edd3f1909ceca132a009b2"), ("train/a/00001", "56e006ad338e4676cfbc5ba8c688f45b"),
        ("train/b/00000", "887c670887780937c34f317fbb048aa9"),
        ("validation/_rejected/00000", "225daecd54cf72f14b8b8b0b5130a99b"),
        ("validation/a/00000", "fbf44350f48d9ef3ce30c51ec3f1857f"),
        ("train/c/archive", "80e4f40901e64db4b20b9cf6a296215a")]
    packed = plan_tasks(listing, 2, _stats(listing), pack_images=4)
    assert [(t.id, t.key) for t in packed] == [
        ("train/a/00000", "11c6a71e4984c2ea65733f1fb15579b7"), ("train/b/00000", "887c670887780937c34f317fbb048aa9"),
        ("validation/_rejected/00000", "8402263c8ea878054e2e686af77b4d7c"),
        ("train/c/archive", "80e4f40901e64db4b20b9cf6a296215a")]


def test_tasks_and_results_cross_the_boundary_unchanged():
    """to_dict → JSON → from_dict gives the same record (what Spark carries and what _tasks/ stores)."""
    for task in plan_tasks(_listing(), 2, _stats(_listing()), pack_images=4):
        assert from_dict(PartitionTask, json.loads(json.dumps(to_dict(task)))) == task
    result = TaskResult(id="train/a/00000", split="train", counts={"a": 2}, inputs=3, written=2,
                        rejects=(("train/a/a_2.jpg", "decode_error", "truncated"),), conversions={"x": ["cmyk"]},
                        skipped=(("train/a/.x", "hidden"),), files={"synset=a/part-00000.parquet": [2]},
                        input_bytes=10, bytes_written=5, seconds=0.5, peak_rss_mb=99.5)
    assert TaskResult.from_json(json.loads(json.dumps(to_dict(result)))) == result


def test_a_result_written_before_packing_still_reads():
    """Before packing a result named its one ``synset`` instead of ``counts`` (and had no peak RSS)."""
    old = {"id": "train/a/00000", "split": "train", "synset": "a", "inputs": 2, "written": 2, "rejects": [],
           "conversions": {}, "skipped": [], "files": {}, "input_bytes": 1, "bytes_written": 1, "seconds": 0.1}
    result = TaskResult.from_json(old)
    assert result.counts == {"a": 2} and result.peak_rss_mb == 0


def _results(tasks: list[PartitionTask]) -> list[TaskResult]:
    """Every task's result as an executor would report it: files written, listing rejects rejected, and an
    archive with one member written twice, one rejected and one skipped."""
    out = []
    for t in tasks:
        if t.kind == "archive":
            out.append(TaskResult(id=t.id, split="train", counts={"c": 2}, inputs=3, written=2,
                                  rejects=(("train.tar/c.tar/bad.JPEG", "decode_error", "truncated"),),
                                  conversions={"train.tar/c.tar/m1.JPEG": ["cmyk"]},
                                  skipped=(("train.tar/c.tar/l", "link"),), files={"synset=c/part-00000.parquet": [2]},
                                  input_bytes=300, bytes_written=200, seconds=0.5, peak_rss_mb=120.5))
            continue
        names, unit = [i.filename for i in t.items()], t.units[0]
        rejected = unit.synset == "_rejected"
        out.append(TaskResult(
            id=t.id, split=t.split, counts={} if rejected else {unit.synset: len(names)}, inputs=len(names),
            written=0 if rejected else len(names),
            rejects=tuple((n, "unlabelled", "no label") for n in names) if rejected else (),
            files={} if rejected else {f"synset={unit.synset}/part-{unit.index:05d}.parquet": [len(names)]},
            input_bytes=100 * len(names), bytes_written=50 * len(names), seconds=0.25, peak_rss_mb=100.0))
    return out


def test_manifest_json_is_byte_for_byte_the_dict_based_one():
    listing = _listing()
    tasks = plan_tasks(listing, 2, _stats(listing))
    results = _results(tasks)
    cfg = PartitionConfig(input="file:/data/raw", output="file:/data/out", images_per_task=2)
    manifest = dataclasses.replace(
        build_manifest(cfg, listing, results, 2.0, resumed=1, tasks=tasks, slots=2),
        created="X", versions={}, pack_images=4, wall_time_s=3.0, efficiency=0.5,
        input_changes={"added": 0, "removed": 0, "changed": 0, "labels_changed": []},
        tfrecord={"shards": {"train": 1}, "records": {"train": 7}, "seconds": 0.3})
    assert jsonio.dumps(manifest.to_json(), indent=1) == (FIXTURES / "manifest_v1.json").read_text()
    # the row-group sizes publishing needs are their own value, never a key of the file
    assert row_group_rows(results)["train"]["synset=a/part-00001.parquet"] == [1]
    unset = dataclasses.replace(manifest, pack_images=None, input_changes=None, tfrecord=None).to_json()
    assert list(unset)[-1] == "efficiency" and not any(k.startswith("_") for k in unset)
