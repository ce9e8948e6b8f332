"""One process of the shared-limiter accuracy test: threads hammer one key, print admits.

Run as ``python _redis_rate_worker.py URL PREFIX KEY RATE BURST SECONDS THREADS``; prints
one JSON object: the Redis ``TIME`` (µs) of every admitted call and the number of tries.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import redis

from resilience.redis import RedisRateLimiter


def main() -> None:
    url, prefix, key, rate, burst, seconds, threads = sys.argv[1:8]
    client = redis.Redis.from_url(url)
    limiter = RedisRateLimiter(client, int(rate), burst=int(burst), key=key, prefix=prefix)
    admitted: list[int] = []
    tries = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + float(seconds)

    def hammer() -> None:
        mine: list[int] = []
        n = 0
        while time.perf_counter() < stop:
            reply = limiter._take_sync(0.0)  # the decision path of try_acquire, with its TIME
            n += 1
            if reply.wait == 0:
                mine.append(reply.server_us)
        with lock:
            admitted.extend(mine)
            tries[0] += n

    workers = [threading.Thread(target=hammer) for _ in range(int(threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"admitted": admitted, "tries": tries[0]}))


if __name__ == "__main__":
    main()
