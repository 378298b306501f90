"""Pick a free TCP port on this host's address, and recognise when TensorFlow lost it anyway.

Bind-then-close can race with another process taking the port before TensorFlow binds it (TensorFlow's
gRPC server refuses SO_REUSEPORT, so the port cannot be held across the hand-over). When the MWMS backend
fails to start, it asks :func:`port_taken` whether its port is held by someone else (a fact about the socket,
not TensorFlow's message) and raises PortConflictError; the worker exits with PORT_CONFLICT_EXIT, the barrier
task reports the kind "port_conflict" (distribute/failures.py) and the driver relaunches the stage with fresh
ports, without counting it against --max-retries, instead of leaving the other ranks waiting for a peer that
never comes.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time


def free_port(host: str) -> int:
    """A port that is free on ``host`` right now (the kernel's choice; no fixed port ranges)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> tuple[int, ...]:
    """``count`` distinct ports free on every IPv4 address of this host right now (held together while chosen,
    so no two are the same)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind(("", 0))
        return tuple(int(s.getsockname()[1]) for s in sockets)


def wait_for_listener(host: str, port: int, *, timeout_s: float, poll_s: float = 0.01) -> bool:
    """Whether ``host:port`` accepted a TCP connection within ``timeout_s`` (tried every ``poll_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(poll_s, 0.1)):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)


def hold_port(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` (for fault injection: make the port look taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, port))
    s.listen(1)
    return s


def port_taken(host: str, port: int) -> bool:
    """Whether another socket holds ``host:port`` now (binding it fails with EADDRINUSE)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
