"""Filesystem access by path or URI, through pyarrow.fs (no Spark, no JVM).

Why pyarrow and not Spark's Hadoop filesystem: the executors read image bytes and write Parquet from
Python, and the readers in training must work without pyspark. pyarrow covers local paths, ``file:``,
``hdfs:`` (libhdfs) and ``s3:``; ``s3a:``/``s3n:`` (Hadoop spellings) map to ``s3:`` and Databricks'
``dbfs:/`` maps to its FUSE mount ``/dbfs/``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
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
    return fs.open_input_file(path)  # type: ignore[return-value]


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
