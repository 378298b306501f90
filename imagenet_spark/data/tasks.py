"""The partition job's tasks and their results: typed, frozen records, and the deterministic plan.

Why records: a task crosses the driver → executor boundary, its result crosses back and is stored in staging
(``_tasks/``) for ``--resume``. As plain dicts of 7-tuples they were read by key and by position in four
modules; here each field is named once, and both directions use the package's one serialisation idiom
(:func:`imagenet_spark.config.to_dict` / :func:`~imagenet_spark.config.from_dict`).

Why planning lives here, beside the records (no Spark): the plan is a pure function of the listing. A driver
lists inputs, cuts them into *units* of at most ``images_per_task`` images of one split and one synset (one
Parquet file each), and packs consecutive small units into one *task* (about three tasks per Spark slot, never
over ``images_per_task`` images): a Spark task costs ~30 ms of a slot whatever it does, which on a tree of many
small classes used to be most of the job. Tasks are deterministic, so ``--resume`` can skip the ones already
done, and a retried Spark task rewrites the same file names (no duplicate rows).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from imagenet_spark.config import from_dict
from imagenet_spark.data import layouts, resume
from imagenet_spark.errors import ImagenetSparkError

TaskKind = Literal["files", "archive"]
REJECTED = "_rejected"  # the pseudo-synset of inputs rejected at listing time (never a class, never published)

# A packed task holds at most this many input bytes (bounds a retry's cost and the task's reading time when
# images are unusually large); the image count is the usual limit.
PACK_MAX_BYTES = 256 << 20
# Packing aims at this many tasks per slot: enough to balance slots of uneven speed, few enough that Spark's
# per-task cost (~30 ms of a slot on local[2], bench/partition_overhead.py) stays small beside the work.
TASKS_PER_SLOT = 3
# Below this many images a packed task costs more in Spark overhead than it gains in balance.
PACK_MIN_IMAGES = 32


class PartitionError(ImagenetSparkError, RuntimeError):
    """The job cannot finish as asked; the message says what happened and where to look."""


@dataclass(frozen=True)
class InputItem:
    """One listed input of a unit: where to read it, its name, and a reject decided at listing time."""

    uri: str
    filename: str
    offset: int
    size: int
    synset: str
    reject: str
    detail: str

    def key_fields(self) -> list[Any]:
        """The fields in the order the resume key has always hashed them (a staging dir from before resumes)."""
        return [self.uri, self.filename, self.offset, self.size, self.synset, self.reject, self.detail]


@dataclass(frozen=True)
class Unit:
    """One split × one synset × at most ``images_per_task`` inputs: one ``synset=<synset>/part-<index>`` file."""

    id: str
    split: str
    synset: str
    label: int
    index: int
    items: tuple[InputItem, ...]


@dataclass(frozen=True)
class ArchiveRef:
    """A per-class tar, read in place: ``offset``/``size`` locate it inside an outer tar (-1: a file of its own)."""

    uri: str
    filename: str
    offset: int
    size: int


@dataclass(frozen=True, kw_only=True)
class PartitionTask:
    """One Spark task: packed file units (``kind="files"``), or one archive expanded on the executor.

    The id is the first unit's (or ``<split>/<synset>/archive``), so result files and ``inject_failure``
    prefixes name a split and a class. ``key`` hashes exactly what the task covers (:func:`resume.task_key`)."""

    id: str
    kind: TaskKind
    split: str
    units: tuple[Unit, ...] = ()
    synset: str = ""  # archive tasks: the class the archive holds
    label: int = -1
    archive: ArchiveRef | None = None
    key: str = ""

    def items(self) -> list[InputItem]:
        """The listed inputs of a files task, over all its units (classes packed together), in order."""
        return [item for unit in self.units for item in unit.items]

    def ids(self) -> list[str]:
        """The task's id and those of its units (a class packed into another class's task keeps its name)."""
        return [self.id, *(unit.id for unit in self.units)]


@dataclass(frozen=True, kw_only=True)
class TaskResult:
    """What one task did, input by input; written to staging after the task's Parquet files are in place.

    ``counts``: images written per class (a packed task covers several). ``files``: per Parquet file
    (``synset=X/part-N.parquet``), the rows of each row group. ``rejects``: (name, reason, detail)."""

    id: str
    split: str
    counts: dict[str, int]
    inputs: int
    written: int
    rejects: tuple[tuple[str, str, str], ...] = ()
    conversions: dict[str, list[str]] = field(default_factory=dict)
    skipped: tuple[tuple[str, str], ...] = ()
    files: dict[str, list[int]] = field(default_factory=dict)
    input_bytes: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0  # of the executor's Python worker so far (0: a result written before it was measured)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> TaskResult:
        """A result as stored in ``_tasks/``; one written before packing names its one ``synset`` instead of
        ``counts``."""
        if "counts" not in value:
            values = {k: v for k, v in value.items() if k != "synset"}
            synset = value.get("synset")
            value = {**values, "counts": {synset: value["written"]} if synset else {}}
        return from_dict(cls, value)


def pack_target(listing: layouts.Listing, images_per_task: int, slots: int) -> int:
    """Images a packed task aims at: a third of a slot's share of the listed files, between
    ``PACK_MIN_IMAGES`` and ``images_per_task`` (which also caps a file), lowered by up to a quarter where
    that makes the tasks fill whole rounds of the slots (:func:`_whole_rounds`)."""
    share = math.ceil(len(listing.items) / max(1, slots * TASKS_PER_SLOT))
    target = max(1, min(images_per_task, max(PACK_MIN_IMAGES, share)))
    return _whole_rounds(_units(listing, images_per_task), target, slots, extra_tasks=len(listing.archives))


def _whole_rounds(units: list[Unit], target: int, slots: int, extra_tasks: int) -> int:
    """The largest pack target from ``target`` down to three quarters of it (not below ``PACK_MIN_IMAGES``)
    whose tasks, with ``extra_tasks`` (archives), are a multiple of ``slots``; ``target`` when none is. Why:
    with one task more than whole rounds, one slot works through the last task alone while the others idle.
    On issue #13's tree (5,200 images, 2 slots) that was 21 tasks, the 21st alone for its ~0.8 s."""
    if slots <= 1:
        return target
    for candidate in range(target, max(PACK_MIN_IMAGES, (3 * target) // 4) - 1, -1):
        if (len(_pack(units, candidate)) + extra_tasks) % slots == 0:
            return candidate
    return target


def _units(listing: layouts.Listing, images_per_task: int) -> list[Unit]:
    """The file units, sorted; each becomes one Parquet file (the dataset layout does not depend on packing).

    Items already rejected at listing time (unknown class, unlabelled validation file) get units of their
    own under the pseudo-synset ``_rejected`` so their bytes still reach the rejects table."""
    labels = listing.label_of()
    groups: dict[tuple[str, str], list[layouts.Item]] = defaultdict(list)
    for item in listing.items:
        groups[(item.split, REJECTED if item.reject else item.synset)].append(item)
    units = []
    for (split, synset), items in sorted(groups.items()):
        items.sort(key=lambda i: i.filename)
        for index, start in enumerate(range(0, len(items), images_per_task)):
            chunk = items[start:start + images_per_task]
            units.append(Unit(
                id=f"{split}/{synset}/{index:05d}", split=split, synset=synset, label=labels.get(synset, -1),
                index=index, items=tuple(InputItem(i.uri, i.filename, i.offset, i.size, i.synset, i.reject, i.detail)
                                         for i in chunk)))
    return units


def _pack(units: list[Unit], pack_images: int | None) -> list[list[Unit]]:
    """Consecutive units of one split, greedily, while the pack stays within ``pack_images`` images and
    ``PACK_MAX_BYTES``; a unit at or over the target is a pack of its own. ``None``: one unit per pack.

    Deterministic (sorted units, counts and sizes only). Packs are sized by image count first, so a file
    whose bytes change moves no boundary unless the byte cap is reached; a file added or removed may move
    the boundaries after it in its split, which redoes those packs on ``--resume`` (never keeps a stale one)."""
    if pack_images is None:
        return [[u] for u in units]
    packs: list[list[Unit]] = []
    count = size = 0
    for unit in units:
        n = len(unit.items)
        b = sum(max(0, item.size) for item in unit.items)
        fits = packs and packs[-1][0].split == unit.split and count + n <= pack_images \
            and size + b <= PACK_MAX_BYTES
        if fits:
            packs[-1].append(unit)
            count, size = count + n, size + b
        else:
            packs.append([unit])
            count, size = n, b
    return packs


def plan_tasks(listing: layouts.Listing, images_per_task: int, stats: dict[str, tuple[int, int]] | None = None,
               pack_images: int | None = None) -> list[PartitionTask]:
    """Deterministic tasks: packs of file units (:func:`_units`, :func:`_pack`), then one task per archive.

    Each task's ``key`` hashes exactly what it covers (``resume.task_key``; ``stats`` adds each input's size
    and mtime): a changed input, or a label fixed, changes the key of the task it is in, and ``--resume``
    redoes exactly those tasks (a pack or slice boundary that moved changes the keys of the tasks it moved)."""
    labels = listing.label_of()
    tasks = [PartitionTask(id=pack[0].id, kind="files", split=pack[0].split, units=tuple(pack))
             for pack in _pack(_units(listing, images_per_task), pack_images)]
    for archive in sorted(listing.archives, key=lambda a: (a.split, a.synset)):
        tasks.append(PartitionTask(
            id=f"{archive.split}/{archive.synset}/archive", kind="archive", split=archive.split,
            synset=archive.synset, label=labels[archive.synset],
            archive=ArchiveRef(archive.uri, archive.filename, archive.offset, archive.size)))
    return [dataclasses.replace(t, key=resume.task_key(t, stats or {})) for t in tasks]
