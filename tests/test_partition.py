"""The partition job end to end on real Spark local[2] and real Petastorm, over every input layout."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from imagenet_spark.config import ConfigError, PartitionConfig, resolve
from imagenet_spark.data import images
from imagenet_spark.data.fake import FakeSpec, write_folders, write_ilsvrc, write_tar
from imagenet_spark.data.layouts import LayoutError
from imagenet_spark.data.schema import read_row_group_rows
from imagenet_spark.data.tasks import PartitionError
from imagenet_spark.jobs.partition import run_partition
from imagenet_spark.spark.jobs import SparkJobError

SMALL = dict(num_classes=4, train_per_class=10, val_per_class=3, image_size=(64, 48))


def _cfg(src, dst, **kw) -> PartitionConfig:
    base = dict(input=str(src), output=str(dst), resize_short=32, images_per_task=8, rows_per_row_group=4,
                max_reject_fraction=0.2)
    base.update(kw)
    return resolve(PartitionConfig, explicit=base)


def _rows(dst: Path, split: str) -> list[dict]:
    return pq.read_table(dst / split).to_pylist()


def _all_inputs(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "synset_labels.txt"}


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw") / "ilsvrc"
    summary = write_ilsvrc(root, FakeSpec(**SMALL, quirks=True, broken=True))
    return root, summary


@pytest.fixture(scope="module")
def ilsvrc_dataset(spark, ilsvrc, tmp_path_factory):
    root, summary = ilsvrc
    dst = tmp_path_factory.mktemp("out") / "ds"
    manifest = run_partition(spark, _cfg(root, dst))
    return dst, manifest


def test_every_input_is_written_or_rejected(ilsvrc, ilsvrc_dataset):
    root, summary = ilsvrc
    dst, manifest = ilsvrc_dataset
    written = [r["filename"] for s in ("train", "validation") for r in _rows(dst, s)]
    assert len(written) == len(set(written)), "duplicate rows"
    rejected = {r["filename"] for r in manifest["rejects"]}
    skipped = {s["filename"] for s in manifest["skipped"]}
    assert set(written) | rejected | skipped == _all_inputs(root)
    assert not (set(written) & rejected)
    assert manifest["totals"]["inputs"] == len(written) + len(rejected)
    # the rejects table holds the bytes of every rejected input
    table = pq.read_table(dst / "rejects").to_pylist()
    assert {r["filename"] for r in table} == rejected
    for r in table:
        assert len(r["data"]) == (root / r["filename"]).stat().st_size


def test_rejects_and_conversions_are_named(ilsvrc, ilsvrc_dataset):
    _, summary = ilsvrc
    _, manifest = ilsvrc_dataset
    got = {r["filename"]: r["reason"] for r in manifest["rejects"]}
    assert got == summary.broken
    for path, kind in summary.quirks.items():
        assert path in manifest["conversions"][kind], (path, kind)
    assert manifest["counts"] == summary.counts


def test_labels_are_sorted_synset_indices_shared_by_splits(ilsvrc, ilsvrc_dataset):
    _, summary = ilsvrc
    dst, manifest = ilsvrc_dataset
    lines = (dst / "labels.txt").read_text().splitlines()
    assert [line.split("\t")[1] for line in lines] == sorted(summary.classes)
    assert lines[0] == "0\tn01440764\ttench, Tinca tinca"
    index = {line.split("\t")[1]: int(line.split("\t")[0]) for line in lines}
    for split in ("train", "validation"):
        for row in _rows(dst, split):
            assert row["label"] == index[row["synset"]]
            assert row["filename"].startswith(split)
            assert min(row["height"], row["width"]) <= 32
            h, w = images.probe_jpeg(row["image"])
            assert (h, w) == (row["height"], row["width"])
    # validation relabelled from synset_labels.txt
    labels = (Path(ilsvrc[0]) / "synset_labels.txt").read_text().split()
    files = sorted(p.name for p in (Path(ilsvrc[0]) / "validation").iterdir())
    by_file = dict(zip(files, labels))
    for row in _rows(dst, "validation"):
        assert row["synset"] == by_file[row["filename"].split("/")[-1]]


def test_row_groups_follow_the_documented_rule(ilsvrc_dataset):
    dst, manifest = ilsvrc_dataset
    for split in ("train", "validation"):
        sizes = []
        for f in sorted((dst / split).rglob("part-*.parquet")):
            meta = pq.ParquetFile(f).metadata
            sizes += [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            # all row groups of a file have rows_per_row_group rows except possibly the last
            assert all(meta.row_group(i).num_rows == 4 for i in range(meta.num_row_groups - 1))
        assert len(sizes) == manifest["row_groups"][split]
        assert sum(sizes) == manifest["split_sizes"][split]
        # the sizes the trainer plans equal steps from, stored in _common_metadata, are the real ones
        assert read_row_group_rows(str(dst / split)) == sizes


# petastorm 0.13.1's thread pool can end a num_epochs=1 read early (even at 0 rows) when the consumer thread
# is preempted between its "all workers done" and "ventilator completed" checks (seen under CPU load). So
# the stock readers run with num_epochs=None and one worker, and we take exactly the expected rows: that
# proves every row is readable, exactly once, in order, by the stock API.
STOCK_READERS = textwrap.dedent("""
    import itertools, json, sys
    from petastorm import make_reader, make_batch_reader
    import pyarrow.parquet as pq
    url, n_train, n_val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = {}
    with make_reader(url + '/train', num_epochs=None, workers_count=1, shuffle_row_groups=False) as r:
        rows = list(itertools.islice(r, n_train))
    out['make_reader'] = len({row.filename for row in rows})
    out['fields'] = sorted(rows[0]._fields)
    out['image_is_bytes'] = isinstance(rows[0].image, bytes)
    with make_batch_reader(url + '/validation', num_epochs=None, workers_count=1, shuffle_row_groups=False) as r:
        names = set()
        for batch in r:
            names.update(batch.filename)
            if len(names) >= n_val:
                break
        out['make_batch_reader'] = len(names)
    out['pyarrow'] = pq.read_table(url[len('file://'):] + '/train').num_rows
    out['imported_imagenet_spark'] = 'imagenet_spark' in sys.modules
    print(json.dumps(out))
