"""A redis-server of a test's own, on a free loopback port, that the test may kill."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

from conftest import free_port


class Server:
    """A redis-server of the test's own, on a free loopback port, that it may kill."""

    def __init__(self, port: int, workdir: str) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
            ],
            stdout=subprocess.DEVNULL,
        )
        c = redis.Redis(port=self.port)
        deadline = time.perf_counter() + 5.0
        while True:
            try:
                c.ping()
                break
            except redis.ConnectionError:
                if time.perf_counter() > deadline:
                    raise
                time.sleep(0.02)
        c.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


def start_server() -> Iterator[Server]:
    """A started :class:`Server` for a fixture; stopped (and resumed if paused) after."""
    from tests.conftest import need_server

    if not (shutil.which("redis-server") or os.path.exists("/usr/bin/redis-server")):
        need_server("the redis-server binary", FileNotFoundError("redis-server"))
    with tempfile.TemporaryDirectory() as workdir:
        s = Server(free_port(), workdir)
        s.start()
        yield s
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGCONT)
            s.kill()
