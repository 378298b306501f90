"""Filesystem access by path or URI, through pyarrow.fs (no Spark, no JVM).

Why pyarrow and not Spark's Hadoop filesystem: the executors read image bytes and write Parquet from
Python, and the readers in training must work without pyspark. pyarrow covers local paths, ``file:``,
``hdfs:`` (libhdfs) and ``s3:``; ``s3a:``/``s3n:`` (Hadoop spellings) map to ``s3:`` and Databricks'
``dbfs:/`` maps to its FUSE mount ``/dbfs/``.
"""

from __future__ import annotations

import heapq
import os
import posixpath
import stat
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow.fs as pafs


def normalize(uri: str) -> str:
    """The canonical spelling we hand to pyarrow; local paths come back absolute without ``file:``."""
    uri = uri.strip()
    if uri.startswith("dbfs:/"):
        return "/dbfs/" + uri[len("dbfs:/"):].lstrip("/")
    for hadoop in ("s3a://", "s3n://"):
        if uri.startswith(hadoop):
            uri = "s3://" + uri[len(hadoop):]
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif uri.startswith("file:"):
        uri = uri[len("file:"):]
    if "://" not in uri:
        return posixpath.abspath(uri)
    return uri.rstrip("/")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a path or URI."""
    uri = normalize(uri)
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join path parts onto a path or URI without touching the scheme."""
    out = base.rstrip("/")
    for part in parts:
        out = out + "/" + part.strip("/")
    return out


def rebase(uri: str, path: str) -> str:
    """Turn a filesystem path (as pyarrow lists it) back into a URI on the same filesystem as ``uri``."""
    uri = normalize(uri)
    if "://" not in uri:
        return path
    scheme, _, rest = uri.partition("://")
    authority = rest.split("/", 1)[0] if scheme not in ("s3", "gs") else ""
    if scheme in ("s3", "gs"):
        return f"{scheme}://{path.lstrip('/')}"
    return f"{scheme}://{authority}/{path.lstrip('/')}"


@dataclass(frozen=True)
class FileEntry:
    uri: str
    relpath: str
    size: int


def split_remote(uri: str) -> tuple[str, str]:
    """``scheme://authority`` and the absolute path of a normalised remote URI (``s3://b/k`` -> ``s3://b``, ``/k``)."""
    scheme, _, rest = uri.partition("://")
    authority, _, path = rest.partition("/")
    return f"{scheme}://{authority}", "/" + path


def is_under(path: str, root: str) -> bool:
    """``path`` equals ``root`` or lies below it (both normalised the same way, no trailing slash)."""
    return root == "/" or path == root or path.startswith(root + "/")


@dataclass(frozen=True)
class InputRoot:
    """The only place the partition job may read from: ``--input`` (a CSV given as the input: its folder).

    Why a type and not a prefix test: a CSV row, a symlink or a labels file can name any file an executor can
    read, and whatever the job reads can end up in the output (the rejects table keeps bytes). Local paths are
    compared by ``os.path.realpath`` (symlinks and ``..`` resolved by the OS) against the root's real path;
    remote URIs (no symlinks there) by scheme and authority, then by path with ``..`` resolved lexically.
    """

    uri: str
    prefix: str  # "scheme://authority" of a remote root; "" for a local one
    path: str  # the root's real path (local) or normalised path (remote)

    @classmethod
    def of(cls, uri: str) -> InputRoot:
        uri = normalize(uri)
        if "://" in uri:
            if is_file(uri):
                uri = uri.rsplit("/", 1)[0]
            prefix, path = split_remote(uri)
            return cls(uri, prefix, posixpath.normpath(path))
        if os.path.isfile(uri):
            uri = posixpath.dirname(uri)
        return cls(uri, "", os.path.realpath(uri))

    def resolve(self, uri: str) -> str | None:
        """The URI to read for ``uri`` if it lies inside the root (local: its real path), else None.

        A path that cannot be resolved at all (an embedded NUL byte) cannot be shown to be inside: None."""
        uri = normalize(uri)
        if "://" in uri:
            if not self.prefix:
                return None
            prefix, path = split_remote(uri)
            path = posixpath.normpath(path)
            return prefix + path if prefix == self.prefix and is_under(path, self.path) else None
        if self.prefix:
            return None
        try:
            real = os.path.realpath(uri)
        except (ValueError, OSError):
            return None
        return real if is_under(real, self.path) else None

    def relative(self, resolved: str) -> str:
        """Path of a resolved URI relative to the root ('' for the root itself)."""
        path = resolved[len(self.prefix):] if self.prefix else resolved
        return posixpath.relpath(path, self.path) if path != self.path else ""


