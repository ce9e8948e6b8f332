"""A real Prometheus server on loopback, scraping targets of the test's, for tests that
check what a scrape of the library's ``/metrics`` gives.

The binary comes from Debian's ``prometheus`` package (``.ci/run`` installs it). Without
it a test fails under CI=true and skips elsewhere (``need_server``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from conftest import free_port, need_server


class PrometheusServer:
    """A running server: :meth:`query` asks its HTTP API, :attr:`log` is what it wrote."""

    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self._log_path = log_path

    @property
    def log(self) -> str:
        return self._log_path.read_text()[-2000:]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of ``promql`` now (empty while nothing matches)."""
        try:
            response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=2)
        except httpx.HTTPError:
            return []
        if response.status_code != 200:
            return []
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    def wait_for(self, promql: str, *, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll :meth:`query` until ``promql`` matches something; fail with the server's
        log if it never does within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"Prometheus never answered {promql}; its log ends with:\n{self.log}")


@contextmanager
def prometheus_scraping(
    targets: Sequence[str], tmp_path: Path, *, metrics_path: str = "/metrics"
) -> Iterator[PrometheusServer]:
    """A Prometheus server scraping ``targets`` (``host:port``) every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        need_server("the prometheus server binary", FileNotFoundError("prometheus not on PATH"))
        raise AssertionError("unreachable: need_server fails or skips")
    listed = ", ".join(f"'{t}'" for t in targets)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: resilience\n"
        f"    metrics_path: {metrics_path}\n"
        f"    static_configs:\n      - targets: [{listed}]\n"
    )
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            yield PrometheusServer(f"http://127.0.0.1:{port}", log_path)
        finally:
            proc.terminate()
            proc.wait(10)
