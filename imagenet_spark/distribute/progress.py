"""Training progress from the chief worker to the Spark driver's console, over one TCP connection.

Why a socket: executor logs are where users never look while a job runs, and Spark accumulators only
arrive when a task ends. The driver listens on its own address (not 0.0.0.0) for the lifetime of the
training call; messages carry a random token so stray connections are ignored. Progress is best effort:
a lost connection never fails training.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        for raw in self.rfile:
            try:
                msg = json.loads(raw)
            except ValueError:
                return
            if not isinstance(msg, dict) or msg.pop("token", None) != server.token:
                return
            server.on_message(msg)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], token: str, on_message: Callable[[dict[str, Any]], None]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.token = token
        self.on_message = on_message
        super().__init__(address, _Handler)


@dataclass(frozen=True)
class ProgressEndpoint:
    """Where a worker sends progress: the driver's address and the run's token (part of the worker spec)."""

    host: str
    port: int
    token: str


class ProgressServer:
    """Listen on ``host`` (an ephemeral port) and call ``on_message`` for every authenticated message."""

    def __init__(self, host: str, on_message: Callable[[dict[str, Any]], None]) -> None:
        self.token = secrets.token_hex(16)
        self._server = _Server((host, 0), self.token, on_message)
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="progress-server", daemon=True)

    def __enter__(self) -> ProgressServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def address(self) -> ProgressEndpoint:
        return ProgressEndpoint(host=self.host, port=self.port, token=self.token)

    def endpoint(self) -> dict[str, Any]:
        """``address`` as ``ProgressClient``'s keyword arguments."""
        return asdict(self.address)


class ProgressClient:
    """Send JSON messages to a ProgressServer; swallows network errors after logging the first."""

    def __init__(self, *, host: str, port: int, token: str) -> None:
        self._address = (host, port)
        self._token = token
        self._sock: socket.socket | None = None
        self._warned = False

    def __call__(self, message: dict[str, Any]) -> None:
        data = (json.dumps({**message, "token": self._token}) + "\n").encode()
        try:
            if self._sock is None:
                self._sock = socket.create_connection(self._address, timeout=5)
            self._sock.sendall(data)
        except OSError as exc:
            self._sock = None
            if not self._warned:
                log.warning("progress to the driver at %s:%d lost (%s); training continues", *self._address, exc)
                self._warned = True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def format_progress(msg: dict[str, Any]) -> str:
    """One console line: what a person watching a long run wants to see."""
    if msg.get("event") == "epoch":
        parts = [f"epoch {msg['epoch']}/{msg['epochs']} done: loss {msg['loss']:.4f} top1 {msg['top1']:.3f}"]
        if "val_top1" in msg:
            parts.append(f"val top1 {msg['val_top1']:.3f} top5 {msg['val_top5']:.3f} ({msg['val_images']} images)")
        parts.append(f"{msg['images_per_s']:.0f} img/s, {msg['wall_time_s']:.1f} s")
        return ", ".join(parts)
    eta = msg.get("eta_s")
    eta_text = f"ETA {int(eta // 60)}m{int(eta % 60):02d}s" if isinstance(eta, (int, float)) else "ETA ?"
    return (f"epoch {msg['epoch']}/{msg['epochs']} step {msg['step']}/{msg['steps']} loss {msg['loss']:.4f} "
            f"{msg['images_per_s']:.0f} img/s {eta_text}")
