"""Interval and cron work under trio, printing each fire; and `Heartbeat`,
the same as a plugin, which the embedding examples host.

python examples/heartbeat.py            # runs for 12 seconds
python examples/heartbeat.py --seconds 0  # runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import math
from datetime import datetime

import trio

from kernel import Clock, Cron, Every, Manifest, Plugin, PluginContext, open_scheduler


def stamp() -> str:
    return datetime.now().astimezone().strftime("%H:%M:%S.%f")[:-3]


class Heartbeat(Plugin):
    """Prints a line at each fire, on the kernel's trio thread."""

    manifest = Manifest("heartbeat", description="says it is alive")

    def __init__(self, interval: float) -> None:
        self.interval = interval

    async def on_enable(self, ctx: PluginContext) -> None:
        ctx.schedule(self.beat, Every(seconds=self.interval))

    def beat(self) -> None:
        print(f"{stamp()}  kernel: heartbeat")


async def main(seconds: float, clock: Clock | None = None) -> None:
    async with open_scheduler(clock) as scheduler:
        scheduler.add_schedule(lambda: print(f"{stamp()}  every 2 s"), Every(seconds=2))

        async def sync_report() -> None:
            print(f"{stamp()}  cron */5 * * * * * (seconds field: every 5 s)")

        scheduler.add_schedule(sync_report, Cron("*/5 * * * * *"))
        for schedule in scheduler.schedules:
            print(f"scheduled {schedule.name!r}: next at {schedule.next_fire_time:%H:%M:%S}")
        await trio.sleep(seconds or math.inf)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12, help="how long to run (0: forever)")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main, parser.parse_args().seconds)
