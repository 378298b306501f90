"""Who may write where: disjoint inputs and outputs, directories a job marked as its own, one job per directory.

Why this exists: a job that deletes or overwrites a directory must be sure the directory is one it made. The
partition job publishes by deleting ``DST/train`` and friends; the trainer's ``--overwrite`` deletes
checkpoints and exports. Pointed at a user's image tree (``--output`` equal to ``--input``) or at a dataset
(``--model-dir`` equal to ``--data``), those deletions destroy the user's data. Three rules, checked on the
driver before any work starts:

* **Disjoint.** An output never equals, contains or lies inside an input (compared after resolving ``..``,
  symlinks of local paths and the URI spellings ``fs.normalize`` accepts).
* **Ours.** A job writes into a directory only if it is missing, empty, or carries our marker file
  (:data:`MARKER`, written when the job claims the directory) of the same kind. Directories written before
  the marker existed are recognised by their own contract file (a finished dataset's ``manifest.json``, a
  model dir's ``config.json``). Anything else is refused with the path and the fix, ``--overwrite`` or not.
* **One job at a time.** The job holds an exclusive :class:`Lease` (who, host, pid, since, heartbeat) on the
  directory while it runs; a second job reports the holder instead of running. A lease whose holder is gone
  (same host and the pid is dead, or no heartbeat for ``stale_after_s``) is taken over with a warning.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from imagenet_spark.config import ConfigError
from imagenet_spark.data import fs
from imagenet_spark.layout import LEASE, MARKER, PREFLIGHT_PROBE

log = logging.getLogger(__name__)

Kind = Literal["dataset", "model_dir", "search"]
# Entries a directory may hold and still count as empty: our own lease, and what file browsers leave behind.
# Also the probe dir the preflight check writes into an output before the job claims it (spark/preflight.py
# PROBE_DIR), left behind when its removal failed: ours, so it does not make a new directory "not empty".
_IGNORABLE = frozenset({LEASE, ".DS_Store", PREFLIGHT_PROBE})


def canonical(uri: str) -> str:
    """The spelling two paths are compared by: normalised URI, ``..`` resolved, local symlinks resolved."""
    uri = fs.normalize(uri)
    if "://" not in uri:
        return os.path.realpath(uri)
    prefix, path = fs.split_remote(uri)
    return prefix + posixpath.normpath(path).rstrip("/")


def check_disjoint(out_setting: str, out_uri: str, in_setting: str, in_uri: str | None) -> None:
    """Refuse an output that equals, contains or lies inside an input, before anything is read or written."""
    if not in_uri:
        return
    out_c, in_c = canonical(out_uri), canonical(in_uri)
    if out_c == in_c:
        relation = "is the same directory as"
    elif fs.is_under(out_c, in_c):
        relation = "lies inside"
    elif fs.is_under(in_c, out_c):
        relation = "contains"
    else:
        return
    raise ConfigError(out_setting, out_uri, f"{relation} {in_setting}={in_uri!r} ({out_c} vs {in_c}); the job "
                      f"would write into, or delete, its own input.",
                      f"give {out_setting} a path outside {in_setting} (a sibling directory, for example).")


@dataclass(frozen=True)
class OwnerMark:
    """The content of :data:`MARKER`: which job made the directory, so ``--overwrite`` knows it may delete."""

    kind: str
    created: str
    package_version: str


def read_mark(directory: str) -> OwnerMark | None:
    uri = fs.join(directory, MARKER)
    if not fs.exists(uri):
        return None
    try:
        data = json.loads(fs.read_text(uri))
        return OwnerMark(kind=str(data["kind"]), created=str(data.get("created", "")),
                         package_version=str(data.get("package_version", "")))
    except (ValueError, KeyError, TypeError):
        return None


def write_mark(directory: str, kind: Kind) -> None:
    from imagenet_spark import __version__

    mark = OwnerMark(kind=kind, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     package_version=__version__)
    fs.make_dirs(directory)
    fs.write_text_atomic(fs.join(directory, MARKER), json.dumps(asdict(mark)))


def check_ours(setting: str, directory: str, kind: Kind, legacy_proof: Callable[[str], bool]) -> bool:
    """Whether ``directory`` is ours to write in; refuse it otherwise. Returns True when it already holds our
    work (marked, or recognised by ``legacy_proof``: a contract file written before the marker existed), False
    when it is missing or empty. A directory of another kind (a dataset given as a model dir) is refused."""
    if not fs.exists(directory):
        return False
    if not fs.is_dir(directory):
        raise ConfigError(setting, directory, "exists and is not a directory.", f"choose another {setting}.")
    mark = read_mark(directory)
    if mark is not None:
        if mark.kind != kind:
            raise ConfigError(setting, directory, f"holds an imagenet-spark {mark.kind.replace('_', ' ')}, not a "
                              f"{kind.replace('_', ' ')}; the job will not write into it.",
                              f"choose another {setting}.")
        return True
    if legacy_proof(directory):
        return True
    entries = [e.relpath for e in fs.list_dir(directory) if e.relpath not in _IGNORABLE]
    if not entries:
        return False
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise ConfigError(setting, directory, f"is not empty ({shown}) and was not made by this job (no {MARKER}); "
                      "it is never written into or deleted, --overwrite or not.",
                      f"choose a new or empty {setting}, or delete that directory yourself if it is disposable.")


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a directory: enough for a person to find the job, and for a program to tell it is gone."""

    job: str
    user: str
    host: str
    pid: int
    since: float
    heartbeat: float
    token: str

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"{self.job} by {self.user} on {self.host} (pid {self.pid}) since {since}"


