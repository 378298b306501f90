"""Bind TensorFlow's gRPC server to the executor's own address (a preloaded ``bind`` shim, built on demand).

Why: TensorFlow 2.15's gRPC server (MultiWorkerMirroredStrategy) listens on every interface for the port in
TF_CONFIG (``GrpcServer::Init`` binds ``0.0.0.0:PORT``) and has no setting for the address, so on a host
with several networks any of them reaches a worker that runs TensorFlow operations for whoever connects.
``bindshim.c``, preloaded into the training worker only, rewrites that one wildcard bind (the TF_CONFIG
port) to the address Spark gave the task. It is compiled on the executor the first time it is needed (a C
compiler and ~0.2 s; cached by source hash), because the package reaches executors as a zip. Where no
compiler is available the worker runs without it and the launcher says so: the behaviour is then TF's own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pkgutil
import shutil
import subprocess
import sysconfig
import tempfile

log = logging.getLogger(__name__)

ADDR_VAR, PORT_VAR = "IMAGENET_SPARK_BIND_ADDR", "IMAGENET_SPARK_BIND_PORT"


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        exe = (candidate or "").split()[0] if candidate else ""
        if exe and shutil.which(exe):
            return shutil.which(exe)
    return None


def build_shim(cache_dir: str | None = None) -> tuple[str | None, str]:
    """``(path of the shared library, "")``, or ``(None, why not)``. Safe to call from several tasks at once."""
    source = pkgutil.get_data("imagenet_spark.distribute", "bindshim.c")
    if source is None:
        return None, "bindshim.c is missing from the package"
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = cache_dir or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                      "imagenet-spark")
    target = os.path.join(cache, f"bindshim-{digest}.so")
    if os.path.exists(target):
        return target, ""
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (cc/gcc/clang) on this host to build it"
    try:
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bindshim-") as tmp:
            src = os.path.join(tmp, "bindshim.c")
            with open(src, "wb") as f:
                f.write(source)
            out = os.path.join(tmp, "bindshim.so")
            proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", out, src, "-ldl"], capture_output=True,
                                  text=True, timeout=60)
            if proc.returncode != 0:
                return None, f"{cc} failed: {proc.stderr.strip()[:300]}"
            partial = f"{target}.{os.getpid()}.tmp"
            shutil.copyfile(out, partial)
            os.replace(partial, target)  # atomic: a concurrent task sees the whole file or none
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot build it: {exc}"
    return target, ""


def preload(library: str, inherited: str | None = None) -> str:
    """LD_PRELOAD with the shim first, then whatever the process already preloads."""
    return f"{library} {inherited}".strip() if inherited else library


def shim_env(library: str, *, host: str, port: int, inherited: str | None = None) -> dict[str, str]:
    """The variables that make the worker's TensorFlow bind ``host:port`` instead of ``0.0.0.0:port``."""
    return {"LD_PRELOAD": preload(library, inherited), ADDR_VAR: host, PORT_VAR: str(port)}
