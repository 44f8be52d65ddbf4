"""Run burrow's real test origin (`burrow.testing.origins`) as its own process.

The e2e tests measure the edge's and the connector's memory per process, so the origin lives
outside the pytest process too and behaves like any application a user puts behind a tunnel.
Prints the bound port on one line, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from burrow.testing.origins import start_test_origin


async def main(port: int) -> None:
    runner, bound = await start_test_origin("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(bound, flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
