"""Latency added per HTTP request by the resilient transports, on loopback.

A minimal keep-alive HTTP/1.1 server runs in a separate process (so it does not share
the client's GIL) on 127.0.0.1 and answers every request with a tiny 200. The clients
take turns in short blocks, in a rotating order, so drift and position hit every case
alike; the median latency per
request is compared with the bare client of the same library, in the same run. Nothing
is retried here: this is the price of the happy path.

    python -m benchmarks.bench_http            # full run
    RESILIENCE_BENCH_QUICK=1 python -m benchmarks.bench_http
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import requests
import urllib3
from requests.adapters import HTTPAdapter

from resilience.httpx import AsyncResilientTransport, ResilientTransport
from resilience.requests import ResilientAdapter

try:
    import httpx_retries
except ImportError:  # optional peer
    httpx_retries = None

SERVER = r"""
import asyncio, sys

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""

QUICK = os.environ.get("RESILIENCE_BENCH_QUICK") == "1"
ROUNDS = 2 if QUICK else 60
PER_ROUND = 10 if QUICK else 75
WARMUP = 5 if QUICK else 200


def _start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/"


def _sync_cases(url: str) -> dict[str, Callable[[], Any]]:
    cases: dict[str, Callable[[], Any]] = {}
    clients: list[Any] = []

    def add(name: str, client: Any) -> None:
        clients.append(client)
        cases[name] = lambda: client.get(url)

    add("httpx: bare HTTPTransport", httpx.Client(transport=httpx.HTTPTransport()))
    add("httpx: ResilientTransport", httpx.Client(transport=ResilientTransport()))
    if httpx_retries is not None:
        add(
            "httpx: httpx-retries RetryTransport",
            httpx.Client(transport=httpx_retries.RetryTransport()),
        )
    bare = requests.Session()
    bare.mount("http://", HTTPAdapter())
    add("requests: bare HTTPAdapter", bare)
    retrying = requests.Session()
    retrying.mount(
        "http://",
        HTTPAdapter(
            max_retries=urllib3.Retry(
                total=3, backoff_factor=0.1, status_forcelist=[429, 502, 503, 504]
            )
        ),
    )
    add("requests: HTTPAdapter + urllib3 Retry", retrying)
    ours = requests.Session()
    ours.mount("http://", ResilientAdapter())
    add("requests: ResilientAdapter", ours)
    cases["__clients__"] = lambda: clients
    return cases


def _measure(cases: dict[str, Callable[[], Any]]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        for _ in range(WARMUP):
            fn()
    clock = time.perf_counter_ns
    pairs = [(fn, samples[name]) for name, fn in cases.items()]
    for r in range(ROUNDS):
        for fn, out in _rotated(pairs, r):
            for _ in range(PER_ROUND):
                t0 = clock()
                fn()
                out.append((clock() - t0) / 1000.0)
    return samples


def _rotated(items: list[Any], r: int) -> list[Any]:
    """The clients in a different order each round, so no one always goes first."""
    k = r % len(items)
    return items[k:] + items[:k]


async def _ameasure(url: str) -> dict[str, list[float]]:
    clients = {
        "httpx async: bare AsyncHTTPTransport": httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport()
        ),
        "httpx async: AsyncResilientTransport": httpx.AsyncClient(
            transport=AsyncResilientTransport()
        ),
    }
    if httpx_retries is not None:
        clients["httpx async: httpx-retries RetryTransport"] = httpx.AsyncClient(
            transport=httpx_retries.RetryTransport()
        )
    samples: dict[str, list[float]] = {name: [] for name in clients}
    clock = time.perf_counter_ns
    try:
        for client in clients.values():
            for _ in range(WARMUP):
                await client.get(url)
        pairs = [(client, samples[name]) for name, client in clients.items()]
        for r in range(ROUNDS):
            for client, out in _rotated(pairs, r):
                for _ in range(PER_ROUND):
                    t0 = clock()
                    await client.get(url)
                    out.append((clock() - t0) / 1000.0)
    finally:
        for client in clients.values():
            await client.aclose()
    return samples


def _report(title: str, samples: dict[str, list[float]], baseline: str) -> None:
    base = statistics.median(samples[baseline])
    print(f"\n## {title}\n")
    head = ("client", "median µs", "p90 µs", "added µs", "added")
    print(f"| {head[0]:<42} | {head[1]:>10} | {head[2]:>8} | {head[3]:>9} | {head[4]:>7} |")
    print(f"|{'-' * 44}|{'-' * 11}:|{'-' * 9}:|{'-' * 10}:|{'-' * 8}:|")
    for name, values in samples.items():
        med = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        us = "" if name == baseline else f"{med - base:+.1f}"
        pct = "" if name == baseline else f"{(med - base) / base * 100:+.1f}%"
        print(f"| {name:<42} | {med:>10.1f} | {p90:>8.1f} | {us:>9} | {pct:>7} |")


def main() -> None:
    proc, url = _start_server()
    try:
        print(
            f"# HTTP latency per request on loopback ({ROUNDS * PER_ROUND} requests per "
            f"client, interleaved; Python {sys.version.split()[0]}, "
            f"httpx {httpx.__version__}, requests {requests.__version__})"
        )
        if httpx_retries is None:
            print("(httpx-retries is not installed: its rows are skipped)")
        cases = _sync_cases(url)
        clients = cases.pop("__clients__")()
        try:
            samples = _measure(cases)
        finally:
            for c in clients:
                c.close()
        _report(
            "httpx.Client",
            {k: v for k, v in samples.items() if k.startswith("httpx")},
            "httpx: bare HTTPTransport",
        )
        _report(
            "requests.Session",
            {k: v for k, v in samples.items() if k.startswith("requests")},
            "requests: bare HTTPAdapter",
        )
        _report(
            "httpx.AsyncClient",
            asyncio.run(_ameasure(url)),
            "httpx async: bare AsyncHTTPTransport",
        )
    finally:
        proc.terminate()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    main()
