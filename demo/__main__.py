"""``python -m demo``: a flaky loopback service, called bare and through resilience.

- ``python -m demo``: the full run (about 15 s), then the side-by-side summary.
- ``python -m demo --quick``: the same story in about 3 s.
- ``python -m demo --serve``: keep the flaky service running (its script on a loop) and
  print its URL, to explore with curl or a browser; ``/stats`` shows what it is doing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence

from .flaky_server import FlakyService
from .runner import FULL_RUN, QUICK_RUN, render, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a short run (about 3 s)")
    mode.add_argument("--serve", action="store_true", help="only run the flaky service")
    parser.add_argument("--port", type=int, default=0, help="port for --serve (default: free)")
    parser.add_argument("--seed", type=int, help="seed of the service's random draws")
    args = parser.parse_args(argv)

    settings = QUICK_RUN if args.quick else FULL_RUN
    if args.seed is not None:
        script = dataclasses.replace(settings.script, seed=args.seed)
        settings = dataclasses.replace(settings, script=script)

    if args.serve:
        service = FlakyService(settings.script, port=args.port, loop=True, verbose=True)
        print(f"Flaky service on {service.url}  (stats: {service.url}stats)")
        print("Its script, replayed forever:")
        print("\n".join(f"  {line}" for line in settings.script.timeline()))
        print("Ctrl-C to stop.", flush=True)
        try:
            service.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            service.close()
        return 0

    print(f"Running {settings.calls} calls per column for {settings.script.duration:g} s …\n")
    sys.stdout.flush()
    print(render(asyncio.run(run(settings))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
