"""A generated hostile input, through the real partition job (issue #14): nothing outside the input root is read,
nothing outside the output is written, every input name is accounted for exactly once.

The corpus comes from a seeded generator (hypothesis is not in the stack): odd file and class names (unicode,
spaces, leading dashes, tabs and newlines, 200-byte names, bytes that are not UTF-8), symlinks in and out of
the root, loops, broken links, a FIFO, CSVs with hostile rows, truncated and foreign files (text, a PDF header,
zero bytes, a tar where an image should be), and per-class tars with link members, escaping member names and
repeated names. The generator records what each name must become; the test compares that with the dataset,
the rejects table and the manifest. A sentinel file sits beside the input root: its bytes must appear nowhere
under the output. Three layouts (folders, csv, tar), a few dozen 32x32 files each.
"""

from __future__ import annotations

import csv
import io
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from imagenet_spark.config import PartitionConfig, resolve
from imagenet_spark.data import images
from imagenet_spark.jobs.partition import run_partition

pytestmark = pytest.mark.slow

WRITTEN, SKIPPED, CONTENT = "written", "skipped", "rejected for its content"
OUTSIDE, READ_ERROR = images.OUTSIDE_INPUT_ROOT, images.READ_ERROR
# Class names a user may have (none of the characters a partition directory cannot hold).
CLASS_NAMES = ["ünïcödé class", "猫の写真", "-leading-dash", "two  spaces", "🐍snake", "c" * 100, "plain"]
FILE_STEMS = ["ünï", "写真", "-rf", "--", "with space", "tab\there", "new\nline", "🐍", "q'uote", "x" * 200]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]


@dataclass
class Corpus:
    """What the generator wrote and what each name must become (an outcome, and for content rejects the bytes)."""

    base: Path
    sentinel: bytes
    expected: dict[str, str] = field(default_factory=dict)
    reject_bytes: dict[str, bytes] = field(default_factory=dict)
    escapes: list[Path] = field(default_factory=list)  # paths a tar member name points at: must not appear

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def outside(self) -> Path:
        return self.base / "outside"


def _image(rng: random.Random) -> bytes:
    buf = io.BytesIO()
    color = tuple(rng.randrange(256) for _ in range(3))
    Image.new("RGB", (32, 32), color).save(buf, format=rng.choice(["JPEG", "PNG"]))
    return buf.getvalue()


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _bad(kind: str, rng: random.Random) -> bytes:
    return {
        "truncated": lambda: _image(rng)[:40],
        "text": lambda: b"just some text, not an image\n",
        "pdf": lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
        "empty": lambda: b"",
        "nested_tar": lambda: _tar_bytes([("inner.jpg", _image(rng))]),
    }[kind]()


def _base(tmp_path: Path, seed: int) -> Corpus:
    rng = random.Random(seed)
    corpus = Corpus(tmp_path, b"SENTINEL-%032x" % rng.getrandbits(128))
    (corpus.outside / "dir").mkdir(parents=True)
    (corpus.outside / "sentinel.bin").write_bytes(corpus.sentinel)
    (corpus.outside / "dir" / "sentinel.jpg").write_bytes(corpus.sentinel)
    # a valid image carrying the sentinel after its end marker: decoders ignore it, a reject row would keep it
    (corpus.outside / "image.jpg").write_bytes(_image(random.Random(0)) + corpus.sentinel)
    (corpus.base / "sibling").mkdir()
    (corpus.base / "sibling" / "keep.txt").write_text("must not change")
    corpus.root.mkdir()
    return corpus


def _write(corpus: Corpus, rel: str, data: bytes, outcome: str) -> None:
    path = corpus.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    corpus.expected[rel] = outcome
    if outcome == CONTENT:
        corpus.reject_bytes[rel] = data


def _link(corpus: Corpus, rel: str, target: str | Path, outcome: str) -> None:
    (corpus.root / rel).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, corpus.root / rel)
    corpus.expected[rel] = outcome


