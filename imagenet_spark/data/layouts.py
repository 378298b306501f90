"""Discover the inputs of the partition job: ImageNet in each of the shapes it really comes in.

Runs on the driver and only lists (plus reads small label files and tar headers); it never decodes an
image and never imports Spark. The result is a :class:`Listing`: every input file as an :class:`Item`
(or, for per-class archives, an :class:`Archive` that executors expand), the label order, and the files
deliberately skipped, each with a reason. Items already known to be unusable (a class outside the label
set, a validation labels file whose length does not match) carry a ``reject`` reason so the job still
accounts for them, bytes included.

Nothing outside the input root is read (DESIGN.md: "every input read resolves inside --input"). Every name
the input gives (a CSV row, a symlink, a tar, a labels file found in the input) is resolved first
(:class:`fs.InputRoot`); what lands outside becomes an ``outside_input_root`` reject with no ``uri``, so no
executor opens it. Symlinks inside the root are followed once: a directory is walked under one path only
(loops end), and a real file reached by several names is listed once, under the name with no symlink in it,
else the first in sorted order; the other names are skipped as ``duplicate of <name>``. A broken symlink is a
``read_error`` reject ("broken symlink"). Every listed name ends up in exactly one of items, archives (whose
members the executors account for) and skipped. Hard links are separate names of one file and are each listed.

Layouts:

``ilsvrc``   ``train/<wnid>/*.JPEG``, flat ``validation/*.JPEG`` + ``synset_labels.txt`` (Cloud TPU guide).
``tar``      ``ILSVRC2012_img_train.tar`` (one ``<wnid>.tar`` per class inside) and/or
             ``ILSVRC2012_img_val.tar``, read in place; or a folder of ``<wnid>.tar`` files.
``kaggle``   ``ILSVRC/Data/CLS-LOC/{train,val}``, ``LOC_val_solution.csv``, ``LOC_synset_mapping.txt``.
``folders``  ``<class>/*`` or ``train/<class>/*`` + ``validation/<class>/*`` (or ``val/``), any class names.
``csv``      ``train.csv`` / ``validation.csv`` (or ``val.csv``) of ``path,label``, optional ``labels.txt``.

Why this size: five short listers over one set of rules (what is read, symlinks, duplicates, rejects, label
order). The rules are most of the module and every lister must apply all of them; kept in one file, the one place
that decides what the job reads is read in one sitting.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import posixpath
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

from imagenet_spark.data import fs
from imagenet_spark.data.images import LABELS_MISMATCH, OUTSIDE_INPUT_ROOT, READ_ERROR, UNKNOWN_CLASS
from imagenet_spark.data.synsets import human_name, is_wnid
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.layout import LABELS

log = logging.getLogger(__name__)

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)
_VAL_DIRS = ("validation", "val")
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
LAYOUTS = ("ilsvrc", "tar", "kaggle", "folders", "csv")


class LayoutError(ImagenetSparkError, ValueError):
    """The input cannot be read as the layout asked for (or as any layout). Names the path and the fix."""


@dataclass(frozen=True)
class Item:
    """One input image. ``offset``/``size`` locate it inside an uncompressed archive at ``uri``."""

    uri: str
    split: str
    synset: str
    filename: str
    size: int = -1
    offset: int = -1
    reject: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Archive:
    """A tar of one class's images (ILSVRC2012's ``<wnid>.tar``), expanded member by member on an executor."""

    uri: str
    split: str
    synset: str
    filename: str
    size: int
    offset: int = -1


@dataclass(frozen=True)
class Listing:
    layout: str
    root: str
    classes: tuple[str, ...]
    names: dict[str, str]
    items: tuple[Item, ...]
    archives: tuple[Archive, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = field(default=())

    def label_of(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class as listed (archives count as -1 until expanded)."""
        out: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
        for item in self.items:
            out[item.split][item.synset if not item.reject else f"<{item.reject}>"] += 1
        return {s: dict(sorted(c.items())) for s, c in out.items() if c}

    def input_bytes(self) -> int:
        return sum(max(i.size, 0) for i in self.items) + sum(a.size for a in self.archives)


def _hidden(relpath: str) -> bool:
    return any(part.startswith(".") or part.startswith("_") for part in relpath.split("/"))