class LeaseHeldError(ConfigError):
    """Another job holds the directory's lease."""


def _read_lease(uri: str) -> LeaseInfo | None:
    try:
        data = json.loads(fs.read_text(uri))
        return LeaseInfo(**{k: data[k] for k in LeaseInfo.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # torn or foreign content: treated as no lease (we are about to write a whole one)


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (one we may not signal still runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """An exclusive claim on a directory for the life of a job; a context manager.

    On local paths the claim is atomic (``O_CREAT | O_EXCL``); on object stores and HDFS, which pyarrow offers
    no create-if-absent for, it is written then read back after a short pause, so two jobs racing within the
    same second are caught in all but the rarest interleavings. A heartbeat thread refreshes the lease so
    another host can tell a live job from a crashed one.
    """

    def __init__(self, setting: str, directory: str, job: str, *, stale_after_s: float = 600.0,
                 heartbeat_s: float = 60.0) -> None:
        self.setting, self.directory, self.job = setting, directory, job
        self.uri = fs.join(directory, LEASE)
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self._info: LeaseInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _new_info(self) -> LeaseInfo:
        now = time.time()
        return LeaseInfo(job=self.job, user=getpass.getuser(), host=socket.gethostname(), pid=os.getpid(),
                         since=now, heartbeat=now, token=uuid.uuid4().hex)

    def _stale(self, held: LeaseInfo) -> str:
        """Why the holder is gone, or '' when it may still be running."""
        if held.host == socket.gethostname() and not pid_alive(held.pid):
            return f"pid {held.pid} no longer runs on {held.host}"
        if time.time() - held.heartbeat > self.stale_after_s:
            return f"no heartbeat for {time.time() - held.heartbeat:.0f} s (stale after {self.stale_after_s:.0f} s)"
        return ""

    def _unreadable_stale(self) -> str:
        """A lease file we cannot parse (being written on an object store, or damaged) counts as held until it
        is older than ``stale_after_s``."""
        filesystem, path = fs.resolve(self.uri)
        info = filesystem.get_file_info(path)
        if info.mtime is None:
            return "lease file vanished"
        age = time.time() - info.mtime.timestamp()
        return f"unreadable lease file, {age:.0f} s old" if age > self.stale_after_s else ""

    def _try_create(self, info: LeaseInfo) -> bool:
        payload = json.dumps(asdict(info))
        uri = fs.normalize(self.uri)
        if "://" not in uri:
            # Write the whole lease under a private name, then link it into place: the link fails if a lease
            # exists, and a reader never sees a half-written one.
            tmp = f"{uri}.{info.token}.tmp"
            with open(tmp, "w") as f:
                f.write(payload)
            try:
                os.link(tmp, uri)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this mount (FUSE mounts such as /dbfs): exclusive create instead
                try:
                    fd = os.open(uri, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as f:
                    f.write(payload)
            finally:
                os.unlink(tmp)
            return True
        if fs.exists(uri):
            return False
        fs.write_bytes(uri, payload.encode())
        time.sleep(1.0)
        held = _read_lease(uri)
        return held is not None and held.token == info.token

    def acquire(self) -> Lease:
        fs.make_dirs(self.directory)
        info = self._new_info()
        for _ in range(3):
            if self._try_create(info):
                self._info = info
                self._start_heartbeat()
                return self
            held = _read_lease(self.uri)
            why = self._stale(held) if held else self._unreadable_stale()
            if not why:
                holder = held.describe() if held else "a job whose lease file cannot be read"
                raise LeaseHeldError(self.setting, self.directory, f"is in use by {holder}; two jobs on "
                                     "one directory would delete each other's work.",
                                     f"wait for that job to finish, or stop it; if it is gone, delete "
                                     f"{self.uri} (a crashed job's lease is taken over automatically after "
                                     f"{self.stale_after_s:.0f} s without heartbeat).")
            # Delete only the lease judged stale: another job taking over at the same moment may already have
            # replaced it with its own, live one.
            again = _read_lease(self.uri)
            if (again.token if again else None) != (held.token if held else None):
                continue
            log.warning("%s: taking over the lease of %s (%s)", self.directory,
                        held.describe() if held else "an unknown job", why)
            fs.delete(self.uri)
        raise LeaseHeldError(self.setting, self.directory, "another job keeps claiming it.",
                             "run one job at a time on this directory.")

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                if self._info is None:
                    return
                held = _read_lease(self.uri)
                if held is not None and held.token != self._info.token:  # taken over while we seemed gone
                    log.error("lease on %s was taken over by %s; not overwriting it", self.directory,
                              held.describe())
                    return
                self._info = LeaseInfo(**{**asdict(self._info), "heartbeat": time.time()})
                try:
                    fs.write_text_atomic(self.uri, json.dumps(asdict(self._info)))
                except OSError as exc:  # storage hiccup: the next beat tries again
                    log.warning("lease heartbeat on %s failed: %s", self.uri, exc)

        self._thread = threading.Thread(target=beat, name=f"lease:{self.directory}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._info is None:
            return
        held = _read_lease(self.uri)
        if held is not None and held.token == self._info.token:
            fs.delete(self.uri)
        self._info = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
