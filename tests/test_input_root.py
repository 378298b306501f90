"""Issue #14: the partition job reads nothing outside ``--input`` and accounts for every listed name once.

Why these tests exist: a dataset CSV (or a symlink, or a labels file) could name any file an executor can read,
and the rejects table keeps the bytes of what was read, so a hostile input could copy ``/etc/shadow`` into a
published dataset. A symlink loop was followed 40 levels deep (13 files became 532 rows), and a broken link
was in neither the dataset nor the rejects. Real files, real symlinks, real Spark (the ``spark`` fixture).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagenet_spark.config import ConfigError, PartitionConfig, resolve
from imagenet_spark.data import fs, images, layouts
from imagenet_spark.jobs.partition import run_partition

SECRET = b"SECRET-BYTES-0f3e9c1d-never-in-the-output"


def _jpeg(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _cfg(src: Path, dst: Path, **kw) -> PartitionConfig:
    base = dict(input=str(src), output=str(dst), resize_short=32, images_per_task=8, rows_per_row_group=4,
                max_reject_fraction=1.0)
    base.update(kw)
    return resolve(PartitionConfig, explicit=base)


def _outcomes(dst: Path, manifest: dict) -> Counter:
    """(filename, outcome) over the published dataset, the rejects and the skipped list."""
    out: Counter = Counter()
    for split in ("train", "validation"):
        if (dst / split).exists():
            out.update((r["filename"], "written") for r in pq.read_table(dst / split, columns=["filename"]).to_pylist())
    out.update((r["filename"], r["reason"]) for r in manifest["rejects"])
    out.update((s["filename"], "skipped") for s in manifest["skipped"])
    return out


def _assert_once(outcomes: Counter, expected: dict[str, str]) -> None:
    """Every expected name exactly once, with the expected outcome, and nothing else."""
    names = Counter(name for name, _ in outcomes.elements())
    assert {n: c for n, c in names.items() if c > 1} == {}, "a name accounted for twice"
    assert dict(outcomes.keys()) == expected


def _assert_secret_absent(dst: Path) -> None:
    for path in dst.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_bytes(), f"outside bytes copied into {path}"


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A sibling of the input root holding what an executor could read but the job must not."""
    d = tmp_path / "outside"
    (d / "dir").mkdir(parents=True)
    (d / "secret.txt").write_bytes(SECRET)
    (d / "dir" / "secret.jpg").write_bytes(SECRET)
    (d / "real.jpg").write_bytes(_jpeg((200, 10, 10)))
    return d


# --------------------------------------------------------------------------------------------------
# fs: the root check and the walk, no Spark


def test_remote_roots_compare_scheme_authority_and_normalised_path():
    root = fs.InputRoot("s3://bucket/data", "s3://bucket", "/data")
    assert root.resolve("s3a://bucket/data/a/b.jpg") == "s3://bucket/data/a/b.jpg"
    assert root.resolve("s3://bucket/data/a/../b.jpg") == "s3://bucket/data/b.jpg"
    assert root.resolve("s3://bucket/data/../other/b.jpg") is None
    assert root.resolve("s3://bucket/database/b.jpg") is None  # a prefix of the name is not a parent
    assert root.resolve("s3://other-bucket/data/b.jpg") is None
    assert root.resolve("hdfs://bucket/data/b.jpg") is None
    assert root.resolve("/data/b.jpg") is None  # a local path is another filesystem
    hdfs = fs.InputRoot("hdfs://nn:8020/data", "hdfs://nn:8020", "/data")
    assert hdfs.resolve("hdfs://nn:8020/data/x") == "hdfs://nn:8020/data/x"
    assert hdfs.resolve("hdfs://nn:9000/data/x") is None


def test_local_root_compares_real_paths(tmp_path, outside):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"x")
    (root / "link").symlink_to(outside)
    (tmp_path / "alias").symlink_to(root)
    within = fs.InputRoot.of(str(tmp_path / "alias"))  # the root itself may be a symlink
    assert within.path == str(root)
    assert within.resolve(str(root / "a" / "x.jpg")) == str(root / "a" / "x.jpg")
    assert within.resolve(str(tmp_path / "alias" / "a" / "x.jpg")) == str(root / "a" / "x.jpg")
    assert within.resolve(f"file://{root}/a/../a/x.jpg") == str(root / "a" / "x.jpg")
    assert within.resolve(str(root / "a" / ".." / ".." / "outside" / "secret.txt")) is None
    assert within.resolve(str(root / "link" / "secret.txt")) is None
    assert within.resolve(str(root / "a" / "x\0.jpg")) is None
    assert within.resolve("s3://bucket/x.jpg") is None
    assert fs.InputRoot.of(str(root / "a" / "x.jpg")).path == str(root / "a")  # a CSV as input: its folder