def _read_lines(uri: str) -> list[str]:
    return [line.strip() for line in fs.read_text(uri).splitlines() if line.strip()]


def _refused(walk: fs.Walk, split: str, prefix: str, class_folders: bool) -> list[Item]:
    """Rejects for the names a walk refused to open: symlinks out of the root, broken symlinks (no uri: unread)."""
    out = []
    for reason, entries in ((OUTSIDE_INPUT_ROOT, walk.outside), (READ_ERROR, walk.broken)):
        for rel, detail in entries:
            synset = rel.split("/", 1)[0] if class_folders and "/" in rel else ""
            out.append(Item("", split, synset, posixpath.join(prefix, rel), reject=reason, detail=detail))
    return out


def _class_tree(root: str, split: str, skipped: list[tuple[str, str]], prefix: str,
                within: fs.InputRoot) -> list[Item]:
    """``root/<class>/**`` → items; files directly in ``root`` are skipped (they belong to no class)."""
    walk = fs.walk(root, within)
    skipped.extend((posixpath.join(prefix, rel), why) for rel, why in walk.skipped)
    items = _refused(walk, split, prefix, class_folders=True)
    for entry in walk.files:
        rel = entry.relpath
        if _hidden(rel):
            skipped.append((posixpath.join(prefix, rel), "hidden or system file"))
            continue
        if "/" not in rel:
            skipped.append((posixpath.join(prefix, rel), f"not inside a class folder of {split}/"))
            continue
        synset = rel.split("/", 1)[0]
        items.append(Item(entry.uri, split, synset, posixpath.join(prefix, rel), entry.size))
    return items


def _flat_validation(root: str, labels: list[str] | None, labels_name: str, skipped: list[tuple[str, str]],
                     prefix: str, within: fs.InputRoot, accounted: set[str]) -> list[Item]:
    """Flat validation folder labelled by a list of synsets in sorted file-name order.

    Refused names (symlinks out of the root, broken ones) keep their place in that order, so the files after
    them still get their own labels, but keep their own reject reason. ``accounted``: names the labels-file
    lookup already recorded."""
    walk = fs.walk(root, within)
    skipped.extend((posixpath.join(prefix, rel), why) for rel, why in walk.skipped)
    refused = {i.filename: i for i in _refused(walk, VALIDATION, prefix, class_folders=False)}
    files: list[Item] = []
    for entry in walk.files:
        fname = posixpath.join(prefix, entry.relpath)
        if _hidden(entry.relpath):
            skipped.append((fname, "hidden or system file"))
        elif entry.relpath == "synset_labels.txt":
            if fname not in accounted:
                skipped.append((fname, "validation labels file"))
        else:
            files.append(Item(entry.uri, VALIDATION, "", fname, entry.size))
    extra: list[Item] = []  # refused names that take no place in the pairing (hidden, the labels file)
    for fname, item in refused.items():
        rel = fname[len(prefix):].lstrip("/")
        if fname in accounted:
            continue
        if _hidden(rel) or rel == "synset_labels.txt":
            extra.append(item)
        else:
            files.append(item)
    files.sort(key=lambda i: i.filename)
    detail = ""
    if labels is None:
        detail = f"no validation labels file ({labels_name}) found"
    elif len(labels) != len(files):
        detail = (f"{labels_name} has {len(labels)} labels for {len(files)} validation files; "
                  "cannot pair them by sorted file name")
        log.warning("%s", detail)
    out = []
    for n, item in enumerate(files):
        if item.reject:
            out.append(item)
        elif detail:
            out.append(replace(item, reject=LABELS_MISMATCH, detail=detail))
        else:
            out.append(replace(item, synset=labels[n]))  # type: ignore[index]
    return out + extra


def _input_file(root: str, names: tuple[str, ...], within: fs.InputRoot, split: str, refused: list[Item],
                accounted: set[str]) -> str | None:
    """The first of ``names`` (relative to ``root``) that is a regular file inside the input root.

    A name that exists but resolves outside the root, or is a broken symlink, is never read: it becomes a
    reject (in ``refused``; its name in ``accounted``) and the lookup goes on with the next name."""
    for name in names:
        uri, why = fs.locate(fs.join(root, name), within)
        if uri is not None:
            return uri
        if why in (fs.OUTSIDE, fs.BROKEN_LINK):
            reason = OUTSIDE_INPUT_ROOT if why == fs.OUTSIDE else READ_ERROR
            detail = (f"{name} resolves outside the input root {within.path}; not read" if why == fs.OUTSIDE
                      else f"{name}: broken symlink")
            refused.append(Item("", split, "", name, reject=reason, detail=detail))
            accounted.add(name)
    return None


