"""What an interrupted partition run left in staging, and what of it a ``--resume`` may keep.

Why this exists: a resumed run used to trust every task result on disk. Files added, removed or changed
since, or a fixed labels file, shift the deterministic slices (``plan_tasks``), so results of the old
slices were kept beside new ones: inputs silently dropped, or an image both written and rejected. Here:

* Every task carries a *key*: a hash of exactly what it covers (task id; per unit, i.e. per class file of a
  packed task, its id and label index, and per input its name, size, mtime, synset and listing-time reject
  reason; for an archive, the archive's). Same key, same
  output: a result is reused only when the key it was computed under (``_plan.json``) equals the current one.
* The listing's *fingerprint* (per input name: size and mtime; a hash of each labels file) is stored at the
  first run, so a resume can say what changed (added, removed, changed, labels files changed).
* Whatever staging holds that no kept result accounts for (output of stale tasks, partial files of tasks
  that died between writing and committing) is deleted before any task runs and again before publishing.
* :func:`accounting_problems` proves, for the manifest, that every listed input name is in exactly one of
  written, rejected and skipped.

No Spark here; the driver (``imagenet_spark.jobs.partition``) calls these around the Spark job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from imagenet_spark.config import ConfigError, PartitionConfig
from imagenet_spark.data import fs, layouts
from imagenet_spark.layout import LABELS, DatasetDir

if TYPE_CHECKING:  # tasks.plan_tasks calls task_key: the records are imported for annotations only
    from imagenet_spark.data.tasks import PartitionTask, TaskResult

log = logging.getLogger(__name__)

# Labels files a layout reads from the input root (besides the labels_file / val_labels settings).
LABEL_FILES = ("synset_labels.txt", "validation/synset_labels.txt", "LOC_val_solution.csv", "LOC_synset_mapping.txt",
               "train.csv", "validation.csv", "val.csv", LABELS)
_NO_STAT = (-1, -1)
# Settings that change every task's output: a resume must keep them. The others may change on --resume:
# max_reject_fraction, num_partitions, tfrecord; labels_file and val_labels reach the task keys (a fixed
# labels file redoes the tasks whose labels it changed).
RUN_KEYS = ("input", "layout", "resize_short", "quality", "max_pixels", "images_per_task", "rows_per_row_group")
PACK_KEY = "pack_images"  # in run.json beside RUN_KEYS: the packing target, derived (not a setting)


def input_stats(listing: layouts.Listing) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) per input URI of the listing (items and archives; -1 where unknown).

    Local files are stat'ed one by one (cheap); a remote root is listed once recursively (one LIST per
    1000 objects instead of a HEAD per object), with single lookups only for URIs outside that listing."""
    uris = {i.uri for i in listing.items if i.uri} | {a.uri for a in listing.archives}
    stats: dict[str, tuple[int, int]] = {}
    if "://" in fs.normalize(listing.root) and fs.is_dir(listing.root):
        filesystem, root = fs.resolve(listing.root)
        for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
            if info.type == pafs.FileType.File:
                stats[fs.rebase(listing.root, info.path)] = (info.size, info.mtime_ns or -1)
    for uri in uris - stats.keys():
        normalized = fs.normalize(uri)
        if "://" not in normalized:
            try:
                st = os.stat(normalized)
            except OSError:
                continue
            stats[uri] = (st.st_size, st.st_mtime_ns)
            continue
        filesystem, path = fs.resolve(uri)
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.File:
            stats[uri] = (info.size, info.mtime_ns or -1)
    return {u: stats.get(u, _NO_STAT) for u in uris}


