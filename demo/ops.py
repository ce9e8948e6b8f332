"""What an operator sees while the demo runs: ``/metrics`` and ``/status`` on loopback.

:class:`OpsEndpoints` registers resilience's Prometheus collector in a registry of its
own (``resilience.prometheus.enable(registry)``), keeps the recent events for the status
view (``resilience.actuator.record_events()``) and serves both from one small WSGI
server. :func:`scrape` reads ``/metrics`` over HTTP and parses it with
``prometheus_client``'s own parser, as a Prometheus server would.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import resilience.prometheus
from resilience import actuator

from .wsgi_server import LoopbackWSGIServer, WSGIApp

__all__ = ["OpsEndpoints", "Sample", "Scrape", "scrape", "fetch_status"]


def _router(metrics: WSGIApp, status: WSGIApp) -> WSGIApp:
    index = (
        b"resilience demo\n\n"
        b"/metrics  Prometheus exposition (resilience.prometheus)\n"
        b"/status   every named policy's snapshot and the recent events (resilience.actuator)\n"
    )

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/").rstrip("/")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/status":
            return status(environ, start_response)
        code = "200 OK" if path == "" else "404 Not Found"
        start_response(code, [("Content-Type", "text/plain"), ("Content-Length", str(len(index)))])
        return [index]

    return app


class OpsEndpoints:
    """``/metrics`` and ``/status`` on ``127.0.0.1:port`` (a free port by default).

    :meth:`start` switches the exporter and the event log on; :meth:`close` switches
    them off again and stops serving.
    """

    def __init__(self, *, port: int = 0, events: int = 200) -> None:
        self.registry = CollectorRegistry()
        self._events = events
        self._server: LoopbackWSGIServer | None = None
        self._port = port

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("OpsEndpoints is not started")
        return self._server.url

    @property
    def metrics_url(self) -> str:
        return self.url + "metrics"

    @property
    def status_url(self) -> str:
        return self.url + "status"

    def start(self) -> OpsEndpoints:
        resilience.prometheus.enable(self.registry)
        actuator.record_events(limit=self._events)
        app = _router(resilience.prometheus.wsgi_app(self.registry), actuator.wsgi_app())
        try:
            self._server = LoopbackWSGIServer(app, port=self._port).start()
        except BaseException:
            self._switch_off()
            raise
        return self

    def _switch_off(self) -> None:
        actuator.stop_recording()
        resilience.prometheus.disable(self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            self._switch_off()

    def __enter__(self) -> OpsEndpoints:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Sample:
    """One parsed sample: its name (``..._total`` for counters), labels and value."""

    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Scrape:
    """One parsed scrape of ``/metrics``."""

    url: str
    families: dict[str, list[Sample]]
    """Samples by family name (a counter's family name has no ``_total``)."""

    def samples(self, family: str, **labels: str) -> list[Sample]:
        """The samples of ``family`` whose labels include ``labels``."""
        return [
            s
            for s in self.families.get(family, [])
            if all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, family: str, **labels: str) -> float:
        """The sum of the matching samples (0 when there are none)."""
        return sum(s.value for s in self.samples(family, **labels))


def scrape(url: str, *, timeout: float = 5.0) -> Scrape:
    """GET ``url`` and parse the exposition text with ``prometheus_client.parser``."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    families = {
        family.name: [Sample(s.name, dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }
    return Scrape(url, families)


def fetch_status(url: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """GET the status view (``resilience.actuator``) as JSON data."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data