def test_walk_follows_links_once_and_refuses_the_rest(tmp_path, outside):
    root = tmp_path / "root"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(b"a")
    (root / "cat" / "up").symlink_to("..")  # a loop: root/cat/up/cat/up/...
    (root / "alias").symlink_to("cat")  # a second name for a directory
    (root / "cat" / "again.jpg").symlink_to("a.jpg")  # a second name for a file: the walk lists it, discover dedupes
    (root / "cat" / "gone.jpg").symlink_to("nothing")
    (root / "cat" / "evil.jpg").symlink_to(outside / "secret.txt")
    (root / "cat" / "hop.jpg").symlink_to("evil.jpg")  # in-root link to an out-of-root link
    (root / "cat" / "selfloop.jpg").symlink_to("selfloop.jpg")
    os.mkfifo(root / "cat" / "pipe.jpg")
    os.symlink(outside, root / "outdir")
    with open(os.path.join(os.fsencode(root / "cat"), b"bad\xff.jpg"), "wb") as f:
        f.write(b"b")
    walk = fs.walk(str(root), fs.InputRoot.of(str(root)))
    assert [(e.relpath, e.uri) for e in walk.files] == [
        ("cat/a.jpg", str(root / "cat" / "a.jpg")), ("cat/again.jpg", str(root / "cat" / "a.jpg"))]
    assert sorted(r for r, _ in walk.outside) == ["cat/evil.jpg", "cat/hop.jpg", "outdir"]
    assert sorted(r for r, _ in walk.broken) == ["cat/gone.jpg", "cat/selfloop.jpg"]
    assert walk.dirs == ["cat"]  # not alias/ (a second name) nor outdir (out of the root)
    assert dict(walk.skipped) == {
        "alias/": "symlink to a directory already listed as cat/",
        "cat/up/": "symlink to a directory already listed as ./",
        "cat/pipe.jpg": "not a regular file (FIFO, socket or device); never opened",
        "cat/bad\\xff.jpg": "file name is not valid UTF-8",
    }


def test_a_linked_directory_is_listed_under_its_first_path_only(tmp_path):
    """A diamond of directory links (each level reachable twice) is walked once per directory, not 2^n times."""
    root = tmp_path / "root"
    level = root / "d0"
    level.mkdir(parents=True)
    for n in range(1, 12):
        nxt = root / f"d{n}"
        nxt.mkdir()
        (nxt / f"f{n}.jpg").write_bytes(b"x")
        (level / "a").symlink_to(nxt)
        (level / "b").symlink_to(nxt)
        level = nxt
    walk = fs.walk(str(root / "d0"), fs.InputRoot.of(str(root)))
    assert [e.relpath for e in walk.files] == sorted("a/" * n + f"f{n}.jpg" for n in range(1, 12))
    assert len(walk.skipped) == 11  # each "b" link: a directory already listed


# --------------------------------------------------------------------------------------------------
# The job: what resolves outside is rejected unread, every name accounted for once


def test_csv_rows_outside_the_root_are_rejected_unread(spark, tmp_path, outside):
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    for n in range(3):
        (root / "img" / f"{n}.jpg").write_bytes(_jpeg((40 * n, 90, 200)))
    (root / "img" / "leak.jpg").symlink_to(outside / "secret.txt")
    (root / "img" / "gone.jpg").symlink_to("nothing")
    os.mkfifo(root / "img" / "pipe.jpg")  # reading it would block the task for ever
    rows = {
        "img/0.jpg": "written", "img/1.jpg": "written", "img/2.jpg": "written",
        "./img/0.jpg": "skipped",  # the same file again: listed once
        str(root / "img" / "1.jpg"): "skipped",  # an absolute path inside the root is fine (a duplicate here)
        str(outside / "secret.txt"): images.OUTSIDE_INPUT_ROOT,
        f"file://{outside}/secret.txt": images.OUTSIDE_INPUT_ROOT,
        "../outside/secret.txt": images.OUTSIDE_INPUT_ROOT,
        "img/../../outside/dir/secret.jpg": images.OUTSIDE_INPUT_ROOT,
        str(outside / "real.jpg"): images.OUTSIDE_INPUT_ROOT,  # a valid image: still not read
        "s3://bucket/secret.jpg": images.OUTSIDE_INPUT_ROOT,
        "hdfs://namenode:8020/secret.jpg": images.OUTSIDE_INPUT_ROOT,
        "img/leak.jpg": images.OUTSIDE_INPUT_ROOT,
        "img/gone.jpg": images.READ_ERROR,
        "img/pipe.jpg": images.READ_ERROR,
        "img/": images.READ_ERROR,
        "img/missing.jpg": images.READ_ERROR,
    }
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([path, "red"] for path in rows)
    dst = tmp_path / "ds"
    manifest = run_partition(spark, _cfg(root, dst))
    _assert_once(_outcomes(dst, manifest), rows)
    rejects = pq.read_table(dst / "rejects").to_pylist()
    assert all(r["data"] == b"" for r in rejects if r["reason"] in (images.OUTSIDE_INPUT_ROOT, images.READ_ERROR))
    assert {s["filename"]: s["why"] for s in manifest["skipped"]} == {
        "./img/0.jpg": "duplicate of img/0.jpg", str(root / "img" / "1.jpg"): "duplicate of img/1.jpg"}
    assert manifest["totals"]["inputs"] == manifest["totals"]["written"] + manifest["totals"]["rejected"]
    _assert_secret_absent(dst)


