"""The partition job deletes and overwrites only what it wrote, one job per output, and accounts for every
input across resumes (issue #14). Real Spark local[2], real files, a real driver process killed with SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagenet_spark import ownership
from imagenet_spark.config import ConfigError, PartitionConfig, resolve
from imagenet_spark.data import layouts
from imagenet_spark.data.fake import FakeSpec, write_ilsvrc
from imagenet_spark.data.manifest import build_manifest
from imagenet_spark.data.tasks import PartitionError, PartitionTask, TaskResult, plan_tasks
from imagenet_spark.jobs.partition import run_partition
from imagenet_spark.spark.jobs import SparkJobError

SMALL = dict(num_classes=4, train_per_class=10, val_per_class=3, image_size=(64, 48))


def _cfg(src: Path, dst: Path, **kw) -> PartitionConfig:
    base = dict(input=str(src), output=str(dst), resize_short=32, images_per_task=8, rows_per_row_group=4,
                max_reject_fraction=0.2)
    base.update(kw)
    return resolve(PartitionConfig, explicit=base)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its bytes (directories too, as empty markers)."""
    return {str(p.relative_to(root)) + ("/" if p.is_dir() else ""): (b"" if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def _written(dst: Path) -> list[str]:
    return [r["filename"] for s in ("train", "validation") if (dst / s).exists()
            for r in pq.read_table(dst / s, columns=["filename"]).to_pylist()]


def _assert_accounted(src: Path, dst: Path, manifest: dict) -> None:
    """Every input file is written, rejected or skipped, once; the rejects table matches the manifest."""
    written = _written(dst)
    rejected = [r["filename"] for r in manifest["rejects"]]
    table = [r["filename"] for r in pq.read_table(dst / "rejects", columns=["filename"]).to_pylist()] \
        if (dst / "rejects").exists() else []
    assert len(written) == len(set(written)), "an image written twice"
    assert sorted(table) == sorted(rejected) and len(rejected) == len(set(rejected)), "a reject listed twice"
    assert not set(written) & set(rejected), f"written and rejected: {sorted(set(written) & set(rejected))}"
    inputs = {str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and p.name != "synset_labels.txt"}
    skipped = {s["filename"] for s in manifest["skipped"]}
    assert set(written) | set(rejected) | skipped == inputs and not (set(written) | set(rejected)) & skipped
    totals = manifest["totals"]
    assert totals["listed"] == totals["written"] + totals["rejected"] + totals["skipped"] == len(inputs)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety") / "raw"
    write_ilsvrc(root, FakeSpec(**SMALL))
    return root


# --------------------------------------------------------------------------------------------------
# Ownership: outputs never overlap inputs; only our own directories are replaced


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_output_overlapping_the_input_is_refused_untouched(spark, raw, where):
    output = {"same": raw, "inside": raw / "parquet", "contains": raw.parent}[where]
    before = _snapshot(raw.parent)
    relation = {"same": "is the same directory as", "inside": "lies inside", "contains": "contains"}[where]
    with pytest.raises(ConfigError, match=relation) as info:
        run_partition(spark, _cfg(raw, output, overwrite=True))
    assert info.value.setting == "output" and "Fix:" in str(info.value)
    assert _snapshot(raw.parent) == before


def _command(*argv: str) -> subprocess.CompletedProcess:
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    return subprocess.run([sys.executable, str(repo / "jobs/partition.py"), "--master", "local[1]", *argv],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_the_command_refuses_overlapping_paths_and_dry_runs_before_spark_starts(raw, tmp_path):
    """As a user runs it: a wrong path fails in the time Python takes to start, and a dry run needs no Spark
    (the JVM's start-up lines never appear); the dry run still reports the listing."""
    before = _snapshot(raw.parent)
    refused = _command("--input", str(raw), "--output", str(raw / "parquet"))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "output=" in refused.stderr and "Fix:" in refused.stderr
    dry = _command("--input", str(raw), "--output", str(tmp_path / "ds"), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert '"layout": "ilsvrc"' in dry.stderr and not (tmp_path / "ds").exists()
    for proc in (refused, dry):
        assert "log4j" not in proc.stderr and "SparkContext" not in proc.stderr, "Spark was started"
    assert _snapshot(raw.parent) == before


def test_a_listing_error_in_the_background_thread_reaches_the_command(tmp_path):
    """The command lists in a thread while Spark starts; the listing's own refusal (here a class name that cannot
    name a partition directory) is raised where the command joins it, as it is."""
    from imagenet_spark.jobs.partition import checked_paths, list_in_background

    src = tmp_path / "in"
    for name in ("good", "bad:name"):
        (src / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(src / name / "a.png")
    join = list_in_background(checked_paths(_cfg(src, tmp_path / "ds", layout="folders")))
    with pytest.raises(ConfigError, match="bad:name"):
        join()
    assert not (tmp_path / "ds").exists()


def test_output_containing_a_labels_file_is_refused(spark, raw, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "fixed_labels.txt").write_text((raw / "synset_labels.txt").read_text())
    with pytest.raises(ConfigError, match="contains val_labels="):
        run_partition(spark, _cfg(raw, out, val_labels=str(out / "fixed_labels.txt")))
    assert [p.name for p in out.iterdir()] == ["fixed_labels.txt"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_this_job_did_not_make_is_never_touched(spark, raw, tmp_path, overwrite):
    """A user's folder holding train/, labels.txt and rejects/ (the names a publish replaces) is refused
    before anything is listed, with --overwrite too; every file stays byte-identical, nothing is added."""
    user = tmp_path / "mine"
    (user / "train" / "cats").mkdir(parents=True)
    (user / "train" / "cats" / "tom.jpg").write_bytes(b"\xff\xd8 my cat")
    (user / "rejects").mkdir()
    (user / "rejects" / "notes.md").write_text("keep")
    (user / "labels.txt").write_text("cats\n")
    before = _snapshot(user)
    with pytest.raises(ConfigError, match=r"not empty .* was not made by this job.*--overwrite or not") as info:
        run_partition(spark, _cfg(raw, user, overwrite=overwrite))
    assert str(user) in str(info.value) and "Fix:" in str(info.value)
    assert _snapshot(user) == before


def test_dataset_from_before_the_marker_is_recognised_and_replaced(spark, raw, tmp_path):
    dst = tmp_path / "ds"
    run_partition(spark, _cfg(raw, dst))
    assert json.loads((dst / ownership.MARKER).read_text())["kind"] == "dataset"
    (dst / ownership.MARKER).unlink()  # as an older version left it: recognised by its manifest's format
    (dst / "README.user").write_text("mine")
    with pytest.raises(ConfigError, match="already holds a finished dataset"):
        run_partition(spark, _cfg(raw, dst))
    manifest = run_partition(spark, _cfg(raw, dst, overwrite=True, resize_short=24))
    assert manifest["config"]["resize_short"] == 24 and (dst / ownership.MARKER).exists()
    assert (dst / "README.user").read_text() == "mine", "a file the job did not write is left alone"
    assert not (dst / ownership.LEASE).exists()


def test_dry_run_takes_no_lease_and_writes_nothing(spark, raw, tmp_path):
    dst = tmp_path / "ds"
    with ownership.Lease("output", str(dst), "someone else's job"):
        before = _snapshot(dst)
        report = run_partition(spark, _cfg(raw, dst, dry_run=True))
        assert report["counts"]["train"] and _snapshot(dst) == before


# --------------------------------------------------------------------------------------------------
# One job at a time; a killed driver's lease is taken over

VICTIM = textwrap.dedent("""
    import json, logging, sys
    logging.basicConfig(level=logging.INFO)
    from imagenet_spark.config import PartitionConfig, resolve
    from imagenet_spark.jobs.partition import run_partition
    from imagenet_spark.spark.session import build_session
    # One slot and a fresh Python worker per task: slow enough to be caught mid-run.
    spark = build_session("victim", master="local[1]", conf={"spark.ui.enabled": "false",
                                                             "spark.python.worker.reuse": "false"})
    run_partition(spark, resolve(PartitionConfig, explicit=json.loads(sys.argv[1])))
""")


def _wait_for(what: str, check, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_job_refused_then_killed_drivers_lease_taken_over(spark, tmp_path, caplog):
    """Job A runs in its own process: job B on the same output is refused naming A; A's whole process group
    (driver, JVM, Python workers) is SIGKILLed mid-run; job C --resume takes the stale lease over, keeps
    A's committed tasks and publishes a complete dataset."""
    src = tmp_path / "raw"
    write_ilsvrc(src, FakeSpec(num_classes=4, train_per_class=24, val_per_class=3, image_size=(64, 48)))
    dst = tmp_path / "ds"
    settings = dict(input=str(src), output=str(dst), resize_short=32, images_per_task=4, rows_per_row_group=2,
                    max_reject_fraction=0.2)
    script = tmp_path / "victim.py"
    script.write_text(VICTIM)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(settings)], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for("A holds the lease", lambda: (dst / ownership.LEASE).exists(), proc)
        holder = rf"in use by imagenet-spark partition .* \(pid {proc.pid}\)"
        with pytest.raises(ownership.LeaseHeldError, match=holder):
            run_partition(spark, _cfg(src, dst, images_per_task=4, rows_per_row_group=2))
        tasks_dir = dst / "_staging" / "_tasks"
        _wait_for("A commits a task", lambda: tasks_dir.exists() and any(tasks_dir.glob("*.json")), proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (dst / "manifest.json").exists(), "A finished before the kill: the test proves nothing"
    assert json.loads((dst / ownership.LEASE).read_text())["pid"] == proc.pid
    committed = len(list(tasks_dir.glob("*.json")))
    with caplog.at_level(logging.WARNING, logger="imagenet_spark.ownership"):
        manifest = run_partition(spark, _cfg(src, dst, images_per_task=4, rows_per_row_group=2, resume=True))
    assert f"pid {proc.pid} no longer runs" in caplog.text
    assert manifest["resumed_tasks"] >= committed > 0
    _assert_accounted(src, dst, manifest)
    assert not (dst / ownership.LEASE).exists() and not (dst / "_staging").exists()


# --------------------------------------------------------------------------------------------------
# Resume: the input listed again, every input accounted for


def test_resume_after_files_added_removed_and_changed(spark, tmp_path):
    src = tmp_path / "raw"
    write_ilsvrc(src, FakeSpec(**SMALL))
    dst = tmp_path / "ds"
    with pytest.raises(SparkJobError, match="InjectedFailure"):
        run_partition(spark, _cfg(src, dst, inject_failure="always:validation/"))
    classes = sorted(p.name for p in (src / "train").iterdir())
    staged = dst / "_staging" / "train"
    untouched = {p: p.stat().st_mtime_ns for p in (staged / f"synset={classes[3]}").glob("part-*.parquet")}
    assert untouched, "the untouched class was committed before the failure"
    added = src / "train" / classes[0] / "added.JPEG"
    shutil.copy(next((src / "train" / classes[0]).iterdir()), added)
    removed = sorted((src / "train" / classes[1]).iterdir())[0]
    removed.unlink()
    changed = sorted((src / "train" / classes[2]).iterdir())[3]
    Image.new("RGB", (40, 90), (200, 30, 30)).save(changed, format="JPEG")
    manifest = run_partition(spark, _cfg(src, dst, resume=True))
    rel = lambda p: str(p.relative_to(src))  # noqa: E731
    changes = manifest["input_changes"]
    assert (changes["added_first"], changes["removed_first"], changes["changed_first"]) == \
        ([rel(added)], [rel(removed)], [rel(changed)])
    _assert_accounted(src, dst, manifest)
    rows = {r["filename"]: r for r in pq.read_table(dst / "train").to_pylist()}
    assert rel(added) in rows and rel(removed) not in rows
    assert (rows[rel(changed)]["width"], rows[rel(changed)]["height"]) == (32, 72), "the new bytes were used"
    for p, mtime in untouched.items():  # a task whose inputs did not change was not redone
        assert (dst / "train" / p.relative_to(staged)).stat().st_mtime_ns == mtime


@pytest.mark.parametrize("how", ["new_file", "edited_in_place"])
def test_resume_after_fixing_the_labels_file(spark, tmp_path, how):
    """A labels file one line short quarantines every validation file and fails the threshold. Fixed (passed
    as a new val_labels file, or edited in place), --resume redoes the validation tasks only; no file ends up
    both written and rejected (the stale rejects of the old run are gone)."""
    src = tmp_path / "raw"
    summary = write_ilsvrc(src, FakeSpec(**SMALL))
    good = (src / "synset_labels.txt").read_text()
    (src / "synset_labels.txt").write_text("\n".join(good.splitlines()[:-1]) + "\n")
    dst = tmp_path / "ds"
    with pytest.raises(PartitionError, match="12 of 52 inputs rejected"):
        run_partition(spark, _cfg(src, dst))
    train_files = {p: p.stat().st_mtime_ns for p in (dst / "_staging" / "train").rglob("part-*.parquet")}
    if how == "new_file":
        fixed = tmp_path / "fixed_labels.txt"
        fixed.write_text(good)
        manifest = run_partition(spark, _cfg(src, dst, resume=True, val_labels=str(fixed)))
        assert manifest["input_changes"]["labels_changed"] == ["val_labels"]
    else:
        (src / "synset_labels.txt").write_text(good)
        manifest = run_partition(spark, _cfg(src, dst, resume=True))
        assert manifest["input_changes"]["labels_changed"] == ["synset_labels.txt"]
    assert manifest["counts"] == summary.counts and manifest["totals"]["rejected"] == 0
    assert not (dst / "rejects").exists()
    _assert_accounted(src, dst, manifest)
    for p, mtime in train_files.items():
        assert (dst / "train" / p.relative_to(dst / "_staging" / "train")).stat().st_mtime_ns == mtime


def test_resume_after_raising_the_threshold(spark, tmp_path):
    src = tmp_path / "raw"
    write_ilsvrc(src, FakeSpec(**SMALL, broken=True))
    dst = tmp_path / "ds"
    with pytest.raises(PartitionError, match="max_reject_fraction=0.01"):
        run_partition(spark, _cfg(src, dst, max_reject_fraction=0.01))
    committed = len(list((dst / "_staging" / "_tasks").glob("*.json")))
    manifest = run_partition(spark, _cfg(src, dst, max_reject_fraction=0.5, resume=True))
    assert manifest["resumed_tasks"] == committed and manifest["totals"]["rejected"] > 0
    assert manifest["input_changes"] == {"added": 0, "removed": 0, "changed": 0, "labels_changed": []}
    _assert_accounted(src, dst, manifest)


def test_resume_with_changed_output_settings_is_refused(spark, tmp_path):
    src = tmp_path / "raw"
    write_ilsvrc(src, FakeSpec(**SMALL, broken=True))
    dst = tmp_path / "ds"
    with pytest.raises(PartitionError):
        run_partition(spark, _cfg(src, dst, max_reject_fraction=0.01))
    with pytest.raises(ConfigError, match=r"quality=80: differs from the interrupted run being resumed \(90\)"):
        run_partition(spark, _cfg(src, dst, resume=True, quality=80))


# --------------------------------------------------------------------------------------------------
# The manifest's invariant: written + rejected + skipped = listed, name by name


def test_manifest_refuses_a_name_both_written_and_rejected(raw):
    """A stale result (a task no longer planned, still rejecting a file another task writes) is a bug the
    manifest catches, as is a planned task without a result."""
    cfg = _cfg(raw, raw.parent / "unused")
    listing = layouts.discover(str(raw))
    tasks = plan_tasks(listing, cfg.images_per_task)

    def result(task: PartitionTask, **kw) -> TaskResult:
        n = len(task.items())
        base = dict(id=task.id, split=task.split, counts={u.synset: len(u.items) for u in task.units},
                    inputs=n, written=n)
        return TaskResult(**{**base, **kw})

    results = [result(t) for t in tasks]
    manifest = build_manifest(cfg, listing, results, 1.0, tasks=tasks)
    assert manifest.totals.listed == manifest.totals.written == len(listing.items)
    victim = tasks[-1].items()[0].filename
    stale = result(dataclasses.replace(tasks[-1], id="validation/_rejected/00000"), written=0, counts={},
                   rejects=((victim, "labels_count_mismatch", "stale"),))
    with pytest.raises(PartitionError, match=r"1 result\(s\) of tasks not in this run's plan.*accounted for more"):
        build_manifest(cfg, listing, results + [stale], 1.0, tasks=tasks)
    with pytest.raises(PartitionError, match=r"1 planned task\(s\) have no result.*neither written, rejected"):
        build_manifest(cfg, listing, results[1:], 1.0, tasks=tasks)
