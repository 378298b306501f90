"""The partition job body: listed inputs → cleaned JPEG rows → Petastorm Parquet partitioned by synset.

Shape of the job (why each piece is where it is):

* The driver lists inputs (``layouts.discover``) and cuts them into *units* of at most ``images_per_task``
  images of one split and one synset, in sorted order; each unit is one Parquet file. Consecutive small
  units are packed into one *task* (about three tasks per Spark slot, never over ``images_per_task``
  images): a Spark task costs ~30 ms of a slot whatever it does, which on a tree of many small classes
  used to be most of the job. Tasks are deterministic, so a rerun with ``--resume`` can skip the ones
  already done, and a retried Spark task rewrites the same file names (no duplicate rows).
* Each executor task reads its images (from files, or from a tar archive in place), cleans them with
  ``images.process_image`` and streams rows into one Parquet file per unit, flushing a row group every
  ``rows_per_row_group`` rows: executor memory is bounded by one row group plus one image, whatever the
  dataset size. Rejected inputs go, with their bytes, to a per-task rejects file. The task then writes a
  small JSON result (counts, rejects, conversions) *after* its Parquet file is renamed into place, so a
  result on disk means the task's output is complete.
* Everything is written under ``OUTPUT/_staging``. Only when every task is done and the reject fraction is
  acceptable does the driver write Petastorm metadata, labels.txt and manifest.json and move the splits
  into place; ``manifest.json`` is written last and marks a finished dataset.
"""

from __future__ import annotations

import io
import json
import logging
import math
import platform
import posixpath
import resource
import tarfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict
from typing import Any, Iterator, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from imagenet_spark import __version__, jsonio, ownership
from imagenet_spark.config import ConfigError, PartitionConfig, to_dict
from imagenet_spark.data import fs, images, layouts, resume
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.data.tfrecord import TFRECORD_DIR
from imagenet_spark.data.schema import PARTITION_COLUMN, arrow_file_schema, imagenet_schema, write_petastorm_metadata

log = logging.getLogger(__name__)

STAGING = "_staging"
TASKS = "_tasks"
MANIFEST = "manifest.json"
PUBLISHING = "_publishing.json"  # in staging: what a publish moves, so an interrupted one can be undone
LABELS = "labels.txt"
RUN = "run.json"  # in staging: the settings of the run that made it (a resume must keep them)
DATASET_FORMAT = "imagenet-spark dataset"  # manifest.json's "format": recognises datasets made before the marker
REJECTS = "rejects"
# The longest file name the job derives from a class name is the task result
# ``_staging/_tasks/validation__<class>__NNNNN.json.tmp`` (the class plus 28 bytes); file names end at 255 bytes.
MAX_CLASS_NAME_BYTES = 200
_UNSAFE_CLASS_CHARS = set('/\\=%:"#\'*?{}[]^\x7f')


class PartitionError(ImagenetSparkError, RuntimeError):
    """The job cannot finish as asked; the message says what happened and where to look."""