def _dedupe(items: list[Item], archives: list[Archive], skipped: list[tuple[str, str]],
            within: fs.InputRoot) -> tuple[list[Item], list[Archive]]:
    """One entry per real file (or archive member): the name with no symlink in it wins, else the first in
    sorted order; the other names are skipped as ``duplicate of <name>``. Symlinks and CSV rows (``a.jpg``,
    ``./a.jpg``) can name one file several times; reading it twice would write it twice, maybe in two classes."""
    entries: list[Item | Archive] = [*items, *archives]
    by_file: dict[tuple[str, int], list[Item | Archive]] = defaultdict(list)
    for entry in entries:
        if entry.uri and not (isinstance(entry, Item) and entry.reject in (OUTSIDE_INPUT_ROOT, READ_ERROR)):
            by_file[(entry.uri, entry.offset)].append(entry)
    dropped: set[int] = set()
    for (uri, offset), named in by_file.items():
        if len(named) < 2:
            continue
        real = within.relative(uri) if offset < 0 else None
        named.sort(key=lambda e: (e.filename != real, e.filename))
        for other in named[1:]:
            skipped.append((other.filename, f"duplicate of {named[0].filename}"))
            dropped.add(id(other))
    return ([i for i in items if id(i) not in dropped], [a for a in archives if id(a) not in dropped])


def _apply_classes(items: list[Item], classes: tuple[str, ...], why: str) -> list[Item]:
    """Mark items whose class is outside ``classes`` as unknown_class rejects."""
    known = set(classes)
    out = []
    for item in items:
        if not item.reject and item.synset not in known:
            item = replace(item, reject=UNKNOWN_CLASS, detail=f"class {item.synset!r} {why}")
        out.append(item)
    return out


def _labels_order(labels_file: str | None) -> tuple[str, ...] | None:
    """Label order from a labels file: one class per line, optionally ``index<TAB>class[<TAB>name]``."""
    if not labels_file:
        return None
    if not fs.is_file(labels_file):
        raise LayoutError(f"labels_file={labels_file!r}: no such file. Fix: pass an existing labels file or drop it.")
    classes: list[str] = []
    for n, line in enumerate(_read_lines(labels_file), 1):
        parts = line.split("\t")
        cls = parts[1] if len(parts) >= 2 and parts[0].isdigit() else parts[0]
        if cls in classes:
            raise LayoutError(f"{labels_file}:{n}: class {cls!r} is listed twice. Fix: each class once.")
        classes.append(cls)
    if not classes:
        raise LayoutError(f"labels_file={labels_file!r} is empty.")
    return tuple(classes)


def _class_folders(root: str) -> list[str]:
    """Names of the (non-hidden) folders directly in ``root``: every one is a class, even with no file in it,
    so label indices do not shift when images are added later (the manifest lists it in empty_classes)."""
    if not fs.is_dir(root):
        return []
    local = "://" not in fs.normalize(root)
    # A symlinked folder names no class: its files are listed under their real folder (an alias of a class
    # folder), or not at all (a link out of the input root).
    return [e.relpath for e in fs.list_dir(root)
            if e.size < 0 and not _hidden(e.relpath) and not (local and os.path.islink(e.uri))]