@dataclass(frozen=True)
class Walk:
    """What :func:`walk` found below a folder of the input, every name in exactly one list.

    ``files`` are regular files inside the input root (local: ``uri`` is the real path, symlinks resolved);
    ``outside`` are symlinks resolving outside the root and ``broken`` symlinks to nothing, (relpath, detail),
    never opened; ``skipped`` (relpath, why) are names that are no input: non-regular files (a FIFO would block
    a reader), names that are not UTF-8, and symlinked directories already listed (loops, second links).
    ``dirs``: the directories walked (relpath, no trailing slash; local only), each under its one listed path:
    what may name a class (a symlinked alias of a class folder, or a link out of the root, is not in it)."""

    files: list[FileEntry] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    outside: list[tuple[str, str]] = field(default_factory=list)
    broken: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _printable(relpath: str) -> str:
    """A name with bytes that are not UTF-8 (Linux allows them), spelled with backslash escapes."""
    return os.fsencode(relpath).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _walk_entry(entry: os.DirEntry, rel: str, linked: bool, within: InputRoot, out: Walk,
                visited: dict[tuple[int, int], str], heap: list, recursive: bool) -> None:
    """Classify one directory entry of :func:`_walk_local`; directories go on the heap, not recursed into."""
    relpath = rel + entry.name
    if not _is_utf8(entry.name):
        out.skipped.append((_printable(relpath), "file name is not valid UTF-8"))
        return
    is_link = entry.is_symlink()
    target = entry.path
    try:
        if is_link:
            resolved = within.resolve(entry.path)
            if resolved is None:
                out.outside.append((relpath, f"symlink to {os.readlink(entry.path)!r}, outside the input root "
                                             f"{within.path}"))
                return
            target = resolved
            st = os.stat(target)
        else:
            st = entry.stat(follow_symlinks=False)
    except OSError as exc:  # FileNotFoundError: dangling; ELOOP: a link cycle made of file links
        if is_link:
            out.broken.append((relpath, "broken symlink" + ("" if isinstance(exc, FileNotFoundError)
                                                             else f" ({exc.strerror})")))
        else:
            out.skipped.append((relpath, f"cannot stat: {exc.strerror}"))
        return
    if stat.S_ISDIR(st.st_mode):
        if not recursive:
            return
        key = (st.st_dev, st.st_ino)
        if key in visited:
            out.skipped.append((relpath + "/", f"symlink to a directory already listed as {visited[key] or '.'}/"))
        else:
            heapq.heappush(heap, (linked or is_link, relpath + "/", target, key))
    elif stat.S_ISREG(st.st_mode):
        out.files.append(FileEntry(target, relpath, st.st_size))
    else:
        out.skipped.append((relpath, "not a regular file (FIFO, socket or device); never opened"))


def _walk_local(start: str, within: InputRoot, recursive: bool) -> Walk:
    """Walk a local folder following symlinks once: a directory is listed under one path only (the first with
    no symlink in it, else the first in sorted order: a heap pops paths in that order), so loops end and a
    diamond of links is not listed twice; every symlink is resolved and checked against the root first."""
    out = Walk()
    real = within.resolve(start)
    if real is None:
        out.outside.append(("", f"{start} resolves outside the input root {within.path}"))
        return out
    st = os.stat(real)
    visited: dict[tuple[int, int], str] = {}
    heap: list[tuple[bool, str, str, tuple[int, int]]] = [(False, "", real, (st.st_dev, st.st_ino))]
    while heap:
        linked, rel, directory, key = heapq.heappop(heap)
        if key in visited:
            out.skipped.append((rel, f"symlink to a directory already listed as {visited[key] or '.'}/"))
            continue
        visited[key] = rel.rstrip("/")
        if rel:
            out.dirs.append(rel.rstrip("/"))
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            out.skipped.append((rel, f"directory unreadable: {exc.strerror}"))
            continue
        for entry in entries:
            _walk_entry(entry, rel, linked, within, out, visited, heap, recursive)
    out.files.sort(key=lambda e: e.relpath)
    return out