def _rejects_schema() -> pa.Schema:
    """Quarantined inputs with their bytes, under ``rejects/split=<split>/`` (the split is the partition)."""
    return pa.schema(
        [
            pa.field("filename", pa.string()),
            pa.field("synset", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("detail", pa.string()),
            pa.field("data", pa.binary()),
        ]
    )


# --------------------------------------------------------------------------------------------------
# Tasks (driver side)

# A packed task holds at most this many input bytes (bounds a retry's cost and the task's reading time when
# images are unusually large); the image count is the usual limit.
PACK_MAX_BYTES = 256 << 20
# Packing aims at this many tasks per slot: enough to balance slots of uneven speed, few enough that Spark's
# per-task cost (~30 ms of a slot on local[2], bench/partition_overhead.py) stays small beside the work.
TASKS_PER_SLOT = 3
# Below this many images a packed task costs more in Spark overhead than it gains in balance.
PACK_MIN_IMAGES = 32


def pack_target(listing: layouts.Listing, images_per_task: int, slots: int) -> int:
    """Images a packed task aims at: a third of a slot's share of the listed files, between
    ``PACK_MIN_IMAGES`` and ``images_per_task`` (which also caps a file)."""
    share = math.ceil(len(listing.items) / max(1, slots * TASKS_PER_SLOT))
    return max(1, min(images_per_task, max(PACK_MIN_IMAGES, share)))


def _units(listing: layouts.Listing, images_per_task: int) -> list[dict[str, Any]]:
    """The file units: one split × one synset × at most ``images_per_task`` images, sorted; each becomes one
    Parquet file ``synset=<synset>/part-<index>.parquet`` (the dataset layout does not depend on packing).

    Items already rejected at listing time (unknown class, unlabelled validation file) get units of their
    own under the pseudo-synset ``_rejected`` so their bytes still reach the rejects table."""
    labels = listing.label_of()
    groups: dict[tuple[str, str], list[layouts.Item]] = defaultdict(list)
    for item in listing.items:
        groups[(item.split, "_rejected" if item.reject else item.synset)].append(item)
    units = []
    for (split, synset), items in sorted(groups.items()):
        items.sort(key=lambda i: i.filename)
        for index, start in enumerate(range(0, len(items), images_per_task)):
            chunk = items[start:start + images_per_task]
            units.append({
                "id": f"{split}/{synset}/{index:05d}", "split": split, "synset": synset,
                "label": labels.get(synset, -1), "index": index,
                "items": [(i.uri, i.filename, i.offset, i.size, i.synset, i.reject, i.detail) for i in chunk],
            })
    return units


def _pack(units: list[dict[str, Any]], pack_images: int | None) -> list[list[dict[str, Any]]]:
    """Consecutive units of one split, greedily, while the pack stays within ``pack_images`` images and
    ``PACK_MAX_BYTES``; a unit at or over the target is a pack of its own. ``None``: one unit per pack.

    Deterministic (sorted units, counts and sizes only). Packs are sized by image count first, so a file
    whose bytes change moves no boundary unless the byte cap is reached; a file added or removed may move
    the boundaries after it in its split, which redoes those packs on ``--resume`` (never keeps a stale one)."""
    if pack_images is None:
        return [[u] for u in units]
    packs: list[list[dict[str, Any]]] = []
    count = size = 0
    for unit in units:
        n = len(unit["items"])
        b = sum(max(0, item[3]) for item in unit["items"])
        fits = packs and packs[-1][0]["split"] == unit["split"] and count + n <= pack_images \
            and size + b <= PACK_MAX_BYTES
        if fits:
            packs[-1].append(unit)
            count, size = count + n, size + b
        else:
            packs.append([unit])
            count, size = n, b
    return packs


def plan_tasks(listing: layouts.Listing, images_per_task: int, stats: dict[str, tuple[int, int]] | None = None,
               pack_images: int | None = None) -> list[dict[str, Any]]:
    """Deterministic tasks: packs of file units (:func:`_units`, :func:`_pack`), then one task per archive.

    A files task is ``{"id", "kind": "files", "split", "units": [...]}``; its id is its first unit's, so
    result files and ``inject_failure`` prefixes keep naming a split and a class. Each task's ``key`` hashes
    exactly what it covers (``resume.task_key``; ``stats`` adds each input's size and mtime): a changed input,
    or a label fixed, changes the key of the task it is in, and ``--resume`` redoes exactly those tasks
    (a pack or slice boundary that moved changes the keys of the tasks it moved)."""
    labels = listing.label_of()
    tasks: list[dict[str, Any]] = [{"id": pack[0]["id"], "kind": "files", "split": pack[0]["split"], "units": pack}
                                   for pack in _pack(_units(listing, images_per_task), pack_images)]
    for archive in sorted(listing.archives, key=lambda a: (a.split, a.synset)):
        tasks.append({
            "id": f"{archive.split}/{archive.synset}/archive",
            "kind": "archive",
            "split": archive.split,
            "synset": archive.synset,
            "label": labels[archive.synset],
            "index": 0,
            "archive": (archive.uri, archive.filename, archive.offset, archive.size),
        })
    for task in tasks:
        task["key"] = resume.task_key(task, stats or {})
    return tasks


def _task_result_uri(staging: str, task_id: str) -> str:
    return fs.join(staging, TASKS, task_id.replace("/", "__") + ".json")


# --------------------------------------------------------------------------------------------------
# Executor side


class _Slice(io.RawIOBase):
    """A read-only window [offset, offset+size) of a seekable file: an inner tar inside the outer tar."""

    def __init__(self, f: Any, offset: int, size: int) -> None:
        super().__init__()
        self._f, self._start, self._size, self._pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


class _Member(NamedTuple):
    """One member of a per-class tar: bytes, or a reject reason and detail, or why it is no input (skipped)."""

    filename: str
    data: bytes | None
    reason: str = ""
    detail: str = ""
    skip: str = ""


def _iter_archive(uri: str, name: str, offset: int, size: int) -> Iterator[_Member]:
    """Each member of a tar, streamed: nothing is extracted to disk, link members are never followed.

    Member names (``../x``, ``/etc/passwd``) are only names here. A symlink or hard-link member is skipped with
    its target (``extractfile`` would resolve it to another member); device/FIFO members likewise; a second
    member of the same name is skipped as ``name#N``, so every filename is accounted for once."""
    seen: Counter[str] = Counter()
    with fs.open_input(uri) as raw:
        stream = io.BufferedReader(_Slice(raw, offset, size), 1 << 20) if offset >= 0 else raw
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if member.isdir():
                        continue
                    seen[member.name] += 1
                    fname = f"{name}/{member.name}"
                    if seen[member.name] > 1:
                        yield _Member(f"{fname}#{seen[member.name]}", None,
                                      skip="duplicate member name in the archive; the first is used")
                    elif member.issym() or member.islnk():
                        yield _Member(fname, None, skip=f"link member in the archive (to {member.linkname!r}); "
                                                        "never followed")
                    elif not member.isfile():
                        yield _Member(fname, None, skip="not a regular file member (device or FIFO)")
                    else:
                        f = tar.extractfile(member)
                        yield _Member(fname, f.read() if f else b"")
        except (tarfile.TarError, OSError, EOFError) as exc:
            yield _Member(f"{name}/<archive>", None, images.READ_ERROR,
                          f"archive unreadable after the members above: {exc}")


def _read_input(within: fs.InputRoot, uri: str, offset: int, size: int) -> tuple[bytes | None, str, str]:
    """(bytes, "", "") of one listed input, or (None, reason, detail). The listing checked the path against the
    input root; it is checked again here, where it is read, in case the tree changed in between."""
    if within.resolve(uri) is None:
        return None, images.OUTSIDE_INPUT_ROOT, "resolves outside the input root when read (changed since listing)"
    try:
        return fs.read_bytes(uri, offset, size), "", ""
    except OSError as exc:
        return None, images.READ_ERROR, f"cannot read: {exc}"


def _capped(data: bytes, detail: str, cap: int) -> tuple[bytes, str]:
    """The bytes a rejects row keeps: all up to ``reject_bytes_cap``, else none (and the detail says so)."""
    if len(data) <= cap:
        return data, detail
    note = f"bytes not kept: {len(data)} > reject_bytes_cap={cap}"
    return b"", f"{detail}; {note}" if detail else note


class _TaskWriter:
    """Streams rows of one task into ``part-NNNNN.parquet`` files, a row group per ``rows_per_row_group``."""

    def __init__(self, out_dir: str, start_index: int, cfg: PartitionConfig, max_rows_per_file: int,
                 schema: pa.Schema) -> None:
        self._dir, self._index, self._cfg = out_dir, start_index, cfg
        self._max_rows = max_rows_per_file
        self._schema = schema
        self._writer: pq.ParquetWriter | None = None
        self._tmp = self._final = ""
        self._rows_in_file = 0
        self._buffer: dict[str, list[Any]] = {n: [] for n in self._schema.names}
        self.files: dict[str, list[int]] = {}  # relative path -> rows of each row group
        self.bytes_written = 0

    def _open(self) -> None:
        name = f"part-{self._index:05d}.parquet"
        self._final = fs.join(self._dir, name)
        self._tmp = fs.join(self._dir, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        filesystem, path = fs.resolve(self._tmp)
        filesystem.create_dir(posixpath.dirname(path), recursive=True)
        self._sink = filesystem.open_output_stream(path)
        # JPEG bytes do not compress; no codec saves CPU on write and on every read.
        self._writer = pq.ParquetWriter(self._sink, self._schema, compression="NONE")
        self._group_rows: list[int] = []

    def add(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            self._open()
        for key, value in row.items():
            self._buffer[key].append(value)
        self._rows_in_file += 1
        if len(self._buffer["image"]) >= self._cfg.rows_per_row_group:
            self._flush()
        if self._rows_in_file >= self._max_rows:
            self._close_file()

    def _flush(self) -> None:
        if not self._buffer["image"]:
            return
        table = pa.Table.from_pydict(self._buffer, schema=self._schema)
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=len(self._buffer["image"]))
        self._group_rows.append(len(self._buffer["image"]))
        self.bytes_written += sum(len(b) for b in self._buffer["image"])
        self._buffer = {n: [] for n in self._schema.names}

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._sink.close()
        fs.move(self._tmp, self._final)  # a retried task overwrites the same name: no duplicate rows
        self.files[posixpath.basename(self._dir) + "/" + posixpath.basename(self._final)] = self._group_rows
        self._writer = None
        self._rows_in_file = 0
        self._index += 1

    def close(self) -> None:
        self._close_file()


class InjectedFailure(RuntimeError):
    """Raised on purpose by ``inject_failure`` to prove retries and atomic publishing."""


def _should_inject_failure(spec: str | None, task: dict[str, Any]) -> bool:
    """Whether ``inject_failure`` names this task: its prefix matches the id of the task or of one of its
    units (a class packed into another class's task still fails where it is)."""
    if not spec:
        return False
    always = spec.startswith("always:")
    prefix = spec.split(":", 1)[1] if always else spec
    ids = [task["id"], *(unit["id"] for unit in task.get("units", ()))]
    if not any(i.startswith(prefix) for i in ids):
        return False
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return always or (ctx.attemptNumber() if ctx else 0) == 0


class _Outcome:
    """What one task did, input by input: rows go to the current class file's writer, rejects (with their
    bytes, capped) to one rejects table, and every name is counted once (the result the driver accounts on)."""

    def __init__(self, cfg: PartitionConfig) -> None:
        self.cfg = cfg
        self.schema = arrow_file_schema(imagenet_schema())
        self.rejects: list[tuple[str, str, str]] = []
        self.reject_rows: dict[str, list[Any]] = {n: [] for n in _rejects_schema().names}
        self.conversions: dict[str, list[str]] = {}
        self.skipped: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {}  # per real class: images written
        self.files: dict[str, list[int]] = {}
        self.written = self.input_bytes = self.bytes_written = 0

    def reject(self, fname: str, item_synset: str, reason: str, detail: str, data: bytes) -> None:
        data, detail = _capped(data, detail, self.cfg.reject_bytes_cap)
        self.rejects.append((fname, reason, detail))
        for key, value in (("filename", fname), ("synset", item_synset), ("reason", reason),
                           ("detail", detail), ("data", data)):
            self.reject_rows[key].append(value)

    def handle(self, writer: _TaskWriter, label: int, fname: str, item_synset: str, data: bytes | None,
               pre_reason: str, pre_detail: str) -> None:
        if data is None:  # never read: unreadable, or outside the input root
            self.reject(fname, item_synset, pre_reason or images.READ_ERROR, pre_detail, b"")
            return
        self.input_bytes += len(data)
        if pre_reason:
            self.reject(fname, item_synset, pre_reason, pre_detail, data)
            return
        cfg = self.cfg
        result = images.process_image(data, filename=fname, resize_short=cfg.resize_short, quality=cfg.quality,
                                      max_pixels=cfg.max_pixels)
        if isinstance(result, images.Rejected):
            self.reject(fname, item_synset, result.reason, result.detail, data)
            return
        if result.conversions:
            self.conversions[fname] = list(result.conversions)
        writer.add({"image": result.data, "label": label, "filename": fname, "height": result.height,
                    "width": result.width})
        self.written += 1

    def close(self, writer: _TaskWriter, synset: str, written_before: int) -> None:
        """A class file is complete: record its file(s) and, for a real class, its count."""
        writer.close()
        self.files.update(writer.files)
        self.bytes_written += writer.bytes_written
        if synset != "_rejected":
            self.counts[synset] = self.counts.get(synset, 0) + self.written - written_before
        elif self.written != written_before:
            raise PartitionError(f"{writer.files or synset}: rejected items were written; this is a bug")


def _class_dir(synset: str) -> str:
    """The Hive partition folder of a class: ``synset=<name>``."""
    return f"{PARTITION_COLUMN}={synset}"


def _run_units(task: dict[str, Any], out: _Outcome, within: fs.InputRoot, staging: str, fail: bool) -> int:
    """A files task: each unit (one class's slice) into its own ``synset=X/part-<index>.parquet``; returns
    the number of inputs."""
    items = sum(len(unit["items"]) for unit in task["units"])
    fail_at = items // 2 if fail else -1
    n = 0
    for unit in task["units"]:
        out_dir = fs.join(staging, task["split"], _class_dir(unit["synset"]))
        writer = _TaskWriter(out_dir, unit["index"], out.cfg, 1 << 62, out.schema)
        before = out.written
        for uri, fname, offset, size, item_synset, pre_reason, pre_detail in unit["items"]:
            if n == fail_at:
                raise InjectedFailure(f"inject_failure={out.cfg.inject_failure!r}: task {task['id']} fails at "
                                      f"image {n}")
            n += 1
            if pre_reason in (images.READ_ERROR, images.OUTSIDE_INPUT_ROOT):
                out.handle(writer, unit["label"], fname, item_synset, None, pre_reason, pre_detail)
                continue
            data, reason, detail = _read_input(within, uri, offset, size)
            out.handle(writer, unit["label"], fname, item_synset, data, reason or pre_reason, detail or pre_detail)
        out.close(writer, unit["synset"], before)
    return items


def _run_archive(task: dict[str, Any], out: _Outcome, within: fs.InputRoot, staging: str) -> int:
    """An archive task: its members streamed into ``synset=X/part-*.parquet``; returns the members counted
    as inputs (skipped ones are not)."""
    uri, name, offset, size = task["archive"]
    writer = _TaskWriter(fs.join(staging, task["split"], _class_dir(task["synset"])), 0, out.cfg,
                         out.cfg.images_per_task, out.schema)
    expected = 0
    members = (_iter_archive(uri, name, offset, size) if within.resolve(uri) is not None else
               [_Member(name, None, images.OUTSIDE_INPUT_ROOT, "resolves outside the input root when read")])
    for fname, data, reason, detail, skip in members:
        if skip or (posixpath.basename(fname).startswith((".", "_")) and data is not None):
            out.skipped.append((fname, skip or "hidden or system file"))
            continue
        expected += 1
        out.handle(writer, task["label"], fname, task["synset"], data, reason, detail)
    out.close(writer, task["synset"], 0)
    return expected


def process_task(task: dict[str, Any], cfg_dict: dict[str, Any], staging: str) -> dict[str, Any]:
    """Run one task on an executor; returns (and persists) its result. Never raises on bad images.

    The result's ``counts`` holds images written per class (a packed task covers several); it is written
    to ``_tasks/`` only after every Parquet file of the task is in place, so a result on disk means the
    task's output is complete."""
    started = time.monotonic()
    cfg = PartitionConfig(**cfg_dict)
    within = fs.InputRoot.of(cfg.input)
    out = _Outcome(cfg)
    if task["kind"] == "archive":
        expected = _run_archive(task, out, within, staging)
        first_synset, first_index = task["synset"], 0
    else:
        # Fail half way through, with a partial Parquet file open, to prove nothing half-written is kept.
        expected = _run_units(task, out, within, staging, _should_inject_failure(cfg.inject_failure, task))
        first_synset, first_index = task["units"][0]["synset"], task["units"][0]["index"]
    if out.reject_rows["filename"]:
        rej_uri = fs.join(staging, REJECTS, f"split={task['split']}", f"part-{first_synset}-{first_index:05d}.parquet")
        filesystem, path = fs.resolve(rej_uri)
        filesystem.create_dir(posixpath.dirname(path), recursive=True)
        pq.write_table(pa.Table.from_pydict(out.reject_rows, schema=_rejects_schema()), path, filesystem=filesystem)
    result = {
        "id": task["id"],
        "split": task["split"],
        "counts": out.counts,
        "inputs": expected,
        "written": out.written,
        "rejects": out.rejects,
        "conversions": out.conversions,
        "skipped": out.skipped,
        "files": out.files,
        "input_bytes": out.input_bytes,
        "bytes_written": out.bytes_written,
        "seconds": round(time.monotonic() - started, 3),
        # Peak RSS of this Python worker so far: the executor-memory figure the manifest reports.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if out.written + len(out.rejects) != expected:
        raise PartitionError(f"task {task['id']}: {expected} inputs but {out.written} written + {len(out.rejects)} "
                             "rejected")
    fs.write_text_atomic(_task_result_uri(staging, task["id"]), json.dumps(result))
    return result


# --------------------------------------------------------------------------------------------------
# Driver side


def _versions() -> dict[str, str]:
    import importlib.metadata

    import PIL

    out = {"imagenet_spark": __version__, "python": platform.python_version(), "pyarrow": pa.__version__,
           "Pillow": PIL.__version__}
    # petastorm exists on the legacy stack only (the current one writes its metadata without it).
    for dist in ("petastorm", "pyspark"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _check_classes(listing: layouts.Listing) -> None:
    """Refuse, all in one error, class names that cannot name a partition directory and names that differ
    only in case.

    Why refuse: a class is stored as ``synset=<name>/``; ``%`` is unescaped by Spark's and pyarrow's partition
    discovery, ``:``, ``#`` and ``?`` break Hadoop paths and URIs, a tab or newline breaks labels.txt. On a
    case-insensitive filesystem (macOS, Windows, some mounts) ``synset=Cat`` and ``synset=cat`` are one
    directory, and the two classes' files of the same number overwrite each other: silent loss; such
    folders are almost always one class split by accident. Every offending name is listed, so one rename
    round fixes them all."""
    unsafe = {c: sorted(set(c) & _UNSAFE_CLASS_CHARS | {ch for ch in c if ord(ch) < 32}) for c in listing.classes}
    unsafe = {c: chars for c, chars in unsafe.items() if chars}
    folded: dict[str, list[str]] = defaultdict(list)
    for cls in listing.classes:
        folded[cls.casefold()].append(cls)
    clashes = [names for names in folded.values() if len(names) > 1]
    too_long = sorted(c for c in listing.classes if len(c.encode("utf-8")) > MAX_CLASS_NAME_BYTES)
    problems = []
    if too_long:
        problems.append(f"{len(too_long)} class name(s) longer than {MAX_CLASS_NAME_BYTES} bytes (a file name "
                        "in the dataset holds the class name and more, within the 255-byte limit of file names): "
                        + "; ".join(f"{c[:40]!r}... ({len(c.encode('utf-8'))} bytes)" for c in too_long) + ".")
    if unsafe:
        problems.append(f"{len(unsafe)} class name(s) contain characters that cannot name a partition directory: "
                        + "; ".join(f"{c!r} ({''.join(chars)!r})" for c, chars in sorted(unsafe.items())) + ".")
    if clashes:
        problems.append(f"{len(clashes)} group(s) of class names differ only in case (one directory on a "
                        "case-insensitive filesystem): " + "; ".join(" and ".join(map(repr, g)) for g in clashes) + ".")
    if problems:
        raise ConfigError("input", listing.root, " ".join(problems),
                          "rename those class folders (no / \\ = % : \" # ' * ? { } [ ] ^ or control characters; "
                          "merge folders that differ only in case, or make the names differ by more than case; "
                          f"at most {MAX_CLASS_NAME_BYTES} bytes), or "
                          "list the images in a CSV (--layout csv) with clean labels.")


def _made_by_partition(directory: str) -> bool:
    """Whether an unmarked directory is this job's work from before the ownership marker existed: a finished
    dataset (``manifest.json`` whose format is ours) or an interrupted run (``_staging/run.json``)."""
    if fs.is_file(fs.join(directory, STAGING, RUN)):
        return True
    uri = fs.join(directory, MANIFEST)
    if not fs.is_file(uri):
        return False
    try:
        manifest = json.loads(fs.read_text(uri))
    except (ValueError, OSError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == DATASET_FORMAT


def _check_paths(cfg: PartitionConfig) -> None:
    """Refuse, before anything is listed or written, an output that overlaps an input (the input tree, a labels
    file) and an existing output this job did not make, ``--overwrite`` or not.

    Why: publishing deletes ``train/``, ``validation/``, ``labels.txt`` and ``rejects/`` in the output and
    moves new ones in; pointed at the user's image tree or any other folder, that destroys the user's files."""
    if not cfg.output:
        return
    for setting in ("input", "labels_file", "val_labels"):
        ownership.check_disjoint("output", cfg.output, setting, getattr(cfg, setting))
    ownership.check_ours("output", cfg.output, "dataset", _made_by_partition)


def _check_output(cfg: PartitionConfig) -> str:
    """Under the output's lease: refuse to clobber a finished dataset or silently drop an interrupted run (and,
    again, anything this job did not make), then claim the output with our marker; return the staging URI."""
    ownership.check_ours("output", cfg.output, "dataset", _made_by_partition)
    staging = fs.join(cfg.output, STAGING)
    finished = fs.exists(fs.join(cfg.output, MANIFEST))
    if finished and not (cfg.overwrite or cfg.resume):
        raise ConfigError("output", cfg.output, "already holds a finished dataset (manifest.json).",
                          "pass --overwrite to replace it, or choose another --output.")
    if fs.exists(staging):
        if cfg.overwrite:
            log.info("--overwrite: discarding the interrupted run in %s", staging)
            fs.delete(staging)
        elif not cfg.resume:
            raise ConfigError("output", cfg.output, f"holds an interrupted run ({staging}).",
                              "pass --resume to continue it, or --overwrite to start over.")
    ownership.write_mark(cfg.output, "dataset")  # before staging exists: a crash from here on leaves it ours
    return staging


# Settings that change every task's output: a resume must keep them. The others may change on --resume:
# max_reject_fraction, num_partitions, tfrecord; labels_file and val_labels reach the task keys (a fixed
# labels file redoes the tasks whose labels it changed).
_RUN_KEYS = ("input", "layout", "resize_short", "quality", "max_pixels", "images_per_task", "rows_per_row_group")
PACK_KEY = "pack_images"  # in run.json beside _RUN_KEYS: the packing target, derived (not a setting)


def _stored_pack_target(cfg: PartitionConfig, staging: str) -> int | None:
    """On ``--resume``, the packing target of the interrupted run (``run.json``): the plan must not change
    with the cluster's size (a resume on other hardware would redo every task); None when there is none."""
    run_uri = fs.join(staging, RUN)
    if not cfg.resume or not fs.exists(run_uri):
        return None
    stored = json.loads(fs.read_text(run_uri)).get(PACK_KEY)
    return stored if isinstance(stored, int) and stored > 0 else None


def _check_resume(cfg: PartitionConfig, staging: str, listing: layouts.Listing, tasks: list[dict[str, Any]],
                  stats: dict[str, tuple[int, int]],
                  packing: int | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Reconcile staging with this run; returns (the committed results to reuse, what changed in the input).

    The settings must be those of the interrupted run (``run.json``). The input is listed anew and compared
    with the fingerprint stored by the first run (added, removed, changed files; labels files changed). A
    result is reused only if its task's key is unchanged; other results, and every file in staging that no
    reused result accounts for, are deleted before any task runs, so no input is dropped and none ends up
    both written and rejected. The new fingerprint and task plan are stored for the next resume."""
    run_uri = fs.join(staging, RUN)
    current = {k: getattr(cfg, k) for k in _RUN_KEYS}
    if fs.exists(run_uri):
        previous = json.loads(fs.read_text(run_uri))
        changed = {k: (previous.get(k), v) for k, v in current.items() if previous.get(k) != v}
        if changed:
            key, (old, new) = next(iter(changed.items()))
            raise ConfigError(key, new, f"differs from the interrupted run being resumed ({old!r}).",
                              "resume with the same settings, or pass --overwrite to start over.")
    else:
        fs.write_text_atomic(run_uri, json.dumps({**current, PACK_KEY: packing}))
    labels = {s: getattr(cfg, s) for s in ("labels_file", "val_labels") if getattr(cfg, s)}
    now = resume.fingerprint(listing, stats, labels)
    fingerprint_uri = fs.join(staging, resume.FINGERPRINT)
    before = resume.read_json_z(fingerprint_uri) if cfg.resume else None
    changes = resume.summarize_changes(resume.listing_changes(before, now)) if before is not None else {}
    done = resume.kept_results(fs.join(staging, TASKS), fs.join(staging, resume.PLAN), tasks)
    files: dict[str, set[str]] = defaultdict(set)
    rejected: Counter[str] = Counter()
    for r in done.values():
        files[r["split"]].update(r["files"])
        rejected.update(reject[0] for reject in r["rejects"])
    deleted = resume.sweep(staging, layouts.SPLITS, REJECTS, files, rejected)
    fs.write_text_atomic(fs.join(staging, resume.PLAN), json.dumps({t["id"]: t["key"] for t in tasks}))
    resume.write_json_z(fingerprint_uri, now)
    if cfg.resume:
        log.info("--resume: input since the interrupted run: %s; %d of %d tasks committed with unchanged inputs "
                 "are kept, %d stale file(s) deleted from staging", json.dumps(changes) if changes else
                 "no fingerprint to compare", len(done), len(tasks), len(deleted))
    return done, changes


def dry_run_report(listing: layouts.Listing, cfg: PartitionConfig, sample: int = 16) -> dict[str, Any]:
    """What would be read and roughly how much would be written, from a small sample processed locally."""
    counts = listing.counts()
    in_bytes = listing.input_bytes()
    sampled_in = sampled_out = 0
    usable = [i for i in listing.items if not i.reject and i.size > 0]
    step = max(1, len(usable) // sample)
    for item in usable[::step][:sample]:
        data = fs.read_bytes(item.uri, item.offset, item.size)
        result = images.process_image(data, filename=item.filename, resize_short=cfg.resize_short,
                                      quality=cfg.quality, max_pixels=cfg.max_pixels)
        if isinstance(result, images.Processed):
            sampled_in += len(data)
            sampled_out += len(result.data)
    ratio = sampled_out / sampled_in if sampled_in else 1.0
    return {
        "layout": listing.layout,
        "input": listing.root,
        "classes": len(listing.classes),
        "counts": counts,
        "archives": [asdict(a) for a in listing.archives],
        "skipped": len(listing.skipped),
        "listed_rejects": sum(1 for i in listing.items if i.reject),
        "input_bytes": in_bytes,
        "estimated_output_bytes": int(in_bytes * ratio),
        "sampled_images": sample if usable else 0,
    }


def _labels_text(listing: layouts.Listing) -> str:
    return "".join(f"{i}\t{c}\t{listing.names.get(c, c)}\n" for i, c in enumerate(listing.classes))


def _empty_classes(listing: layouts.Listing, per_split: dict[str, Counter[str]]) -> dict[str, list[str]]:
    """Per split, the classes with no image written: an empty class folder, or every image rejected.

    Why they stay classes (in labels.txt, label indices unchanged): removing one would shift the label of
    every class after it, so a dataset rebuilt once images are added would silently disagree with models
    trained before. They are listed here and logged, since a class without training images cannot be learnt."""
    splits = {i.split for i in listing.items} | {a.split for a in listing.archives}
    out = {}
    for split in sorted(splits):
        empty = [c for c in listing.classes if not per_split.get(split, Counter()).get(c)]
        if empty:
            out[split] = empty
            log.warning("%s: %d class(es) have no image (kept in labels.txt so label indices do not shift; listed "
                        "in manifest.json empty_classes): %s%s", split, len(empty), ", ".join(empty[:10]),
                        " ..." if len(empty) > 10 else "")
    return out


def efficiency(work_seconds: float, slots: int, wall_time: float) -> float:
    """Executor work seconds over slot seconds (slots x wall): the share of the cluster's time spent in the
    tasks' own work. The rest is overhead (Spark's per-task cost, driver-side listing and publishing, slots
    idle at the start and the end)."""
    return round(work_seconds / (slots * wall_time), 3) if slots > 0 and wall_time > 0 else 0.0


def build_manifest(cfg: PartitionConfig, listing: layouts.Listing, results: list[dict[str, Any]],
                   wall_time: float, resumed: int = 0, tasks: list[dict[str, Any]] | None = None,
                   slots: int = 0) -> dict[str, Any]:
    """The manifest: everything a person or a program needs to trust (or debug) the dataset.

    ``results`` holds every task's result, including those committed by an earlier, interrupted run
    (``resumed`` of them); rates are computed over the work done by this run only. ``tasks``: this run's plan
    (planned again from the listing when omitted). ``slots``: the Spark task slots the job ran on (0 when
    unknown), for ``efficiency``.

    Raises PartitionError (a bug, never bad input) unless every listed input name is in exactly one of
    written, rejected and skipped (``resume.accounting_problems``): what a published dataset promises."""
    per_split: dict[str, Counter[str]] = defaultdict(Counter)
    rejects = []
    conversions: dict[str, list[str]] = defaultdict(list)
    row_groups: dict[str, dict[str, list[int]]] = defaultdict(dict)
    inputs = written = in_bytes = out_bytes = 0
    inputs_now = sum(r["inputs"] for r in results[resumed:])
    for r in sorted(results, key=lambda r: r["id"]):
        inputs += r["inputs"]
        written += r["written"]
        in_bytes += r["input_bytes"]
        out_bytes += r["bytes_written"]
        # "counts" per class (a packed task covers several); results of older runs name one "synset"
        for synset, n in (r["counts"] if "counts" in r else {r["synset"]: r["written"]} if r["synset"] else {}).items():
            per_split[r["split"]][synset] += n
        for fname, reason, detail in r["rejects"]:
            rejects.append({"filename": fname, "split": r["split"], "reason": reason, "detail": detail})
        for fname, kinds in r["conversions"].items():
            for kind in kinds:
                conversions[kind].append(fname)
        row_groups[r["split"]].update(r["files"])
    skipped = list(listing.skipped) + [tuple(s) for r in results for s in r.get("skipped", ())]
    by_reason = Counter(r["reason"] for r in rejects)
    plan = tasks if tasks is not None else plan_tasks(listing, cfg.images_per_task)
    listed, problems = resume.accounting_problems(listing, plan, results)
    if problems or written + len(rejects) + len(skipped) != listed:
        raise PartitionError(f"inputs not accounted for: {listed} listed, {written} written + {len(rejects)} rejected "
                             f"+ {len(skipped)} skipped. {problems} This is a bug (nothing was published); please "
                             "report it with the job's log.")
    return {
        "format": DATASET_FORMAT,
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": to_dict(cfg),
        "versions": _versions(),
        "layout": listing.layout,
        "num_classes": len(listing.classes),
        "totals": {"listed": listed, "inputs": inputs, "written": written, "rejected": len(rejects),
                   "skipped": len(skipped)},
        "counts": {s: dict(sorted(c.items())) for s, c in sorted(per_split.items())},
        "empty_classes": _empty_classes(listing, per_split),
        "split_sizes": {s: sum(c.values()) for s, c in sorted(per_split.items())},
        "row_groups": {s: sum(len(g) for g in v.values()) for s, v in sorted(row_groups.items())},
        "rows_per_row_group": cfg.rows_per_row_group,
        "sharding_rule": "row group i of a split (sorted file order) goes to worker i mod N; "
                         "N workers need at least N row groups",
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "rejects": rejects,
        "conversions": {k: sorted(v) for k, v in sorted(conversions.items())},
        "conversion_counts": {k: len(v) for k, v in sorted(conversions.items())},
        "skipped": [{"filename": f, "why": why} for f, why in skipped],
        "bytes": {"input": in_bytes, "written": out_bytes,
                  "per_image": round(out_bytes / written, 1) if written else 0},
        "wall_time_s": round(wall_time, 2),
        "resumed_tasks": resumed,
        "executor_peak_rss_mb": max((r.get("peak_rss_mb", 0) for r in results), default=0),
        "executor_seconds": round(sum(r["seconds"] for r in results), 2),
        "images_per_s": round(inputs_now / wall_time, 1) if wall_time > 0 else 0,
        "tasks": {"planned": len(plan), "run": len(results) - resumed},
        "slots": slots,
        "efficiency": efficiency(sum(r["seconds"] for r in results[resumed:]), slots, wall_time),
        "_row_group_rows": {s: dict(sorted(v.items())) for s, v in sorted(row_groups.items())},
    }


def _publish(cfg: PartitionConfig, staging: str, manifest: dict[str, Any], listing: layouts.Listing) -> None:
    """Move the staged splits into place; manifest.json goes last and marks the dataset finished.

    A driver that dies between two moves leaves some splits in the output and the rest in staging, and no
    manifest (so nothing reads it as finished). ``_publishing.json`` lists what this publish moves, so the
    ``--resume`` run first moves those back into staging and publishes everything again."""
    schema = imagenet_schema()
    marker = fs.join(staging, PUBLISHING)
    if fs.exists(marker):
        for name in json.loads(fs.read_text(marker)):
            if not fs.exists(fs.join(staging, name)) and fs.exists(fs.join(cfg.output, name)):
                log.info("--resume: the interrupted publish had moved %s; moving it back to staging", name)
                fs.move(fs.join(cfg.output, name), fs.join(staging, name))
    # Only what the manifest accounts for is published: partial files of failed task attempts, and anything a
    # task left without committing its result, are removed (written-and-rejected twice is impossible after this).
    files = {split: set(rows) for split, rows in manifest["_row_group_rows"].items()}
    rejected = Counter(r["filename"] for r in manifest["rejects"])
    for path in resume.sweep(staging, layouts.SPLITS, REJECTS, files, rejected):
        log.info("publish: removed %s from staging (no committed task accounts for it)", path)
    for split, files in manifest["_row_group_rows"].items():
        if not files:  # every input of this split was rejected (the threshold allowed it)
            continue
        write_petastorm_metadata(fs.join(staging, split), schema, files)
    fs.write_text_atomic(fs.join(staging, LABELS), _labels_text(listing))
    moving = [name for name in (*layouts.SPLITS, REJECTS, LABELS, TFRECORD_DIR) if fs.exists(fs.join(staging, name))]
    fs.write_text_atomic(marker, json.dumps(moving))
    for name in (MANIFEST, LABELS, *layouts.SPLITS, REJECTS, TFRECORD_DIR):
        target = fs.join(cfg.output, name)
        if fs.exists(target):
            fs.delete(target)
    for name in moving:
        fs.move(fs.join(staging, name), fs.join(cfg.output, name))
        if cfg.inject_failure == "publish":
            raise InjectedFailure(f"inject_failure='publish': the driver stops after moving {name} (as if killed)")
    public = {k: v for k, v in manifest.items() if not k.startswith("_")}
    fs.write_text_atomic(fs.join(cfg.output, MANIFEST), jsonio.dumps(public, indent=1))
    fs.delete(staging)


def run_partition(spark: Any, cfg: PartitionConfig) -> dict[str, Any]:
    """Run the whole job with the given SparkSession; returns the manifest (or the dry-run report).

    The paths are checked before anything is listed: an output overlapping an input, or an existing directory
    this job did not make, is refused untouched. The output's lease is taken after listing and held to the
    end, so a second job on the same output is refused with the name of this one. ``--dry-run`` takes no
    lease and writes nothing."""
    from imagenet_spark.spark.preflight import with_absolute_paths

    started = time.monotonic()
    cfg = with_absolute_paths(cfg, "input", "output", "labels_file", "val_labels")
    _check_paths(cfg)
    listing = layouts.discover(cfg.input, layout=cfg.layout, val_labels=cfg.val_labels, labels_file=cfg.labels_file)
    _check_classes(listing)
    log.info("listed %d inputs (+%d archives) in %d classes, layout %s, %.1f s", len(listing.items),
             len(listing.archives), len(listing.classes), listing.layout, time.monotonic() - started)
    if cfg.dry_run:
        report = dry_run_report(listing, cfg)
        log.info("dry run: %s", json.dumps({k: v for k, v in report.items() if k != "archives"}))
        return report
    with ownership.Lease("output", cfg.output, f"imagenet-spark partition {cfg.input} -> {cfg.output}"):
        return _run_leased(spark, cfg, listing, started)


def _run_leased(spark: Any, cfg: PartitionConfig, listing: layouts.Listing, started: float) -> dict[str, Any]:
    """The job while it holds the output's lease: claim the output, stage, run the tasks not yet committed
    with unchanged inputs, account for every input, publish."""
    from imagenet_spark.spark.jobs import run_tasks  # the only Spark-facing piece
    from imagenet_spark.spark.preflight import ReadCheck, WriteCheck, check_executor_access

    if cfg.resume and fs.exists(fs.join(cfg.output, MANIFEST)) and not fs.exists(fs.join(cfg.output, STAGING)):
        log.info("--resume: %s is already a finished dataset; nothing to do", cfg.output)
        return json.loads(fs.read_text(fs.join(cfg.output, MANIFEST)))
    staging = _check_output(cfg)
    sample = next((i.uri for i in listing.items if i.uri and not i.reject),
                  listing.archives[0].uri if listing.archives else None)
    # Executors read the inputs and write the output: check they can, and that it is the driver's storage.
    check_executor_access(spark, read=[ReadCheck("input", cfg.input, sample)] if sample else [],
                          write=[WriteCheck("output", cfg.output)],
                          tasks=max(2, spark.sparkContext.defaultParallelism))
    fs.make_dirs(staging)
    stats = resume.input_stats(listing)
    slots = spark.sparkContext.defaultParallelism
    packing = _stored_pack_target(cfg, staging) or pack_target(listing, cfg.images_per_task, slots)
    tasks = plan_tasks(listing, cfg.images_per_task, stats, pack_images=packing)
    log.info("%d tasks for %d listed files (classes packed up to %d images a task, %d slots)", len(tasks),
             len(listing.items), packing, slots)
    done, changes = _check_resume(cfg, staging, listing, tasks, stats, packing)
    todo = [t for t in tasks if t["id"] not in done]
    cfg_dict = to_dict(cfg)
    results = list(done.values()) + run_tasks(
        spark, todo, lambda task: process_task(task, cfg_dict, staging),
        description=f"imagenet-spark partition {cfg.input} -> {cfg.output}", num_partitions=cfg.num_partitions,
        writes_to=staging)
    manifest = build_manifest(cfg, listing, results, time.monotonic() - started, resumed=len(done), tasks=tasks,
                              slots=slots)
    manifest["pack_images"] = packing
    if cfg.resume:
        manifest["input_changes"] = changes
    totals = manifest["totals"]
    fraction = totals["rejected"] / totals["inputs"] if totals["inputs"] else 1.0
    if totals["written"] == 0 or fraction > cfg.max_reject_fraction:
        fs.write_text_atomic(fs.join(staging, MANIFEST), jsonio.dumps(manifest, indent=1))
        raise PartitionError(
            f"{totals['rejected']} of {totals['inputs']} inputs rejected ({fraction:.1%}), more than "
            f"max_reject_fraction={cfg.max_reject_fraction}; nothing was published. Reasons: "
            f"{manifest['rejects_by_reason']}. See {fs.join(staging, MANIFEST)} and {fs.join(staging, REJECTS)}/. "
            "Fix the inputs, or raise max_reject_fraction (--set max_reject_fraction=...) and rerun with --resume "
            "(only the tasks whose inputs or labels changed are redone)."
        )
    if cfg.tfrecord:
        from imagenet_spark.data.tfrecord import write_tfrecords  # imports TF on executors only

        write_tfrecords(spark, staging, manifest, cfg)
    manifest["wall_time_s"] = round(time.monotonic() - started, 2)
    work = sum(r["seconds"] for r in results[len(done):]) + manifest.get("tfrecord", {}).get("seconds", 0)
    manifest["efficiency"] = efficiency(work, slots, manifest["wall_time_s"])
    _publish(cfg, staging, manifest, listing)
    log.info("published %s: %d written, %d rejected, %d skipped; %.1f s (%d tasks resumed, %.0f inputs/s, "
             "efficiency %.2f)", cfg.output, totals["written"], totals["rejected"], totals["skipped"],
             manifest["wall_time_s"], len(done), manifest["images_per_s"], manifest["efficiency"])
    return {k: v for k, v in manifest.items() if not k.startswith("_")}