def task_key(task: PartitionTask, stats: dict[str, tuple[int, int]]) -> str:
    """A hash of everything a task's output depends on besides the run settings (``run.json`` pins those):
    for a files task, per unit (one class's file) its id and label and per input its listing and stat.

    The material is the JSON the keys have always hashed (tests/test_partition_records.py pins known keys),
    so a staging dir written by an earlier version resumes."""
    if task.archive is not None:
        a = task.archive
        covered: Any = [task.label, [a.uri, a.filename, a.offset, a.size], list(stats.get(a.uri, _NO_STAT))]
    else:
        covered = [[unit.id, unit.label, [[*item.key_fields(), *stats.get(item.uri, _NO_STAT)] for item in unit.items]]
                   for unit in task.units]
    material = json.dumps([task.id, covered], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def fingerprint(listing: layouts.Listing, stats: dict[str, tuple[int, int]],
                labels: dict[str, str]) -> dict[str, Any]:
    """Per input name [size, mtime_ns]; per labels file (setting or name in the root) its sha256.

    ``labels`` maps a name to a URI (the labels_file / val_labels settings); the layout's own labels files
    found in the input root are added."""
    files: dict[str, list[int]] = {}
    for item in listing.items:
        size, mtime = stats.get(item.uri, _NO_STAT)
        files[item.filename] = [item.size if item.size >= 0 else size, mtime]
    for archive in listing.archives:
        files[archive.filename] = [archive.size, stats.get(archive.uri, _NO_STAT)[1]]
    candidates = dict(labels)
    if fs.is_dir(listing.root):
        candidates.update({name: fs.join(listing.root, name) for name in LABEL_FILES})
    hashes = {name: hashlib.sha256(fs.read_bytes(uri)).hexdigest()
              for name, uri in sorted(candidates.items()) if uri and fs.is_file(uri)}
    return {"files": files, "labels": hashes}


def listing_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed between two fingerprints: names added, removed, changed (size or mtime), labels files."""
    before, after = old.get("files", {}), new["files"]
    old_labels, new_labels = old.get("labels", {}), new["labels"]
    return {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": sorted(f for f in after.keys() & before.keys() if list(after[f]) != list(before[f])),
        "labels_changed": sorted(n for n in old_labels.keys() | new_labels.keys()
                                 if old_labels.get(n) != new_labels.get(n)),
    }


def summarize_changes(changes: dict[str, Any], shown: int = 10) -> dict[str, Any]:
    """Counts and the first few names of each kind of change (the manifest's and the log's view)."""
    out: dict[str, Any] = {}
    for kind in ("added", "removed", "changed"):
        names = changes.get(kind, [])
        out[kind] = len(names)
        if names:
            out[f"{kind}_first"] = names[:shown]
    out["labels_changed"] = changes.get("labels_changed", [])
    return out


def read_json_z(uri: str) -> Any:
    return json.loads(zlib.decompress(fs.read_bytes(uri)).decode("utf-8")) if fs.exists(uri) else None


def write_json_z(uri: str, value: Any) -> None:
    """Write then rename (a reader never sees half of it)."""
    fs.write_bytes(uri + ".tmp", zlib.compress(json.dumps(value).encode("utf-8"), 5))
    fs.move(uri + ".tmp", uri)


def kept_results(tasks_dir: str, plan_uri: str, tasks: list[PartitionTask]) -> dict[str, TaskResult]:
    """The committed results a resume may reuse: those of a task still planned, computed under the same key.

    Every other result file is deleted here, before the caller writes the new plan: a crash in between then
    leaves results that are merely missing (redone next time), never results trusted under the wrong key.
    Staging without a plan (written before keys existed) keeps nothing."""
    from imagenet_spark.data.tasks import TaskResult  # here: data.tasks imports this module for task_key

    previous = json.loads(fs.read_text(plan_uri)) if fs.exists(plan_uri) else {}
    current = {t.id: t.key for t in tasks}
    kept: dict[str, TaskResult] = {}
    stale = []
    entries = fs.list_files(tasks_dir) if fs.exists(tasks_dir) else []
    for entry in entries:
        result = json.loads(fs.read_text(entry.uri)) if entry.relpath.endswith(".json") else None
        task_id = result.get("id") if isinstance(result, dict) else None
        if isinstance(task_id, str) and task_id in current and previous.get(task_id) == current[task_id] \
                and task_id not in kept:
            kept[task_id] = TaskResult.from_json(result)  # type: ignore[arg-type]
        else:
            stale.append(entry.uri)
    if entries and not previous:
        log.warning("--resume: %s has no task plan (staging of an older version); redoing every task", tasks_dir)
    for uri in stale:
        fs.delete(uri)
    return kept


def sweep(staging: str, splits: Iterable[str], rejects: str, files: dict[str, set[str]],
          rejected: Counter[str]) -> list[str]:
    """Delete from staging what no kept result accounts for; returns the paths deleted (relative to staging).

    ``files``: per split, the Parquet files (``synset=X/part-N.parquet``) of kept results; other ``.parquet``
    and ``.tmp`` files under a split are output of stale tasks or of attempts that died before committing.
    ``rejected``: the names kept results rejected (with multiplicity); a rejects file is kept only when every
    name in it is one of those not already covered by an earlier kept file, so no name is quarantined twice
    and no stale reject survives, however the rejects files are named."""
    deleted = []
    for split in splits:
        root = fs.join(staging, split)
        if not fs.exists(root):
            continue
        for entry in fs.list_files(root):
            ours = entry.relpath.endswith(".parquet") or entry.relpath.endswith(".tmp")
            if ours and entry.relpath not in files.get(split, set()):
                fs.delete(entry.uri)
                deleted.append(f"{split}/{entry.relpath}")
    root = fs.join(staging, rejects)
    remaining = Counter(rejected)
    for entry in fs.list_files(root) if fs.exists(root) else []:
        names = []
        if entry.relpath.endswith(".parquet"):
            filesystem, path = fs.resolve(entry.uri)
            names = pq.read_table(path, columns=["filename"], filesystem=filesystem).column("filename").to_pylist()
        need = Counter(names)
        if names and all(remaining[n] >= c for n, c in need.items()):
            remaining.subtract(need)
            continue
        fs.delete(entry.uri)
        deleted.append(f"{rejects}/{entry.relpath}")
    _remove_empty_dirs(staging, deleted)
    return deleted


def _remove_empty_dirs(staging: str, deleted: list[str]) -> None:
    """Remove the folders the deletions left empty (deepest first, up to the split or rejects folder itself):
    an empty ``rejects/split=x/`` published would be a Parquet dataset with no file and no schema."""
    folders = {posixpath.dirname(path) for path in deleted}
    for path in list(folders):
        while "/" in path:
            path = posixpath.dirname(path)
            folders.add(path)
    for folder in sorted(folders, key=lambda f: (-f.count("/"), f)):
        uri = fs.join(staging, folder)
        if folder and fs.is_dir(uri) and not fs.list_dir(uri):
            fs.delete(uri)


def accounting_problems(listing: layouts.Listing, tasks: list[PartitionTask],
                        results: list[TaskResult]) -> tuple[int, str]:
    """(inputs listed, '' or what is wrong): every listed name must be written, rejected or skipped, once.

    The driver knows each file task's input names, so for those the check is per name (written = the task's
    names minus those it rejected). Archive members are known only to the task that expanded them: they count
    as listed as the task reports them, and their rejected or skipped names must still be distinct."""
    by_id = {t.id: t for t in tasks}
    listed = Counter(i.filename for i in listing.items) + Counter(name for name, _why in listing.skipped)
    seen = Counter(name for name, _why in listing.skipped)
    members = 0
    problems = []
    unplanned = sorted(r.id for r in results if r.id not in by_id)
    if unplanned:
        problems.append(f"{len(unplanned)} result(s) of tasks not in this run's plan: {unplanned[:5]}")
    missing_results = sorted(by_id.keys() - {r.id for r in results})
    if missing_results:
        problems.append(f"{len(missing_results)} planned task(s) have no result: {missing_results[:5]}")
    for r in results:
        task = by_id.get(r.id)
        rejected = [reject[0] for reject in r.rejects]
        skipped = [s[0] for s in r.skipped]
        seen.update(rejected)
        seen.update(skipped)
        if task is None:
            continue
        if task.kind == "archive":
            listed.update(rejected)
            listed.update(skipped)
            members += r.written
            continue
        rejected_here = set(rejected)
        written = [item.filename for item in task.items() if item.filename not in rejected_here]
        if len(written) != r.written:
            problems.append(f"task {r.id}: {r.written} written but {len(written)} of its inputs not rejected")
        seen.update(written)
    doubled = sorted(n for n, c in seen.items() if c > listed.get(n, 0))
    lost = sorted(n for n, c in listed.items() if seen.get(n, 0) < c)
    if doubled:
        problems.append(f"{len(doubled)} name(s) accounted for more often than listed: {doubled[:5]}")
    if lost:
        problems.append(f"{len(lost)} listed name(s) neither written, rejected nor skipped: {lost[:5]}")
    return sum(listed.values()) + members, "; ".join(problems)


def stored_pack_target(cfg: PartitionConfig, staging: DatasetDir) -> int | None:
    """On ``--resume``, the packing target of the interrupted run (``run.json``): the plan must not change
    with the cluster's size (a resume on other hardware would redo every task); None when there is none."""
    if not cfg.resume or not fs.exists(staging.run_json):
        return None
    stored = json.loads(fs.read_text(staging.run_json)).get(PACK_KEY)
    return stored if isinstance(stored, int) and stored > 0 else None