def test_symlinks_in_a_class_tree(spark, tmp_path, outside):
    """A loop is walked once (no 532 rows from 13 files), out-of-root links are rejected unread, a broken
    link is a read_error reject, a second link to a file is skipped as a duplicate of the real name."""
    root = tmp_path / "root"
    expected: dict[str, str] = {}
    for cls, color in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
        (root / cls).mkdir(parents=True)
        for n in range(3):
            (root / cls / f"{n}.jpg").write_bytes(_jpeg(color))
            expected[f"{cls}/{n}.jpg"] = "written"
    links = {
        "cat/loop": ("..", "skipped"),
        "dog/cats": ("../cat", "skipped"),
        "cat/00.jpg": ("2.jpg", "skipped"),  # sorted before cat/2.jpg, but the real name wins
        "dog/z_copy.jpg": ("../cat/1.jpg", "skipped"),
        "cat/leak.jpg": (str(outside / "secret.txt"), images.OUTSIDE_INPUT_ROOT),
        "cat/rel_leak.jpg": ("../../outside/dir/secret.jpg", images.OUTSIDE_INPUT_ROOT),
        "cat/real_outside.jpg": (str(outside / "real.jpg"), images.OUTSIDE_INPUT_ROOT),
        "bird": (str(outside / "dir"), images.OUTSIDE_INPUT_ROOT),
        "dog/gone.jpg": ("nowhere.jpg", images.READ_ERROR),
    }
    for name, (target, outcome) in links.items():
        os.symlink(target, root / name)
        expected[name + ("/" if outcome == "skipped" and not name.endswith(".jpg") else "")] = outcome
    dst = tmp_path / "ds"
    manifest = run_partition(spark, _cfg(root, dst))
    _assert_once(_outcomes(dst, manifest), expected)
    skipped = {s["filename"]: s["why"] for s in manifest["skipped"]}
    assert skipped["cat/00.jpg"] == "duplicate of cat/2.jpg" and skipped["dog/z_copy.jpg"] == "duplicate of cat/1.jpg"
    assert manifest["counts"] == {"train": {"cat": 3, "dog": 3}}
    detail = {r["filename"]: r["detail"] for r in manifest["rejects"]}
    assert detail["dog/gone.jpg"] == "broken symlink"
    assert all(r["data"] == b"" for r in pq.read_table(dst / "rejects").to_pylist())
    _assert_secret_absent(dst)


def test_a_labels_file_outside_the_root_is_not_read(spark, tmp_path, outside):
    """synset_labels.txt is named by the input, so it is checked like an image: a link out is a reject and the
    validation images are then unlabelled (labels_count_mismatch), not labelled from another file."""
    root = tmp_path / "root"
    wnid = "n01440764"
    (root / "train" / wnid).mkdir(parents=True)
    (root / "validation").mkdir()
    (root / "train" / wnid / "t.JPEG").write_bytes(_jpeg((1, 2, 3)))
    (root / "validation" / "v.JPEG").write_bytes(_jpeg((3, 2, 1)))
    (outside / "labels.txt").write_text(wnid + "\n")
    (root / "synset_labels.txt").symlink_to(outside / "labels.txt")
    dst = tmp_path / "ds"
    manifest = run_partition(spark, _cfg(root, dst, layout="ilsvrc"))
    _assert_once(_outcomes(dst, manifest), {
        f"train/{wnid}/t.JPEG": "written", "synset_labels.txt": images.OUTSIDE_INPUT_ROOT,
        "validation/v.JPEG": images.LABELS_MISMATCH})