def folders_corpus(tmp_path: Path, seed: int) -> Corpus:
    """``root/<class>/*``: odd names, bad files and every kind of hostile link, spread over the classes."""
    corpus = _base(tmp_path, seed)
    rng = random.Random(seed + 1)
    classes = rng.sample(CLASS_NAMES, 5)
    for n, cls in enumerate(classes):
        stems = rng.sample(FILE_STEMS, 3)
        for stem in stems:
            _write(corpus, f"{cls}/{stem}.jpg", _image(rng), WRITTEN)
        kind = ["truncated", "text", "pdf", "empty", "nested_tar"][n]
        _write(corpus, f"{cls}/bad-{kind}.JPEG", _bad(kind, rng), CONTENT)
        _write(corpus, f"{cls}/.DS_Store", b"\0\0\0\1Bud1", SKIPPED)
    a, b, c, d, e = classes
    out = corpus.outside
    _link(corpus, f"{a}/leak.jpg", out / "sentinel.bin", OUTSIDE)
    _link(corpus, f"{a}/rel-leak.jpg", "../../outside/image.jpg", OUTSIDE)
    _link(corpus, f"{b}/chain.jpg", "../" + a + "/leak.jpg", OUTSIDE)  # inside link -> outside link
    _link(corpus, f"{b}/dotdot.jpg", f"../{c}/../../outside/dir/sentinel.jpg", OUTSIDE)
    _link(corpus, "zz-outdir", out / "dir", OUTSIDE)
    _link(corpus, f"{c}/loop", "..", SKIPPED)
    corpus.expected[f"{c}/loop/"] = corpus.expected.pop(f"{c}/loop")
    _link(corpus, "alias", c, SKIPPED)
    corpus.expected["alias/"] = corpus.expected.pop("alias")
    first = sorted(k for k, v in corpus.expected.items() if k.startswith(d + "/") and v == WRITTEN)[0]
    _link(corpus, f"{e}/0-dup.jpg", f"../{first}", SKIPPED)
    _link(corpus, f"{d}/broken.jpg", "no-such-file.jpg", READ_ERROR)
    _link(corpus, f"{e}/self.jpg", "self.jpg", READ_ERROR)
    os.mkfifo(corpus.root / e / "pipe.jpg")
    corpus.expected[f"{e}/pipe.jpg"] = SKIPPED
    with open(os.path.join(os.fsencode(corpus.root / d), b"bad\xff\xfename.jpg"), "wb") as f:
        f.write(_image(rng))
    corpus.expected[f"{d}/bad\\xff\\xfename.jpg"] = SKIPPED
    return corpus


