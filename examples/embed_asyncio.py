"""An asyncio program that hosts the kernel as a trio guest on its own loop.

asyncio tasks do the program's work; the kernel runs a heartbeat schedule on
the same thread; asyncio code calls into the kernel with ``await
host.call(...)``. Halfway through, the program disables the heartbeat
plugin. It stops by itself.

python examples/embed_asyncio.py              # runs for 3 seconds
python examples/embed_asyncio.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio

from examples.heartbeat import Heartbeat, stamp
from kernel import AsyncioHandle, ExitCode, Kernel, embed_in_asyncio


async def serve_requests(host: AsyncioHandle, seconds: float, every: float) -> None:
    """Stands in for the asyncio application (a web server, a bot...)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    halfway = loop.time() + seconds / 2
    requests = 0
    while loop.time() < deadline:
        await asyncio.sleep(every)
        requests += 1
        # kernel objects live in trio: read them through the handle
        status = await host.call_sync(host.kernel.status)
        state = status["plugins"]["heartbeat"]["state"]
        print(f"{stamp()}  app: request {requests} served; heartbeat is {state}")
        if loop.time() >= halfway and state == "enabled":
            await host.call(host.kernel.disable, "heartbeat")  # an async kernel method


async def main(seconds: float, *, interval: float = 0.5, every: float = 0.4) -> ExitCode:
    kernel = Kernel([Heartbeat(interval)], shutdown_grace=2)
    async with embed_in_asyncio(kernel) as host:  # returns once the plugins are enabled
        await serve_requests(host, seconds, every)
        code = await host.stop()  # graceful; leaving the block would stop it too
    print(f"{stamp()}  app: kernel stopped with {code.name}")
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3, help="how long to run")
    raise SystemExit(asyncio.run(main(parser.parse_args().seconds)))
