"""A threaded WSGI server on loopback for the demo's small services (standard library only).

Each request runs in its own daemon thread, so a scrape of ``/metrics`` never waits for
another request. The environ also carries the request's socket under
``demo.connection``, so that a scripted network fault can cut the connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

__all__ = ["WSGIApp", "LoopbackWSGIServer"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64


class _Handler(WSGIRequestHandler):
    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ["demo.connection"] = self.connection
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the demo prints its own summary; access logs would drown it


class LoopbackWSGIServer:
    """Serve ``app`` on ``host:port`` (a free port by default) from a background thread."""

    def __init__(self, app: WSGIApp, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._server = _Server((host, port), _Handler)
        self._server.set_app(app)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> LoopbackWSGIServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # so that close() returns at once
            name=f"wsgi-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> LoopbackWSGIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