""")


@pytest.mark.legacy_only
def test_stock_readers_in_a_separate_process(ilsvrc_dataset, spark, tmp_path):
    dst, manifest = ilsvrc_dataset
    script = tmp_path / "read.py"
    script.write_text(STOCK_READERS)
    sizes = manifest["split_sizes"]
    proc = subprocess.run([sys.executable, str(script), f"file://{dst}", str(sizes["train"]),
                           str(sizes["validation"])], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["make_reader"] == manifest["split_sizes"]["train"] == out["pyarrow"]
    assert out["make_batch_reader"] == manifest["split_sizes"]["validation"]
    assert out["fields"] == ["filename", "height", "image", "label", "synset", "width"]
    assert out["image_is_bytes"] and not out["imported_imagenet_spark"]
    df = spark.read.parquet(str(dst / "train"))
    assert df.count() == manifest["split_sizes"]["train"]
    assert set(df.columns) >= {"image", "label", "synset", "filename", "height", "width"}


def test_tar_layout_reads_archives_in_place(spark, tmp_path, ilsvrc_dataset):
    raw = tmp_path / "tars"
    summary = write_tar(raw, FakeSpec(**SMALL))
    assert {p.name for p in raw.iterdir()} >= {"ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"}
    manifest = run_partition(spark, _cfg(raw, tmp_path / "ds"))
    assert manifest["layout"] == "tar"
    assert manifest["counts"] == summary.counts
    assert manifest["totals"]["rejected"] == 0
    rows = _rows(tmp_path / "ds", "train")
    assert rows[0]["filename"].startswith("ILSVRC2012_img_train.tar/n0")
    assert not any(p.suffix == ".JPEG" for p in raw.rglob("*")), "nothing was extracted"


def test_folder_of_per_class_tars(spark, tmp_path):
    raw = tmp_path / "tars"
    summary = write_tar(raw, FakeSpec(**SMALL))
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    shutil.unpack_archive(raw / "ILSVRC2012_img_train.tar", unpacked, format="tar")
    manifest = run_partition(spark, _cfg(unpacked, tmp_path / "ds"))
    assert manifest["layout"] == "tar" and manifest["counts"] == {"train": summary.counts["train"]}


def test_class_folders_with_any_names(spark, tmp_path):
    raw = tmp_path / "flowers"
    summary = write_folders(raw, FakeSpec(**SMALL))
    manifest = run_partition(spark, _cfg(raw, tmp_path / "ds"))
    assert manifest["layout"] == "folders" and manifest["counts"] == summary.counts
    names = [line.split("\t") for line in (tmp_path / "ds" / "labels.txt").read_text().splitlines()]
    assert [n[1] for n in names] == sorted(summary.classes) and all(n[1] == n[2] for n in names)


def test_csv_lists_with_a_labels_file_fixing_order(spark, tmp_path):
    raw = tmp_path / "flat"
    summary = write_folders(raw, FakeSpec(**SMALL), split_dirs=False)
    order = list(reversed(summary.classes))
    (raw / "labels.txt").write_text("\n".join(order) + "\n")
    files = sorted(p.relative_to(raw) for p in raw.rglob("*.jpg"))
    with open(raw / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for p in files[::2]:
            w.writerow([str(p), p.parts[0]])
        w.writerow(["missing/file.jpg", order[0]])
    with open(raw / "validation.csv", "w", newline="") as f:
        csv.writer(f).writerows([str(p), p.parts[0]] for p in files[1::2])
    manifest = run_partition(spark, _cfg(raw, tmp_path / "ds"))
    assert manifest["layout"] == "csv"
    assert manifest["rejects_by_reason"] == {"read_error": 1}
    lines = (tmp_path / "ds" / "labels.txt").read_text().splitlines()
    assert [line.split("\t")[1] for line in lines] == order
    assert manifest["totals"]["written"] == len(files)


def test_csv_conflicting_labels_fail_fast(spark, tmp_path):
    raw = tmp_path / "c"
    raw.mkdir()
    (raw / "train.csv").write_text("a.jpg,cat\nb.jpg,dog\na.jpg,dog\n")
    with pytest.raises(LayoutError, match=r"train.csv:3: 'a.jpg' is labelled 'dog' here but 'cat' on line 1"):
        run_partition(spark, _cfg(raw, tmp_path / "ds"))


def test_kaggle_layout(spark, tmp_path):
    src = tmp_path / "ilsvrc"
    summary = write_ilsvrc(src, FakeSpec(**SMALL))
    root = tmp_path / "kaggle"
    base = root / "ILSVRC" / "Data" / "CLS-LOC"
    base.mkdir(parents=True)
    shutil.copytree(src / "train", base / "train")
    shutil.copytree(src / "validation", base / "val")
    labels = (src / "synset_labels.txt").read_text().split()
    files = sorted(p.name for p in (base / "val").iterdir())
    with open(root / "LOC_val_solution.csv", "w") as f:
        f.write("ImageId,PredictionString\n")
        for name, wnid in zip(files, labels):
            f.write(f"{name.rsplit('.', 1)[0]},{wnid} 1 2 30 40 {wnid} 5 6 20 20 \n")
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{c} class {c} name\n" for c in summary.classes))
    manifest = run_partition(spark, _cfg(root, tmp_path / "ds"))
    assert manifest["layout"] == "kaggle" and manifest["counts"] == summary.counts
    assert (tmp_path / "ds" / "labels.txt").read_text().splitlines()[0].endswith("class n01440764 name")


def test_labels_count_mismatch_quarantines_validation_and_fails(spark, tmp_path):
    raw = tmp_path / "raw"
    write_ilsvrc(raw, FakeSpec(**SMALL))
    labels = (raw / "synset_labels.txt").read_text().splitlines()
    (raw / "synset_labels.txt").write_text("\n".join(labels[:-1]) + "\n")
    dst = tmp_path / "ds"
    with pytest.raises(PartitionError, match=r"12 of 52 inputs rejected .* max_reject_fraction=0.2") as err:
        run_partition(spark, _cfg(raw, dst))
    assert "labels_count_mismatch" in str(err.value)
    assert not (dst / "manifest.json").exists() and not (dst / "train").exists()
    staged = json.loads((dst / "_staging" / "manifest.json").read_text())
    assert "11 labels for 12 validation files" in staged["rejects"][-1]["detail"]
    # with a higher threshold the same input publishes train, and every validation file is still accounted for
    manifest = run_partition(spark, _cfg(raw, dst, max_reject_fraction=0.5, resume=True))
    assert manifest["totals"] == {"listed": 52, "inputs": 52, "written": 40, "rejected": 12, "skipped": 0}


def test_injected_executor_failure_is_retried_without_duplicates(spark, tmp_path):
    raw = tmp_path / "raw"
    summary = write_ilsvrc(raw, FakeSpec(**SMALL))
    dst = tmp_path / "ds"
    manifest = run_partition(spark, _cfg(raw, dst, inject_failure="train/n01443537"))
    assert manifest["counts"] == summary.counts
    names = [r["filename"] for r in _rows(dst, "train")]
    assert len(names) == len(set(names)) == sum(summary.counts["train"].values())
    assert not [p for p in dst.rglob("*") if p.name.endswith(".tmp")]


def test_crash_publishes_nothing_then_resume_skips_committed_tasks(spark, tmp_path):
    raw = tmp_path / "raw"
    summary = write_ilsvrc(raw, FakeSpec(**SMALL))
    dst = tmp_path / "ds"
    with pytest.raises(SparkJobError, match="InjectedFailure"):
        run_partition(spark, _cfg(raw, dst, inject_failure="always:train/n01484850"))
    assert not (dst / "manifest.json").exists() and not (dst / "train").exists()
    committed = {p.name for p in (dst / "_staging" / "_tasks").iterdir()}
    assert committed and not any("n01484850" in n for n in committed)
    # the same command again refuses to silently drop the interrupted run
    with pytest.raises(ConfigError, match="interrupted run.*--resume"):
        run_partition(spark, _cfg(raw, dst))
    mtimes = {p: p.stat().st_mtime_ns for p in (dst / "_staging" / "train").rglob("part-*.parquet")}
    manifest = run_partition(spark, _cfg(raw, dst, resume=True))
    assert manifest["counts"] == summary.counts
    for p, mtime in mtimes.items():  # committed tasks were not redone
        new = dst / "train" / p.relative_to(dst / "_staging" / "train")
        assert new.stat().st_mtime_ns == mtime
    names = [r["filename"] for r in _rows(dst, "train")]
    assert len(names) == len(set(names)) == sum(summary.counts["train"].values())
    assert not (dst / "_staging").exists()


def test_driver_stopped_mid_publish_is_not_finished_and_resume_completes_it(spark, tmp_path):
    """The driver dies after moving train/ into place (fault injection at the same point a kill would hit):
    no manifest, so neither the trainer nor the summary take it as a dataset; --resume moves train/ back into
    staging and publishes everything, with no task redone and no duplicate row."""
    from imagenet_spark.data.partition import InjectedFailure
    from imagenet_spark.data.schema import DatasetError
    from imagenet_spark.train.planning import make_run_plan
    from imagenet_spark.train_config import TrainConfig

    raw = tmp_path / "raw"
    summary = write_ilsvrc(raw, FakeSpec(**SMALL))
    dst = tmp_path / "ds"
    with pytest.raises(InjectedFailure, match="after moving train"):
        run_partition(spark, _cfg(raw, dst, inject_failure="publish"))
    assert (dst / "train").is_dir() and not (dst / "manifest.json").exists() and (dst / "_staging").is_dir()
    with pytest.raises(DatasetError, match="no manifest.json.*interrupted partition run.*--resume"):
        make_run_plan(resolve(TrainConfig, explicit=dict(data=str(dst), model_dir=str(tmp_path / "m"),
                                                         model="resnet_tiny")))
    mtimes = {p.relative_to(dst): p.stat().st_mtime_ns for p in (dst / "train").rglob("part-*.parquet")}
    manifest = run_partition(spark, _cfg(raw, dst, resume=True))
    assert manifest["counts"] == summary.counts and manifest["resumed_tasks"] > 0
    assert {p.relative_to(dst): p.stat().st_mtime_ns for p in (dst / "train").rglob("part-*.parquet")} == mtimes
    for split in ("train", "validation"):
        names = [r["filename"] for r in _rows(dst, split)]
        assert len(names) == len(set(names)) == sum(summary.counts[split].values())
    assert not (dst / "_staging").exists()


def test_refuses_to_clobber_without_overwrite(spark, ilsvrc, tmp_path):
    root, _ = ilsvrc
    dst = tmp_path / "ds"
    run_partition(spark, _cfg(root, dst))
    with pytest.raises(ConfigError, match="already holds a finished dataset.*--overwrite"):
        run_partition(spark, _cfg(root, dst))
    manifest = run_partition(spark, _cfg(root, dst, overwrite=True, resize_short=24))
    assert max(min(r["height"], r["width"]) for r in _rows(dst, "train")) <= 24
    assert manifest["config"]["resize_short"] == 24


def test_context_session_writes_what_a_session_writes(spark, ilsvrc, ilsvrc_dataset, tmp_path):
    """The partition command runs on a SparkContext alone (ContextSession: no Spark SQL session to create); the
    library reads it like a SparkSession, and the dataset is the same, row for row and byte for byte."""
    from imagenet_spark.spark.session import ContextSession

    root, _ = ilsvrc
    dst = tmp_path / "ds"
    manifest = run_partition(ContextSession(spark.sparkContext), _cfg(root, dst))
    reference, expected = ilsvrc_dataset
    assert manifest["counts"] == expected["counts"] and manifest["totals"] == expected["totals"]
    for split in ("train", "validation"):
        ours = sorted((r["filename"], r["image"]) for r in _rows(dst, split))
        assert ours and ours == sorted((r["filename"], r["image"]) for r in _rows(reference, split))


def test_dry_run_writes_nothing(spark, ilsvrc, tmp_path):
    root, summary = ilsvrc
    dst = tmp_path / "ds"
    report = run_partition(spark, _cfg(root, dst, dry_run=True))
    assert not dst.exists()
    assert report["counts"]["train"]["n01440764"] >= summary.counts["train"]["n01440764"]
    assert 0 < report["estimated_output_bytes"] < report["input_bytes"] * 2


def test_missing_and_empty_inputs_fail_fast(spark, tmp_path):
    with pytest.raises(LayoutError, match=r"input=.*nope.*no such file or directory"):
        run_partition(spark, _cfg(tmp_path / "nope", tmp_path / "ds"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="empty folder"):
        run_partition(spark, _cfg(tmp_path / "empty", tmp_path / "ds"))
    (tmp_path / "junk" / "cls").mkdir(parents=True)
    (tmp_path / "junk" / "cls" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(LayoutError, match="no image files found"):
        run_partition(spark, _cfg(tmp_path / "junk", tmp_path / "ds"))


@pytest.mark.slow
def test_spark_submit_job_entry_point(tmp_path, ilsvrc):
    """The job exactly as a user runs it: spark-submit jobs/partition.py with a preset and overrides."""
    root, summary = ilsvrc
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]", str(repo / "jobs/partition.py"),
           "--config", str(repo / "conf/partition/smoke.yaml"), "--input", str(root), "--output",
           str(tmp_path / "ds"), "--set", "max_reject_fraction=0.2", "--set", "resize_short=40"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from imagenet_spark.jsonio import loads_strict

    manifest = loads_strict((tmp_path / "ds" / "manifest.json").read_text())  # strict JSON, as jq or Spark read it
    assert manifest["counts"] == summary.counts
    assert manifest["config"]["resize_short"] == 40 and manifest["config"]["rows_per_row_group"] == 8
    # a bad setting: one line naming the setting, the value and the fix; exit code 2
    bad = subprocess.run(cmd[:-4] + ["--set", "quality=150"], capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2
    assert "quality=150: JPEG quality must be between 1 and 100" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_tfrecord_shards_in_the_cloud_tpu_format(spark, tmp_path):
    """--tfrecord: shards named like imagenet_to_gcs's, same feature keys, 1-based labels, every image once."""
    import tensorflow as tf

    raw = tmp_path / "raw"
    summary = write_ilsvrc(raw, FakeSpec(**SMALL))
    dst = tmp_path / "ds"
    manifest = run_partition(spark, _cfg(raw, dst, tfrecord=True, tfrecord_train_shards=4,
                                         tfrecord_validation_shards=2))
    names = sorted(p.name for p in (dst / "tfrecord").iterdir())
    assert names == [f"train-0000{i}-of-00004" for i in range(4)] + [f"validation-0000{i}-of-00002" for i in range(2)]
    feature = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        "image/class/synset": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/format": tf.io.FixedLenFeature([], tf.string),
        "image/filename": tf.io.FixedLenFeature([], tf.string),
    }
    index = {line.split("\t")[1]: int(line.split("\t")[0]) for line in (dst / "labels.txt").read_text().splitlines()}
    seen = []
    for path in sorted((dst / "tfrecord").glob("train-*")):
        synsets = set()
        for raw_record in tf.data.TFRecordDataset(str(path)):
            ex = tf.io.parse_single_example(raw_record, feature)
            synset = ex["image/class/synset"].numpy().decode()
            synsets.add(synset)
            assert ex["image/class/label"].numpy() == index[synset] + 1
            img = tf.io.decode_jpeg(ex["image/encoded"])
            assert img.shape[:2] == (ex["image/height"].numpy(), ex["image/width"].numpy())
            seen.append(ex["image/filename"].numpy().decode())
        assert len(synsets) >= 2, "shards are class-mixed"
    assert len(seen) == len(set(seen)) == sum(summary.counts["train"].values())
    assert manifest["tfrecord"]["records"] == manifest["split_sizes"]
