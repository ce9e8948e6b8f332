"""Support for the HTTP adapter tests: a real loopback server with scripted faults, and a
tiny per-host stand-in strategy.

The server speaks HTTP/1.1 on 127.0.0.1.

Each path follows a script of actions, one per request (the last one repeats, or the
script cycles); every request is recorded as a :class:`Hit` so tests can assert exactly
what the server saw.

    server.script("/flaky", reply(503), reply(200, b"ok"))
    ...
    assert len(server.hits("/flaky")) == 2
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import urlsplit

from resilience import RejectedError, Strategy
from resilience._core.strategy import AnyCallable, AsyncCallable, Scope

Action = Callable[["_Handler"], None]


@dataclass
class Hit:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def reply(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None) -> Action:
    """Answer with ``status``, ``body`` and extra ``headers``."""

    def act(h: _Handler) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    return act


def _abort(h: _Handler) -> None:
    # SO_LINGER 0: closing sends a reset rather than an orderly FIN where the OS allows.
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.close_connection = True


def reset() -> Action:
    """Read the request, then drop the connection without answering."""

    def act(h: _Handler) -> None:
        h.wfile.flush()
        _abort(h)

    return act


def cut(status: int = 200, declared: int = 1000, sent: int = 10) -> Action:
    """Promise ``declared`` bytes of body, send ``sent`` of them, then drop the connection."""

    def act(h: _Handler) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(declared))
        h.end_headers()
        h.wfile.write(b"x" * sent)
        h.wfile.flush()
        _abort(h)

    return act


def slow(seconds: float, then: Action | None = None) -> Action:
    """Wait ``seconds`` (cut short when the server stops), then run ``then`` (default 200)."""
    after = then or reply(200, b"late")

    def act(h: _Handler) -> None:
        h.server.owner.stopping.wait(seconds)  # type: ignore[attr-defined]
        after(h)

    return act


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        owner: FaultServer = self.server.owner  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        hit = Hit(
            method=self.command,
            path=path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body(),
        )
        owner._next(hit)(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, owner: FaultServer) -> None:
        self.owner = owner
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: object, client_address: object) -> None:
        with self.lock:
            self.open.add(request)  # type: ignore[arg-type]
        super().process_request(request, client_address)  # type: ignore[arg-type]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that went away mid-answer (timeouts, resets) is part of the script

    def shutdown_request(self, request: object) -> None:
        with self.lock:
            self.open.discard(request)  # type: ignore[arg-type]
        super().shutdown_request(request)  # type: ignore[arg-type]


@dataclass
class _Script:
    actions: list[Action]
    cycle: bool
    index: int = 0


@dataclass
class FaultServer:
    """The server; use it through the ``server`` fixtures."""

    _scripts: dict[str, _Script] = field(default_factory=dict)
    _hits: dict[str, list[Hit]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *actions: Action, cycle: bool = False) -> None:
        """Answer requests to ``path`` with ``actions`` in order (the last repeats)."""
        with self._lock:
            self._scripts[path] = _Script(list(actions), cycle)

    def hits(self, path: str) -> list[Hit]:
        with self._lock:
            return list(self._hits.get(path, ()))

    def _next(self, hit: Hit) -> Action:
        with self._lock:
            self._hits.setdefault(hit.path, []).append(hit)
            script = self._scripts.get(hit.path)
            if script is None or not script.actions:
                return reply(200, b"ok")
            action = script.actions[script.index]
            if script.cycle:
                script.index = (script.index + 1) % len(script.actions)
            elif script.index < len(script.actions) - 1:
                script.index += 1
            return action

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        with self._server.lock:
            conns = list(self._server.open)
        for conn in conns:  # wake handler threads blocked on idle keep-alive connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join()


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class TripAfter(Strategy):
    """A stand-in for a per-host breaker: after ``failures`` failures it rejects every call.

    A failure is an exception or a response with a 5xx status.
    """

    kind = "trip_after"

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.count = 0
        self.calls = 0
        self._lock = threading.Lock()

    def _check(self, scope: Scope) -> None:
        with self._lock:
            self.calls += 1
            if self.count >= self.failures:
                raise RejectedError(f"{scope.policy}/{scope.strategy} is open", policy=scope.policy)

    def _failed(self) -> None:
        with self._lock:
            self.count += 1

    def _judge(self, result: Any) -> Any:
        if result.status_code >= 500:
            self._failed()
        return result

    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        def run(*args: Any, **kwargs: Any) -> Any:
            self._check(scope)
            try:
                result = fn(*args, **kwargs)
            except Exception:
                self._failed()
                raise
            return self._judge(result)

        return run

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        async def run(*args: Any, **kwargs: Any) -> Any:
            self._check(scope)
            try:
                result = await fn(*args, **kwargs)
            except Exception:
                self._failed()
                raise
            return self._judge(result)

        return run


class Registry:
    """A duck-typed keyed registry (what ``resilience.Keyed`` offers): ``for_key(key)``."""

    def __init__(self, make: Callable[[str], Strategy]) -> None:
        self.make = make
        self.by_key: dict[str, Strategy] = {}
        self.asked: list[str] = []

    def for_key(self, key: str) -> Strategy:
        self.asked.append(key)
        if key not in self.by_key:
            self.by_key[key] = self.make(key)
        return self.by_key[key]
