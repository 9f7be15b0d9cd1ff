"""One kernel node of a multi-process test (`kernel.testing.cluster`): a
process working a job store that other nodes share, there to be killed with
SIGKILL (or to live through a server restart, or its connections killed) at
any moment. The store is opened from its URL by the adapter registered for
its scheme, so every adapter's cluster tests run the same program.

    python -m kernel.testing.node URL NAME LOG [--no-schedules]

It works the ``work`` queue (task ``work(label)``) and, unless told not to,
runs the schedules of `SCHEDULES` on the ``ticks`` queue, as every node
does: each slot must become one job cluster-wide. It prints ``ready`` once
it serves, and on SIGTERM stops as a kernel does (running jobs are given
back) and exits 0.

Every line goes to LOG with one ``os.write`` on an ``O_APPEND`` file, so
lines of several nodes never interleave, and a write that returned
outlives a SIGKILL: a job the store says succeeded is in the log. Lines::

    start <node> <job id> <wall µs> <schedule|-> <fire time|->   a run begins
    done <node> <label> <wall µs>                                 ``work`` is returning

``start`` comes from the queue's ``job.started`` event (the only place a
run's slot is visible), published to `LogBus`.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import trio

from kernel.jobs.queue import JobQueue
from kernel.ports import Bus, JobStore, JSONLike, Subscription
from kernel.resilience.retry import RetryPolicy
from kernel.runtime.discovery import open_storage
from kernel.time.policies import (
    AllowOverlap,
    CatchUp,
    MisfirePolicy,
    OverlapPolicy,
    RunOnce,
    SkipIfRunning,
)
from kernel.time.scheduler import open_scheduler
from kernel.time.triggers import Every

WORK = "work"
TICKS = "ticks"
CONCURRENCY = 8
TICK_CONCURRENCY = 2
LEASE = timedelta(seconds=2)
HEARTBEAT = timedelta(milliseconds=500)
REAP_EVERY = timedelta(milliseconds=500)
WORK_SECONDS = (0.002, 0.03)
TICK_SECONDS = (0.005, 0.05)
ANCHOR = datetime(2020, 1, 1, tzinfo=UTC)
#: name: (interval, overlap, misfire). ``fast`` catches up every slot, so
#: however late a node's timers run, the slots form an unbroken grid: one
#: missing is a slot lost. ``slow`` skips a slot while its last job is live.
SCHEDULES: dict[str, tuple[timedelta, OverlapPolicy, MisfirePolicy]] = {
    "fast": (timedelta(milliseconds=200), AllowOverlap(max_running=4), CatchUp()),
    "slow": (timedelta(milliseconds=500), SkipIfRunning(), RunOnce()),
}
#: Kills and expired leases spend attempts; this test is about crashes,
#: not about running out of them.
RETRY = RetryPolicy(max_attempts=100)


def wall_us() -> int:
    return time.time_ns() // 1000


class LogBus:
    """A `kernel.ports.Bus` that only logs each ``job.started`` (with its
    slot, for schedule runs): the queue publishes, nobody subscribes."""

    def __init__(self, name: str, record: Callable[[str], None]) -> None:
        self.name = name
        self.record = record

    async def publish(self, topic: str, payload: JSONLike = None) -> None:
        if topic == "job.started" and isinstance(payload, dict):
            slot = f"{payload.get('schedule') or '-'} {payload.get('fire_time') or '-'}"
            self.record(f"start {self.name} {payload['id']} {wall_us()} {slot}")
        await trio.lowlevel.checkpoint()

    @asynccontextmanager
    async def subscribe(
        self, pattern: str, *, buffer: int | None = None
    ) -> AsyncIterator[Subscription]:
        raise NotImplementedError("LogBus only logs what the queue publishes")
        yield  # pragma: no cover

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def node(url: str, name: str, log_path: str, schedules: bool) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random()

    def record(line: str) -> None:
        os.write(fd, f"{line}\n".encode())

    async def work(label: str) -> None:
        await trio.sleep(rng.uniform(*WORK_SECONDS))
        record(f"done {name} {label} {wall_us()}")

    async def tick(schedule: str) -> None:
        await trio.sleep(rng.uniform(*TICK_SECONDS))

    storage = await open_storage(url)
    if not isinstance(storage, JobStore):
        await storage.aclose()
        raise SystemExit(f"{url.split(':', 1)[0]}: this storage keeps no jobs")
    # SIGTERM is caught from the start: one right after "ready" stops us cleanly too
    try:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with open_scheduler() as scheduler, trio.open_nursery() as nursery:
                queue = JobQueue(
                    storage,
                    scheduler,
                    bus=LogBus(name, record),
                    worker=name,
                    lease=LEASE,
                    heartbeat=HEARTBEAT,
                    reap_every=REAP_EVERY,
                )
                queue.register(WORK, work, queue=WORK, retry=RETRY)
                queue.register("tick", tick, queue=TICKS, retry=RETRY)
                queue.configure(WORK, concurrency=CONCURRENCY)
                queue.configure(TICKS, concurrency=TICK_CONCURRENCY)
                await nursery.start(queue.run)
                if schedules:
                    for label, (interval, overlap, misfire) in SCHEDULES.items():
                        queue.add_schedule(
                            "tick",
                            Every(interval, anchor=ANCHOR),
                            name=label,
                            args=[label],
                            overlap=overlap,
                            misfire=misfire,
                        )
                print("ready", flush=True)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()  # the queue gives its running jobs back
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()
        os.close(fd)


if TYPE_CHECKING:

    def _is_a_bus(bus: LogBus) -> Bus:
        return bus  # mypy checks LogBus against the port


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("log")
    parser.add_argument("--no-schedules", dest="schedules", action="store_false")
    parser.add_argument(
        "--log-info", action="append", default=[], help="a logger to show at info level"
    )
    options = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {options.name} %(name)s %(levelname)s %(message)s",
    )
    for name in options.log_info:
        logging.getLogger(name).setLevel(logging.INFO)  # an adapter's reconnections
    trio.run(node, options.url, options.name, options.log, options.schedules)


if __name__ == "__main__":
    main()