def test_tar_link_members_are_skipped_and_nothing_is_extracted(spark, tmp_path, outside):
    root = tmp_path / "root"
    (root / "train").mkdir(parents=True)
    wnid = "n01440764"
    escape = tmp_path / "escaped.jpg"
    with tarfile.open(root / "train" / f"{wnid}.tar", "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("a.JPEG", _jpeg((9, 9, 9)))
        add(f"../../{escape.name}", _jpeg((8, 8, 8)))  # a name, never a path: read in place, not extracted
        add(str(tmp_path / "abs.JPEG"), _jpeg((7, 7, 7)))
        add("a.JPEG", _jpeg((6, 6, 6)))  # the same name again
        for kind, name, target in ((tarfile.SYMTYPE, "sym.JPEG", str(outside / "secret.txt")),
                                   (tarfile.LNKTYPE, "hard.JPEG", "a.JPEG")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    (root / "train" / "n01443537.tar").symlink_to(outside / "secret.txt")
    (root / "train" / "n01484850.tar").symlink_to("missing.tar")
    (root / "train" / "README").write_text("per-class archives")
    dst = tmp_path / "ds"
    manifest = run_partition(spark, _cfg(root, dst, layout="tar"))
    t = f"train/{wnid}.tar"
    _assert_once(_outcomes(dst, manifest), {
        f"{t}/a.JPEG": "written", f"{t}/../../{escape.name}": "written", f"{t}/{tmp_path}/abs.JPEG": "written",
        f"{t}/a.JPEG#2": "skipped", f"{t}/sym.JPEG": "skipped", f"{t}/hard.JPEG": "skipped",
        "train/n01443537.tar": images.OUTSIDE_INPUT_ROOT, "train/n01484850.tar": images.READ_ERROR,
        "train/README": "skipped"})
    assert not escape.exists() and not (tmp_path / "abs.JPEG").exists()
    skipped = {s["filename"]: s["why"] for s in manifest["skipped"]}
    assert "never followed" in skipped[f"{t}/sym.JPEG"] and "never followed" in skipped[f"{t}/hard.JPEG"]
    _assert_secret_absent(dst)


def test_reject_bytes_are_capped(spark, tmp_path):
    root = tmp_path / "root"
    (root / "cls").mkdir(parents=True)
    (root / "cls" / "ok.jpg").write_bytes(_jpeg((5, 5, 5)))
    (root / "cls" / "small.jpg").write_bytes(b"not an image")
    (root / "cls" / "big.jpg").write_bytes(b"x" * 5000)
    dst = tmp_path / "ds"
    manifest = run_partition(spark, _cfg(root, dst, reject_bytes_cap=1000))
    rows = {r["filename"]: r for r in pq.read_table(dst / "rejects").to_pylist()}
    assert rows["cls/small.jpg"]["data"] == b"not an image"
    assert rows["cls/big.jpg"]["data"] == b""
    assert rows["cls/big.jpg"]["detail"].endswith("bytes not kept: 5000 > reject_bytes_cap=1000")
    assert {r["filename"]: r["detail"] for r in manifest["rejects"]}["cls/big.jpg"] == rows["cls/big.jpg"]["detail"]
    dst0 = tmp_path / "ds0"
    run_partition(spark, _cfg(root, dst0, reject_bytes_cap=0))
    assert all(r["data"] == b"" for r in pq.read_table(dst0 / "rejects").to_pylist())
    with pytest.raises(ConfigError, match="reject_bytes_cap=-1"):
        _cfg(root, tmp_path / "ds1", reject_bytes_cap=-1)


def test_listing_changed_after_listing_is_checked_again_on_read(tmp_path, outside):
    """The executor re-checks each path where it reads it: a file swapped for a link out of the root between
    listing and reading is rejected, not read (the listing alone cannot promise that)."""
    from imagenet_spark.config import to_dict
    from imagenet_spark.data.partition import process_task
    from imagenet_spark.data.tasks import plan_tasks

    root = tmp_path / "root"
    (root / "cls").mkdir(parents=True)
    (root / "cls" / "a.jpg").write_bytes(_jpeg((1, 1, 1)))
    listing = layouts.discover(str(root))
    (root / "cls" / "a.jpg").unlink()
    (root / "cls" / "a.jpg").symlink_to(outside / "secret.txt")
    cfg = _cfg(root, tmp_path / "ds")
    [task] = plan_tasks(listing, 8)
    result = process_task(task, to_dict(cfg), str(tmp_path / "staging"))
    assert [(f, r) for f, r, _ in result.rejects] == [("cls/a.jpg", images.OUTSIDE_INPUT_ROOT)]
    for path in (tmp_path / "staging").rglob("*"):
        assert not path.is_file() or SECRET not in path.read_bytes()
    assert json.loads(json.dumps(to_dict(result)))["written"] == 0