def _finish(layout: str, root: str, items: list[Item], archives: list[Archive], skipped: list[tuple[str, str]],
            names: dict[str, str] | None, labels_file: str | None, wnid_only: bool,
            class_dirs: list[str] | None = None, within: fs.InputRoot | None = None) -> Listing:
    items, archives = _dedupe(items, archives, skipped, within or fs.InputRoot.of(root))
    fixed = _labels_order(labels_file)
    if fixed is not None:
        classes = fixed
        why = f"is not in labels_file {labels_file}"
    else:
        train_classes = {i.synset for i in items if i.split == TRAIN and not i.reject}
        train_classes |= {a.synset for a in archives if a.split == TRAIN} | set(class_dirs or ())
        if not train_classes:  # validation-only input: its labels define the classes
            train_classes = {i.synset for i in items if not i.reject}
        if wnid_only:
            train_classes = {c for c in train_classes if is_wnid(c)}
        classes = tuple(sorted(train_classes))
        why = "is not a WordNet id of the training set" if wnid_only else "has no training folder"
    items = _apply_classes(items, classes, why)
    known = set(classes)
    bad_archives = [a for a in archives if a.synset not in known]
    for a in bad_archives:
        items.append(Item(a.uri, a.split, a.synset, a.filename, a.size, a.offset, UNKNOWN_CLASS,
                          f"archive of class {a.synset!r} {why}"))
    archives = [a for a in archives if a.synset in known]
    if not items and not archives:
        raise LayoutError(f"input={root!r}: no image files found for layout {layout!r}. "
                          "Fix: point --input at the dataset root, or name the layout with --layout.")
    if not classes:
        raise LayoutError(f"input={root!r}: found files but no usable class for layout {layout!r}. "
                          "Fix: check the folder names / labels, or name the layout with --layout.")
    all_names = {c: human_name(c, names) for c in classes}
    return Listing(layout, root, classes, all_names, tuple(items), tuple(archives), tuple(skipped))


def list_ilsvrc(root: str, val_labels: str | None = None, labels_file: str | None = None,
                within: fs.InputRoot | None = None) -> Listing:
    within = within or fs.InputRoot.of(root)
    skipped: list[tuple[str, str]] = []
    items: list[Item] = []
    train = fs.join(root, "train")
    if fs.is_dir(train):
        items += _class_tree(train, TRAIN, skipped, "train", within)
    val_dir = next((fs.join(root, d) for d in _VAL_DIRS if fs.is_dir(fs.join(root, d))), None)
    if val_dir:
        accounted: set[str] = set()
        labels_uri = val_labels or _input_file(root, ("synset_labels.txt", "validation/synset_labels.txt"),
                                               within, VALIDATION, items, accounted)
        labels = _read_lines(labels_uri) if labels_uri else None
        prefix = posixpath.basename(val_dir)
        items += _flat_validation(val_dir, labels, labels_uri or "synset_labels.txt", skipped, prefix, within,
                                  accounted)
    return _finish("ilsvrc", root, items, [], skipped, None, labels_file, wnid_only=True, within=within,
                   class_dirs=_class_folders(fs.join(root, "train")))


def _tar_members(uri: str, label: str, skipped: list[tuple[str, str]]) -> list[tarfile.TarInfo]:
    """Headers of an uncompressed tar, read by seeking over member data (cheap even for 140 GB).

    Regular members only: a link member (symlink or hard link) is a name for another path, which we never
    follow, so it is skipped with its target; a second member of the same name is skipped as ``name#N``
    (tar allows it; extraction would keep the last, a reader of the first gets a different image)."""
    with fs.open_input(uri) as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                members = tar.getmembers()
        except tarfile.TarError as exc:
            raise LayoutError(f"{uri}: not a readable uncompressed tar archive ({exc}).") from None
    out = []
    seen: Counter[str] = Counter()
    for m in members:
        if m.isdir():
            continue
        seen[m.name] += 1
        fname = f"{label}/{m.name}" + (f"#{seen[m.name]}" if seen[m.name] > 1 else "")
        if seen[m.name] > 1:
            skipped.append((fname, "duplicate member name in the archive; the first is used"))
        elif m.issym() or m.islnk():
            skipped.append((fname, f"link member in the archive (to {m.linkname!r}); never followed"))
        elif not m.isfile():
            skipped.append((fname, "not a regular file member (device or FIFO)"))
        else:
            out.append(m)
    return out


def _tar_folder(folder: str, within: fs.InputRoot, skipped: list[tuple[str, str]], items: list[Item],
                prefix: str) -> list[Archive]:
    """The outer archive already unpacked: a folder of ``<wnid>.tar`` files, symlinks checked like any name."""
    walk = fs.walk(folder, within, recursive=False)
    archives = []
    for entry in walk.files:
        name = posixpath.join(prefix, entry.relpath)
        if entry.relpath.endswith(".tar") and entry.relpath != VAL_TAR:
            archives.append(Archive(entry.uri, TRAIN, entry.relpath[:-4], name, entry.size))
        elif not prefix and entry.relpath in (VAL_TAR, "synset_labels.txt"):
            continue  # listed beside: the validation archive and its labels
        else:
            skipped.append((name, "not a per-class .tar"))
    items += _refused(walk, TRAIN, prefix, class_folders=False)
    skipped.extend((posixpath.join(prefix, rel), why) for rel, why in walk.skipped)
    return archives