def csv_corpus(tmp_path: Path, seed: int) -> Corpus:
    """``root/train.csv`` over ``root/img/``: good rows, duplicates, and rows that point anywhere."""
    corpus = _base(tmp_path, seed)
    rng = random.Random(seed + 2)
    labels = rng.sample(CLASS_NAMES, 3)
    rows: list[tuple[str, str]] = []
    for n, stem in enumerate(rng.sample(FILE_STEMS, 6)):
        rel = f"img/{stem}.jpg"
        _write(corpus, rel, _image(rng), WRITTEN)
        rows.append((rel, labels[n % 3]))
    for kind in ("truncated", "pdf", "empty"):
        _write(corpus, f"img/{kind}.jpg", _bad(kind, rng), CONTENT)
        rows.append((f"img/{kind}.jpg", labels[0]))
    _link(corpus, "img/leak.jpg", corpus.outside / "sentinel.bin", OUTSIDE)
    _link(corpus, "img/gone.jpg", "gone-for-good.jpg", READ_ERROR)
    os.mkfifo(corpus.root / "img" / "pipe.jpg")
    out = corpus.outside
    hostile = {
        "img/leak.jpg": OUTSIDE, "img/gone.jpg": READ_ERROR, "img/pipe.jpg": READ_ERROR,
        str(out / "sentinel.bin"): OUTSIDE, f"file://{out}/sentinel.bin": OUTSIDE, f"file:{out}/image.jpg": OUTSIDE,
        "../outside/sentinel.bin": OUTSIDE, "img/../../outside/dir/sentinel.jpg": OUTSIDE,
        f"{corpus.root}/../outside/image.jpg": OUTSIDE, "s3://bucket/img/a.jpg": OUTSIDE,
        "hdfs://namenode:8020/img/a.jpg": OUTSIDE, "/etc/hostname": OUTSIDE,
        "./" + rows[0][0]: SKIPPED, str(corpus.root / rows[1][0]): SKIPPED, "img//" + rows[2][0][4:]: SKIPPED,
        "img/": READ_ERROR, "img/not-there.jpg": READ_ERROR,
    }
    corpus.expected.pop("img/leak.jpg")
    corpus.expected.pop("img/gone.jpg")
    corpus.expected.update(hostile)
    rows += [(path, rng.choice(labels)) for path in hostile]
    rng.shuffle(rows)
    with open(corpus.root / "train.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    for path in corpus.expected.copy():  # files in img/ no row names are not inputs of a CSV layout
        if not any(path == r for r, _ in rows):
            corpus.expected.pop(path)
            corpus.reject_bytes.pop(path, None)
    return corpus


def tar_corpus(tmp_path: Path, seed: int) -> Corpus:
    """``root/train/<wnid>.tar``: members with odd, escaping and repeated names, link members, a nested tar."""
    corpus = _base(tmp_path, seed)
    rng = random.Random(seed + 3)
    for n, wnid in enumerate(WNIDS[:3]):
        name = f"train/{wnid}.tar"
        members: list[tarfile.TarInfo | tuple[str, bytes]] = []
        for stem in rng.sample(FILE_STEMS, 3):
            members.append((f"{stem}.JPEG", _image(rng)))
        members.append((f"../../escape-{n}.JPEG", _image(rng)))
        members.append((f"{tmp_path}/abs-{n}.JPEG", _image(rng)))
        kind = ["truncated", "nested_tar", "pdf"][n]
        members.append((f"bad-{kind}.JPEG", _bad(kind, rng)))
        members.append((members[0][0], _image(rng)))  # the same name again
        corpus.escapes += [(Path.cwd() / f"../../escape-{n}.JPEG").resolve(), tmp_path / f"abs-{n}.JPEG"]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            folder = tarfile.TarInfo("subdir")
            folder.type = tarfile.DIRTYPE  # a directory member is no input: not listed, nothing created
            tar.addfile(folder)
            seen: set[str] = set()
            for member_name, data in members:
                info = tarfile.TarInfo(member_name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                full = f"{name}/{member_name}"
                if member_name in seen:
                    corpus.expected[full + "#2"] = SKIPPED
                elif member_name.startswith("bad-"):
                    corpus.expected[full] = CONTENT
                    corpus.reject_bytes[full] = data
                else:
                    corpus.expected[full] = WRITTEN
                seen.add(member_name)
            for kind, link_name, target in ((tarfile.SYMTYPE, "sym.JPEG", str(corpus.outside / "sentinel.bin")),
                                            (tarfile.LNKTYPE, "hard.JPEG", members[0][0])):
                info = tarfile.TarInfo(link_name)
                info.type, info.linkname = kind, target
                tar.addfile(info)
                corpus.expected[f"{name}/{link_name}"] = SKIPPED
        (corpus.root / "train").mkdir(exist_ok=True)
        (corpus.root / name).write_bytes(buf.getvalue())
    _link(corpus, f"train/{WNIDS[3]}.tar", corpus.outside / "sentinel.bin", OUTSIDE)
    _link(corpus, f"train/{WNIDS[4]}.tar", "../../outside/dir", OUTSIDE)
    _write(corpus, "train/README", b"per-class archives", SKIPPED)
    return corpus


def _snapshot(base: Path, skip: Path) -> dict[str, tuple[int, int, int]]:
    """Every name under ``base`` but ``skip``, with (mode, size, mtime) as lstat sees it (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if Path(path) == skip:
                continue
            st = os.lstat(path)
            out[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _check(corpus: Corpus, dst: Path, manifest: dict) -> None:
    got: list[tuple[str, str]] = []
    for split in ("train", "validation"):
        if (dst / split).exists():
            got += [(r["filename"], WRITTEN) for r in pq.read_table(dst / split, columns=["filename"]).to_pylist()]
    rejects = pq.read_table(dst / "rejects").to_pylist()
    got += [(r["filename"], r["reason"] if r["reason"] in (OUTSIDE, READ_ERROR) else CONTENT) for r in rejects]
    got += [(s["filename"], SKIPPED) for s in manifest["skipped"]]
    names = [n for n, _ in got]
    assert sorted(n for n in set(names) if names.count(n) > 1) == [], "names accounted for more than once"
    assert dict(got) == corpus.expected
    assert len(manifest["rejects"]) == len(rejects)
    for r in rejects:
        assert r["data"] == corpus.reject_bytes.get(r["filename"], b""), r["filename"]
    for path in dst.rglob("*"):
        if path.is_file():
            assert corpus.sentinel not in path.read_bytes(), f"bytes from outside the input root in {path}"
    for path in corpus.escapes:
        assert not path.exists(), f"a tar member was extracted to {path}"


@pytest.mark.parametrize("layout,make,seed", [("folders", folders_corpus, 11), ("csv", csv_corpus, 12),
                                              ("tar", tar_corpus, 13)])
def test_hostile_corpus(spark, tmp_path, layout, make, seed):
    corpus = make(tmp_path, seed)
    dst = tmp_path / "out"
    before = _snapshot(tmp_path, dst)
    cfg = resolve(PartitionConfig, explicit=dict(input=str(corpus.root), output=str(dst), layout=layout,
                                                 resize_short=32, images_per_task=4, rows_per_row_group=2,
                                                 max_reject_fraction=1.0))
    manifest = run_partition(spark, cfg)
    _check(corpus, dst, manifest)
    assert _snapshot(tmp_path, dst) == before, "something outside the output was written or touched"
    totals = manifest["totals"]
    assert totals["written"] + totals["rejected"] + totals["skipped"] == len(corpus.expected)