# Why :func:`locate` found no readable file inside the root.
OUTSIDE = "outside"
MISSING = "missing"
BROKEN_LINK = "broken symlink"
NOT_A_FILE = "not a regular file"


def locate(uri: str, within: InputRoot) -> tuple[str | None, str]:
    """``(uri to read, "")`` for a regular file inside the root, else ``(None, why)`` with ``why`` one of
    OUTSIDE, MISSING, BROKEN_LINK, NOT_A_FILE. Checks the root before the file, so nothing outside the root is
    even stat'ed (and nothing is learnt about it). Local: the uri returned is the real path."""
    resolved = within.resolve(uri)
    if resolved is None:
        return None, OUTSIDE
    if within.prefix:
        kind = get_file_info(resolved)
        if kind == pafs.FileType.NotFound:
            return None, MISSING
        return (resolved, "") if kind == pafs.FileType.File else (None, NOT_A_FILE)
    try:
        st = os.stat(resolved)
    except OSError:
        return None, BROKEN_LINK if os.path.islink(normalize(uri)) else MISSING
    return (resolved, "") if stat.S_ISREG(st.st_mode) else (None, NOT_A_FILE)


def get_file_info(uri: str) -> pafs.FileType:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type


def walk(uri: str, within: InputRoot, recursive: bool = True) -> Walk:
    """Every name below ``uri`` (a folder inside ``within``), for listing inputs: see :class:`Walk`.

    Local folders are walked with ``os.scandir`` rather than pyarrow, whose recursive selector follows
    symlinked directories without end and lists broken links as nothing. Remote stores have no symlinks:
    pyarrow lists them, and each path is still checked against the root."""
    uri = normalize(uri)
    if "://" not in uri:
        return _walk_local(uri, within, recursive)
    out = Walk()
    entries = list_files(uri) if recursive else [e for e in list_dir(uri) if e.size >= 0]
    for entry in entries:
        resolved = within.resolve(entry.uri)
        if resolved is None:
            out.outside.append((entry.relpath, f"{entry.uri} is outside the input root {within.uri}"))
        else:
            out.files.append(FileEntry(resolved, entry.relpath, entry.size))
    return out


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def is_file(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def list_dir(uri: str) -> list[FileEntry]:
    """Direct children of a directory (files and directories), sorted by name; size -1 for directories."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    out = [
        FileEntry(rebase(uri, i.path), i.base_name, i.size if i.type == pafs.FileType.File else -1)
        for i in infos
    ]
    return sorted(out, key=lambda e: e.relpath)


def list_files(uri: str) -> list[FileEntry]:
    """All regular files below ``uri``, recursively, with their path relative to it; sorted."""
    fs, path = resolve(uri)
    root = path.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root):].lstrip("/")
        out.append(FileEntry(rebase(uri, info.path), rel, info.size))
    return sorted(out, key=lambda e: e.relpath)


def read_bytes(uri: str, offset: int = -1, size: int = -1) -> bytes:
    """Whole file, or ``size`` bytes at ``offset`` (a member inside an archive)."""
    fs, path = resolve(uri)
    if offset < 0:
        with fs.open_input_stream(path) as f:
            return f.read()
    with fs.open_input_file(path) as f:
        f.seek(offset)
        return f.read(size)


def open_input(uri: str) -> BinaryIO:
    """A seekable binary file object (for tarfile on archives)."""
    fs, path = resolve(uri)
    return fs.open_input_file(path)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8-sig")


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text_atomic(uri: str, text: str) -> None:
    """Write then rename, so a reader never sees half a file (rename is atomic on local and HDFS)."""
    tmp = uri + ".tmp"
    write_bytes(tmp, text.encode("utf-8"))
    move(tmp, uri)


def move(src: str, dst: str) -> None:
    fs, src_path = resolve(src)
    _, dst_path = resolve(dst)
    fs.create_dir(posixpath.dirname(dst_path), recursive=True)
    fs.move(src_path, dst_path)


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def make_dirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)