def _val_tar(root: str, val_tar: str, val_labels: str | None, within: fs.InputRoot,
             skipped: list[tuple[str, str]], items: list[Item]) -> None:
    members = sorted(_tar_members(val_tar, VAL_TAR, skipped), key=lambda m: m.name)
    labels_uri = val_labels or _input_file(root, ("synset_labels.txt",), within, VALIDATION, items, set())
    labels = _read_lines(labels_uri) if labels_uri else None
    detail = ""
    if labels is None:
        detail = "no validation labels file (synset_labels.txt) beside the archive"
    elif len(labels) != len(members):
        detail = f"{labels_uri} has {len(labels)} labels for {len(members)} validation files"
    for n, m in enumerate(members):
        fname = f"{VAL_TAR}/{m.name}"
        if detail:
            items.append(Item(val_tar, VALIDATION, "", fname, m.size, m.offset_data, LABELS_MISMATCH, detail))
        else:
            items.append(Item(val_tar, VALIDATION, labels[n], fname, m.size, m.offset_data))  # type: ignore[index]


def list_tar(root: str, val_labels: str | None = None, labels_file: str | None = None,
             within: fs.InputRoot | None = None) -> Listing:
    within = within or fs.InputRoot.of(root)
    skipped: list[tuple[str, str]] = []
    items: list[Item] = []
    archives: list[Archive] = []
    train_tar = _input_file(root, (TRAIN_TAR,), within, TRAIN, items, set())
    if train_tar:
        for m in _tar_members(train_tar, TRAIN_TAR, skipped):
            name = posixpath.basename(m.name)
            synset = name[:-4] if name.endswith(".tar") else ""
            if not synset:
                items.append(Item(train_tar, TRAIN, "", f"{TRAIN_TAR}/{m.name}", m.size, m.offset_data,
                                  UNKNOWN_CLASS, "member is not a per-class .tar"))
                continue
            archives.append(Archive(train_tar, TRAIN, synset, f"{TRAIN_TAR}/{m.name}", m.size, m.offset_data))
    elif not items:  # no train archive (nor one refused): a folder of <wnid>.tar files
        in_train = fs.is_dir(fs.join(root, "train"))
        archives += _tar_folder(fs.join(root, "train") if in_train else root, within, skipped, items,
                                "train" if in_train else "")
    val_tar = _input_file(root, (VAL_TAR,), within, VALIDATION, items, set())
    if val_tar:
        _val_tar(root, val_tar, val_labels, within, skipped, items)
    if not archives and not items:
        raise LayoutError(f"input={root!r}: no {TRAIN_TAR}, {VAL_TAR} or <wnid>.tar files found.")
    return _finish("tar", root, items, archives, skipped, None, labels_file, wnid_only=True, within=within)


def _kaggle_val(root: str, base: str, val_labels: str | None, within: fs.InputRoot,
                skipped: list[tuple[str, str]], items: list[Item]) -> None:
    """``CLS-LOC/val/*`` labelled by ``LOC_val_solution.csv`` (image id, then the boxes: first word a wnid)."""
    solution = val_labels or _input_file(root, ("LOC_val_solution.csv",), within, VALIDATION, items, set())
    by_id: dict[str, str] = {}
    if solution:
        reader = csv.reader(io.StringIO(fs.read_text(solution)))
        for n, row in enumerate(reader, 1):
            if n == 1 and row and row[0] == "ImageId":
                continue
            if len(row) >= 2 and row[1].split():
                by_id[row[0]] = row[1].split()[0]
    prefix = "ILSVRC/Data/CLS-LOC/val"
    walk = fs.walk(fs.join(base, "val"), within)
    skipped.extend((posixpath.join(prefix, rel), why) for rel, why in walk.skipped)
    items += _refused(walk, VALIDATION, prefix, class_folders=False)
    for entry in walk.files:
        fname = posixpath.join(prefix, entry.relpath)
        if _hidden(entry.relpath):
            skipped.append((fname, "hidden or system file"))
            continue
        image_id = posixpath.splitext(posixpath.basename(entry.relpath))[0]
        synset = by_id.get(image_id, "")
        if synset:
            items.append(Item(entry.uri, VALIDATION, synset, fname, entry.size))
        else:
            items.append(Item(entry.uri, VALIDATION, "", fname, entry.size, reject=LABELS_MISMATCH,
                              detail=f"{image_id} has no row in {solution or 'LOC_val_solution.csv'}"))


