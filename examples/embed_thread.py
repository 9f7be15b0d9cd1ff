"""A plain, thread-based program that hosts the kernel in a background thread.

The main thread does the program's own (blocking) work; the kernel runs a
heartbeat schedule meanwhile, and the program reads the kernel's status
through the thread-safe handle. It stops by itself.

python examples/embed_thread.py              # runs for 3 seconds
python examples/embed_thread.py --seconds 10
"""

from __future__ import annotations

import argparse
import time

from examples.heartbeat import Heartbeat, stamp
from kernel import ExitCode, Kernel, KernelThread


def fired(status: dict[str, object]) -> int:
    schedules = status["schedules"]
    assert isinstance(schedules, list)
    return sum(schedule["fired"] for schedule in schedules)


def main(seconds: float, *, interval: float = 0.5, batch: float = 0.4) -> ExitCode:
    kernel = Kernel([Heartbeat(interval)], shutdown_grace=2)
    with KernelThread(kernel) as host:  # returns once the plugins are enabled
        deadline = time.monotonic() + seconds
        batches = 0
        while time.monotonic() < deadline:
            time.sleep(batch)  # the program's own blocking work
            batches += 1
            # kernel objects are not thread-safe: read them on the kernel's thread
            status = host.call_sync(kernel.status)
            print(f"{stamp()}  app: batch {batches} done; heartbeats so far: {fired(status)}")
        code = host.stop()  # graceful; leaving the block would stop it too
    print(f"{stamp()}  app: kernel stopped with {code.name}")
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3, help="how long to run")
    raise SystemExit(main(parser.parse_args().seconds))
