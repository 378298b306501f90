"""Per-class tar archives (ILSVRC2012's ``<wnid>.tar``), streamed member by member on an executor.

Why streamed in place: extracting 1.2 M files to disk first doubles the storage and the I/O; a tar inside the
outer tar is read through a window of the outer file. Nothing is extracted, and link members are never
followed (a name is only a name here).
"""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

from imagenet_spark.data import fs, images


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


class Member(NamedTuple):
    """One member of a per-class tar: bytes, or a reject reason and detail, or why it is no input (skipped)."""

    filename: str
    data: bytes | None
    reason: str = ""
    detail: str = ""
    skip: str = ""


def iter_archive(uri: str, name: str, offset: int, size: int) -> Iterator[Member]:
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
                        yield Member(f"{fname}#{seen[member.name]}", None,
                                      skip="duplicate member name in the archive; the first is used")
                    elif member.issym() or member.islnk():
                        yield Member(fname, None, skip=f"link member in the archive (to {member.linkname!r}); "
                                                        "never followed")
                    elif not member.isfile():
                        yield Member(fname, None, skip="not a regular file member (device or FIFO)")
                    else:
                        f = tar.extractfile(member)
                        yield Member(fname, f.read() if f else b"")
        except (tarfile.TarError, OSError, EOFError) as exc:
            yield Member(f"{name}/<archive>", None, images.READ_ERROR,
                          f"archive unreadable after the members above: {exc}")