def list_kaggle(root: str, val_labels: str | None = None, labels_file: str | None = None,
                within: fs.InputRoot | None = None) -> Listing:
    within = within or fs.InputRoot.of(root)
    skipped: list[tuple[str, str]] = []
    items: list[Item] = []
    base = fs.join(root, "ILSVRC/Data/CLS-LOC")
    if not fs.is_dir(base):
        raise LayoutError(f"input={root!r}: no ILSVRC/Data/CLS-LOC folder (Kaggle layout).")
    names: dict[str, str] = {}
    mapping = _input_file(root, ("LOC_synset_mapping.txt",), within, TRAIN, items, set())
    if mapping:
        for line in _read_lines(mapping):
            wnid, _, name = line.partition(" ")
            names[wnid] = name.strip()
    if fs.is_dir(fs.join(base, "train")):
        items += _class_tree(fs.join(base, "train"), TRAIN, skipped, "ILSVRC/Data/CLS-LOC/train", within)
    if fs.is_dir(fs.join(base, "val")):
        _kaggle_val(root, base, val_labels, within, skipped, items)
    if fs.is_dir(fs.join(base, "test")):
        skipped.append(("ILSVRC/Data/CLS-LOC/test/", "test split has no labels"))
    return _finish("kaggle", root, items, [], skipped, names, labels_file, wnid_only=False, within=within)


def list_folders(root: str, val_labels: str | None = None, labels_file: str | None = None,
                 within: fs.InputRoot | None = None) -> Listing:
    within = within or fs.InputRoot.of(root)
    skipped: list[tuple[str, str]] = []
    items: list[Item] = []
    train = fs.join(root, "train")
    val_dir = next((fs.join(root, d) for d in _VAL_DIRS if fs.is_dir(fs.join(root, d))), None)
    if fs.is_dir(train) or val_dir:
        if fs.is_dir(train):
            items += _class_tree(train, TRAIN, skipped, "train", within)
        if val_dir:
            items += _class_tree(val_dir, VALIDATION, skipped, posixpath.basename(val_dir), within)
    else:
        items += _class_tree(root, TRAIN, skipped, "", within)
    return _finish("folders", root, items, [], skipped, None, labels_file, wnid_only=False, within=within,
                   class_dirs=_class_folders(train if fs.is_dir(train) or val_dir else root))


_CSV_HEADERS = (["path", "label"], ["filename", "label"], ["file", "label"], ["image", "label"])


def _csv_row_item(path: str, label: str, split: str, base: str, within: fs.InputRoot) -> Item:
    """One CSV row: a path relative to the CSV, an absolute path, or a URI; only what resolves inside the
    input root is kept for reading (the real path, so executors read what was checked)."""
    is_uri = "://" in path or path.startswith(("file:", "dbfs:"))
    full = path if (is_uri or path.startswith("/")) else fs.join(base, path)
    uri, why = fs.locate(full, within)
    if uri is not None:
        return Item(uri, split, label, path, -1)
    if why == fs.OUTSIDE:
        return Item("", split, label, path, reject=OUTSIDE_INPUT_ROOT,
                    detail=f"listed in the CSV but outside the input root {within.uri}; not read")
    detail = {fs.MISSING: "listed in the CSV but no such file", fs.BROKEN_LINK: "broken symlink",
              fs.NOT_A_FILE: "listed in the CSV but not a regular file"}[why]
    return Item("", split, label, path, reject=READ_ERROR, detail=detail)