def _check_run_settings(cfg: PartitionConfig, staging: DatasetDir, packing: int | None) -> None:
    """Refuse a resume whose output settings differ from the interrupted run's; store them on a first run."""
    current = {k: getattr(cfg, k) for k in RUN_KEYS}
    if fs.exists(staging.run_json):
        previous = json.loads(fs.read_text(staging.run_json))
        changed = {k: (previous.get(k), v) for k, v in current.items() if previous.get(k) != v}
        if changed:
            key, (old, new) = next(iter(changed.items()))
            raise ConfigError(key, new, f"differs from the interrupted run being resumed ({old!r}).",
                              "resume with the same settings, or pass --overwrite to start over.")
    else:
        fs.write_text_atomic(staging.run_json, json.dumps({**current, PACK_KEY: packing}))


def reconcile(cfg: PartitionConfig, staging: DatasetDir, listing: layouts.Listing, tasks: list[PartitionTask],
              stats: dict[str, tuple[int, int]], packing: int | None = None) -> tuple[dict[str, TaskResult],
                                                                                       dict[str, Any]]:
    """Reconcile staging with this run; returns (the committed results to reuse, what changed in the input).

    The settings must be those of the interrupted run (``run.json``). The input is listed anew and compared
    with the fingerprint stored by the first run (added, removed, changed files; labels files changed). A
    result is reused only if its task's key is unchanged; other results, and every file in staging that no
    reused result accounts for, are deleted before any task runs, so no input is dropped and none ends up
    both written and rejected. The new fingerprint and task plan are stored for the next resume."""
    _check_run_settings(cfg, staging, packing)
    labels = {s: getattr(cfg, s) for s in ("labels_file", "val_labels") if getattr(cfg, s)}
    now = fingerprint(listing, stats, labels)
    before = read_json_z(staging.fingerprint) if cfg.resume else None
    changes = summarize_changes(listing_changes(before, now)) if before is not None else {}
    done = kept_results(staging.tasks, staging.plan, tasks)
    files: dict[str, set[str]] = defaultdict(set)
    rejected: Counter[str] = Counter()
    for r in done.values():
        files[r.split].update(r.files)
        rejected.update(reject[0] for reject in r.rejects)
    deleted = sweep(staging.root, layouts.SPLITS, DatasetDir.REJECTS, files, rejected)
    fs.write_text_atomic(staging.plan, json.dumps({t.id: t.key for t in tasks}))
    write_json_z(staging.fingerprint, now)
    if cfg.resume:
        log.info("--resume: input since the interrupted run: %s; %d of %d tasks committed with unchanged inputs "
                 "are kept, %d stale file(s) deleted from staging", json.dumps(changes) if changes else
                 "no fingerprint to compare", len(done), len(tasks), len(deleted))
    return done, changes
