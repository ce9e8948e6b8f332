"""A flaky HTTP service on loopback that follows a seeded script over time.

The :class:`Script` is a list of :class:`Phase` objects: healthy stretches, a latency
spike, a full outage and an error burst that answers ``503`` with ``Retry-After``.
Which request fails or stalls is drawn from a random source seeded once, three draws per
request, so a run is repeatable up to the order in which concurrent requests arrive.

``GET /stats`` is never flaky: it shows the current phase and what the service answered
so far, for exploring ``python -m demo --serve`` with curl or a browser.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["Phase", "Script", "FlakyService", "STANDARD", "QUICK"]


@dataclass(frozen=True, slots=True)
class Phase:
    """One stretch of the script and how the service behaves during it.

    ``error_rate`` of the requests get ``503`` (with ``Retry-After: retry_after`` when
    set); ``slow_rate`` of the others answer only after ``slow_seconds``; ``down`` makes
    every request a ``503`` without a hint, as a load balancer with no healthy backend.
    """

    name: str
    seconds: float
    error_rate: float = 0.0
    retry_after: int | None = None
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    down: bool = False

    def describe(self) -> str:
        if self.down:
            return "every request 503 (no Retry-After)"
        parts = []
        if self.error_rate:
            hint = f", Retry-After: {self.retry_after}" if self.retry_after is not None else ""
            parts.append(f"{self.error_rate:.0%} 503{hint}")
        if self.slow_rate:
            parts.append(f"{self.slow_rate:.0%} take {self.slow_seconds:g} s")
        return ", ".join(parts) or "all fast"


@dataclass(frozen=True, slots=True)
class Script:
    """Phases played in order from :meth:`FlakyService.restart`; the last one lasts."""

    phases: tuple[Phase, ...]
    seed: int = 7
    latency: tuple[float, float] = (0.002, 0.008)
    """Every answer takes a uniform draw from this range (seconds)."""

    @property
    def duration(self) -> float:
        return sum(p.seconds for p in self.phases)

    def phase_at(self, t: float, *, loop: bool = False) -> Phase:
        """The phase ``t`` seconds after the start (wrapping around when ``loop``)."""
        if loop:
            t %= self.duration
        for phase in self.phases:
            if t < phase.seconds:
                return phase
            t -= phase.seconds
        return self.phases[-1]

    def scaled(self, factor: float) -> Script:
        """The same story, each phase ``factor`` times as long (per-request delays kept)."""
        phases = tuple(
            Phase(
                p.name,
                p.seconds * factor,
                p.error_rate,
                p.retry_after,
                p.slow_rate,
                p.slow_seconds,
                p.down,
            )
            for p in self.phases
        )
        return Script(phases, self.seed, self.latency)

    def timeline(self) -> list[str]:
        """One line per phase: ``start - end s  name  behaviour``."""
        lines, start = [], 0.0
        for p in self.phases:
            end = start + p.seconds
            lines.append(f"{start:4.1f} - {end:4.1f} s  {p.name:<13}  {p.describe()}")
            start = end
        return lines


# The upstream slows down, falls over, comes back overloaded asking for patience, recovers.
STANDARD = Script(
    (
        Phase("healthy", 3.0, error_rate=0.01),
        Phase("latency spike", 2.5, slow_rate=0.3, slow_seconds=1.2),
        Phase("outage", 2.5, down=True),
        Phase("error burst", 3.0, error_rate=0.4, retry_after=1),
        Phase("recovered", 3.0, error_rate=0.01),
    )
)
QUICK = STANDARD.scaled(0.2)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "FlakyService/1"

    def do_GET(self) -> None:
        service = self.server.service
        if self.path.rstrip("/") == "/stats":
            self._send(200, service.stats())
            return
        status, body, headers, delay = service.decide()
        # Waiting on the closing event lets close() cut a stalled answer short.
        service.closing.wait(delay)
        self._send(status, body, headers)

    def _send(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.service.verbose:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # bursts of new connections must not hit the default of 5
    service: FlakyService

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is the point of the demo, not an error.
        pass


class FlakyService:
    """The scripted service on ``127.0.0.1`` (a free port unless ``port`` is given).

    Use it as a context manager, or :meth:`start` and :meth:`close`. :meth:`restart`
    starts the script (and the counters) over; ``loop=True`` replays it forever.
    """

    def __init__(
        self,
        script: Script = STANDARD,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        loop: bool = False,
        verbose: bool = False,
    ) -> None:
        self.script = script
        self.host = host
        self.loop = loop
        self.verbose = verbose
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server((host, port), _Handler)
        self._server.service = self
        self._thread: threading.Thread | None = None
        self.restart()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_port}/"

    def restart(self) -> None:
        """Start the script from its first phase; reset the random source and the counters."""
        with self._lock:
            self._t0 = time.monotonic()
            self._rng = random.Random(self.script.seed)
            self._requests = 0
            self._answers: Counter[str] = Counter()
            self._by_phase: Counter[str] = Counter()

    @property
    def requests(self) -> int:
        """Requests that reached the service since :meth:`restart` (``/stats`` excluded)."""
        with self._lock:
            return self._requests

    def requests_by_phase(self) -> dict[str, int]:
        """Requests since :meth:`restart` by the phase the service was in when each arrived."""
        with self._lock:
            return dict(self._by_phase)

    def decide(self) -> tuple[int, dict[str, Any], dict[str, str], float]:
        """Status, body, headers and delay of the next answer, by the script."""
        with self._lock:
            t = time.monotonic() - self._t0
            phase = self.script.phase_at(t, loop=self.loop)
            number = self._requests = self._requests + 1
            self._by_phase[phase.name] += 1
            roll, stall = self._rng.random(), self._rng.random()
            delay = self._rng.uniform(*self.script.latency)
            if phase.down:
                kind = "503 outage"
            elif roll < phase.error_rate:
                kind = "503 overloaded"
            elif stall < phase.slow_rate:
                kind = "200 slow"
                delay += phase.slow_seconds
            else:
                kind = "200"
            self._answers[kind] += 1
        if kind.startswith("503"):
            headers = {}
            if not phase.down and phase.retry_after is not None:
                headers["Retry-After"] = str(phase.retry_after)
            return 503, {"error": kind[4:], "phase": phase.name}, headers, delay
        return 200, {"request": number, "phase": phase.name}, {}, delay

    def stats(self) -> dict[str, Any]:
        with self._lock:
            t = time.monotonic() - self._t0
            return {
                "phase": self.script.phase_at(t, loop=self.loop).name,
                "seconds": round(t, 3),
                "requests": self._requests,
                "answers": dict(self._answers),
                "requests_by_phase": dict(self._by_phase),
            }

    def start(self) -> FlakyService:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # so that close() returns at once
            name="flaky-service",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        self._server.serve_forever()

    def close(self) -> None:
        """Stop serving and close the listening socket; stalled answers are cut short."""
        self.closing.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FlakyService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