def _read_csv(uri: str, split: str, base: str, within: fs.InputRoot) -> list[Item]:
    text = fs.read_text(uri)
    seen: dict[str, tuple[str, int]] = {}
    items: list[Item] = []
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise LayoutError(f"{uri}: not a readable CSV of path,label ({exc}). Fix: one 'path,label' per line.") from None
    for n, row in enumerate(rows, 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if n == 1 and [c.strip().lower() for c in row[:2]] in _CSV_HEADERS:
            continue
        if len(row) < 2:
            raise LayoutError(f"{uri}:{n}: expected 'path,label', got {row!r}.")
        path, label = row[0].strip(), row[1].strip()
        if path in seen:
            if seen[path][0] != label:
                raise LayoutError(f"{uri}:{n}: {path!r} is labelled {label!r} here but {seen[path][0]!r} on line "
                                  f"{seen[path][1]}: conflicting labels. Fix: keep one label per path.")
            continue
        seen[path] = (label, n)
        items.append(_csv_row_item(path, label, split, base, within))
    return items


def list_csv(root: str, val_labels: str | None = None, labels_file: str | None = None,
             within: fs.InputRoot | None = None) -> Listing:
    within = within or fs.InputRoot.of(root)
    skipped: list[tuple[str, str]] = []
    items: list[Item] = []
    if fs.is_file(root):  # a single CSV (the input itself, so read wherever it is): all training
        base = posixpath.dirname(fs.normalize(root))
        items += _read_csv(root, TRAIN, base, within)
        root = base
    else:
        for split, names in ((TRAIN, ("train.csv",)), (VALIDATION, ("validation.csv", "val.csv"))):
            uri = _input_file(root, names, within, split, items, set())
            if uri:
                items += _read_csv(uri, split, root, within)
    if labels_file is None:
        labels_file = _input_file(root, (LABELS,), within, TRAIN, items, set())
    return _finish("csv", root, items, [], skipped, None, labels_file, wnid_only=False, within=within)


def detect(root: str) -> str:
    """Guess the layout of ``root`` from the names at its top; explained in the module docstring."""
    if not fs.exists(root):
        raise LayoutError(f"input={root!r}: no such file or directory. "
                          "Fix: check the path (executors must see it too).")
    if fs.is_file(root):
        if root.endswith(".csv"):
            return "csv"
        raise LayoutError(f"input={root!r} is a file; expected a dataset folder or a CSV of path,label.")
    top = {e.relpath for e in fs.list_dir(root)}
    if not top:
        raise LayoutError(f"input={root!r} is an empty folder. Fix: point --input at the dataset root.")
    if TRAIN_TAR in top or VAL_TAR in top:
        return "tar"
    if "ILSVRC" in top or "LOC_synset_mapping.txt" in top:
        return "kaggle"
    if {"train.csv", "validation.csv", "val.csv"} & top:
        return "csv"
    if "train" in top:
        train_top = [e for e in fs.list_dir(fs.join(root, "train")) if not _hidden(e.relpath)]
        if train_top and all(e.relpath.endswith(".tar") for e in train_top):
            return "tar"
        val_flat = any(
            d in top and any(e.size >= 0 and not _hidden(e.relpath) for e in fs.list_dir(fs.join(root, d)))
            for d in _VAL_DIRS
        )
        if "synset_labels.txt" in top or (val_flat and all(is_wnid(e.relpath) for e in train_top)):
            return "ilsvrc"
        return "folders"
    entries = [e for e in fs.list_dir(root) if not _hidden(e.relpath)]
    if entries and all(e.relpath.endswith(".tar") for e in entries):
        return "tar"
    return "folders"


_LISTERS = {
    "ilsvrc": list_ilsvrc,
    "tar": list_tar,
    "kaggle": list_kaggle,
    "folders": list_folders,
    "csv": list_csv,
}


def discover(root: str, *, layout: str = "auto", val_labels: str | None = None,
             labels_file: str | None = None) -> Listing:
    """List every input under ``root``; ``layout='auto'`` detects it (and logs what it chose)."""
    if layout == "auto":
        layout = detect(root)
        log.info("input %s: detected layout %r", root, layout)
    elif not fs.exists(root):
        raise LayoutError(f"input={root!r}: no such file or directory.")
    if layout not in _LISTERS:
        raise LayoutError(f"layout={layout!r}: unknown; known layouts are {', '.join(LAYOUTS)}.")
    if val_labels and not fs.is_file(val_labels):
        raise LayoutError(f"val_labels={val_labels!r}: no such file.")
    return _LISTERS[layout](root, val_labels=val_labels, labels_file=labels_file)
