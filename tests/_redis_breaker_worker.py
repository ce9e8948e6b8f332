"""One replica of the fleet test: calls a dependency through a shared breaker, logs each call.

Run as ``python _redis_breaker_worker.py URL PREFIX INDEX PAUSE``. The dependency is down
while the Redis key ``PREFIX dep:down`` exists, and takes 50 ms when up; every call that
reaches it is logged in the list ``PREFIX dep:calls`` with its wall-clock time. The worker
calls every ``PAUSE`` seconds until ``PREFIX stop`` exists, then prints one JSON object:
its calls as ``[time, "ok" | "failed" | "rejected"]`` and the reason of each transition of
its local breaker to open.
"""

from __future__ import annotations

import json
import sys
import time

import redis

from resilience import CircuitBreaker, CircuitOpenError
from resilience.circuit_breaker import CircuitStateChanged
from resilience.redis import RedisCircuitBreaker
from resilience.testing import capture_events


def main() -> None:
    url, prefix, index, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    local = CircuitBreaker(
        failure_threshold=5, open_duration=1.0, half_open_probes=2, name="dependency"
    )
    shared = RedisCircuitBreaker(local, client, key="dependency", prefix=prefix, poll_interval=0.1)

    @shared
    def dependency() -> None:
        if client.exists(prefix + "dep:down"):
            raise OSError("the dependency is down")
        client.rpush(prefix + "dep:calls", repr(time.time()))
        time.sleep(0.05)

    log: list[tuple[float, str]] = []
    with capture_events() as events:
        client.rpush(prefix + "ready", index)
        while not client.exists(prefix + "stop"):
            t = time.time()
            try:
                dependency()
                log.append((t, "ok"))
            except CircuitOpenError:
                log.append((t, "rejected"))
            except OSError:
                log.append((t, "failed"))
            time.sleep(pause)
    opened = [
        e.reason
        for e in events.events
        if isinstance(e, CircuitStateChanged) and e.to_state == "open"
    ]
    shared.stop()
    print(json.dumps({"index": index, "calls": log, "opened": opened}))


if __name__ == "__main__":
    main()
