"""The bind shim, compiled here with the machine's C compiler and preloaded into a real process: the one
wildcard bind it is told about lands on the given address, every other bind is untouched, and a taken port
still fails with EADDRINUSE (the launcher's port-conflict detection depends on it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from imagenet_spark.distribute.bind_shim import build_shim, shim_env

_PROBE = """
import errno, json, socket, sys
port, other, taken = (int(a) for a in sys.argv[1:4])
out = {}
for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(family)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack, as gRPC opens it
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((wildcard, port))
    out[wildcard] = s.getsockname()[0]
    s.close()
s = socket.socket()
s.bind(("0.0.0.0", other))
out["other"] = s.getsockname()[0]
s.close()
s = socket.socket()
try:
    s.bind(("0.0.0.0", taken))
    out["taken"] = "bound"
except OSError as exc:
    out["taken"] = errno.errorcode[exc.errno]
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    library, why = build_shim(str(tmp_path_factory.mktemp("shim")))
    if library is None:
        pytest.skip(f"bind shim unavailable here: {why}")
    return library


def test_only_the_named_wildcard_bind_is_rewritten(shim):
    port, other = _free_port(), _free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    env = dict(os.environ, **shim_env(shim, host="127.0.0.1", port=port))
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(port), str(other), str(taken)], env=env,
                          capture_output=True, text=True, timeout=60)
    holder.close()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"0.0.0.0": "127.0.0.1", "::": "::ffff:127.0.0.1", "other": "0.0.0.0", "taken": "EADDRINUSE"}


def test_a_taken_port_still_fails_with_eaddrinuse_after_the_rewrite(shim):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    script = ("import socket, sys\ns = socket.socket(socket.AF_INET6)\n"
              "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
              "try:\n    s.bind(('::', int(sys.argv[1])))\n    print('bound', s.getsockname()[0])\n"
              "except OSError as exc:\n    print(exc.errno)")
    env = dict(os.environ, **shim_env(shim, host="127.0.0.1", port=taken))
    proc = subprocess.run([sys.executable, "-c", script, str(taken)], env=env, capture_output=True, text=True,
                          timeout=60)
    holder.close()
    import errno

    assert proc.stdout.strip() == str(errno.EADDRINUSE), proc.stdout + proc.stderr


def test_the_shim_is_cached_and_preloads_after_an_inherited_one(shim, tmp_path):
    again, why = build_shim(os.path.dirname(shim))
    assert again == shim and why == ""
    env = shim_env(shim, host="10.0.0.2", port=4242, inherited="/opt/other.so")
    assert env == {"LD_PRELOAD": f"{shim} /opt/other.so", "IMAGENET_SPARK_BIND_ADDR": "10.0.0.2",
                   "IMAGENET_SPARK_BIND_PORT": "4242"}
