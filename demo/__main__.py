"""``python -m demo``: a flaky loopback service, called bare and through resilience.

- ``python -m demo``: the full run (about 15 s), then the side-by-side summary, the
  breaker's transitions, a scrape of /metrics and the idempotency scene.
- ``python -m demo --quick``: the same story in about 3 s.
- ``python -m demo --serve``: keep everything up to explore with curl or a browser: the
  flaky service (its script on a loop, /stats shows what it does), protected traffic
  against it, /metrics, /status and the payments service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Sequence

from .flaky_server import FlakyService
from .ops import OpsEndpoints
from .payments import PaymentsService
from .runner import FULL_RUN, QUICK_RUN, render, run, serve


def _announce(ops: OpsEndpoints, payments: PaymentsService) -> None:
    print(f"Metrics: {ops.metrics_url}   Status: {ops.status_url}")
    print(f"Payments service: {payments.url}\n", flush=True)


def _announce_serving(service: FlakyService, ops: OpsEndpoints, payments: PaymentsService) -> None:
    print(f"Flaky service  {service.url}  (what it is doing: {service.url}stats)")
    print("  its script, replayed forever, with protected traffic against it:")
    print("\n".join(f"    {line}" for line in service.script.timeline()))
    print(f"Metrics        {ops.metrics_url}")
    print(f"Status         {ops.status_url}")
    print(f"Payments       {payments.url}  (GET lists the charges made)")
    print(
        f"  curl -si -X POST {payments.url} -H 'Idempotency-Key: order-1' -d '{{\"amount\": 42}}'"
    )
    print("  (send it twice: the second answer is replayed, Idempotent-Replayed: true)")
    print("Ctrl-C to stop.", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a short run (about 3 s)")
    mode.add_argument("--serve", action="store_true", help="keep everything up, until Ctrl-C")
    parser.add_argument("--port", type=int, default=0, help="flaky service port for --serve")
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="port of /metrics and /status (default: free)"
    )
    parser.add_argument("--seed", type=int, help="seed of the service's random draws")
    args = parser.parse_args(argv)

    settings = QUICK_RUN if args.quick else FULL_RUN
    if args.seed is not None:
        script = dataclasses.replace(settings.script, seed=args.seed)
        settings = dataclasses.replace(settings, script=script)

    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                serve(
                    settings,
                    port=args.port,
                    metrics_port=args.metrics_port,
                    announce=_announce_serving,
                )
            )
        return 0

    print(f"Running {settings.calls} calls per column for {settings.script.duration:g} s …")
    sys.stdout.flush()
    report = asyncio.run(run(settings, metrics_port=args.metrics_port, announce=_announce))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
