"""The child process of ``tests/test_crash_sqlite.py``: one kernel node working a
SQLite job store, there to be killed with SIGKILL at any moment.

    python tests/crash_node.py seed DB N      store jobs s-00000 .. s-<N-1> (fixed ids)
    python tests/crash_node.py run DB LOG     work (and enqueue more) until killed
    python tests/crash_node.py final DB LOG   work until nothing is left, then exit 0

Every run of a task appends one line to LOG with ``os.write`` on an
``O_APPEND`` file *before* the task returns, and every acknowledged enqueue
one line after `JobQueue.enqueue` returns. A write that returned is in the
page cache, which outlives a SIGKILL, so whatever moment the node dies at,
"succeeded in the store" implies "in the log" and "enqueued" implies "in the
store". Log lines::

    job <label>                   a run of task ``work``
    enq <label>                   an enqueue of ``work`` the store acknowledged
    tick <schedule> <fire time>   a run of a schedule's job, with its slot
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import trio

from kernel.errors import JobConflict
from kernel.jobs.queue import JobQueue
from kernel.jobs.record import JobRecord, JobState
from kernel.ports import JobStore
from kernel.resilience.retry import RetryPolicy
from kernel.storage.sqlite import SQLiteStorage
from kernel.time.policies import AllowOverlap, CatchUp, MisfirePolicy, RunOnce, SkipMissed
from kernel.time.scheduler import Schedule, open_scheduler
from kernel.time.triggers import Every

WORK = "work"
TICKS = "ticks"
CONCURRENCY = 16
TICK_CONCURRENCY = 4
LEASE = timedelta(seconds=2)
HEARTBEAT = timedelta(milliseconds=500)
REAP_EVERY = timedelta(milliseconds=500)
INTERVAL = timedelta(milliseconds=250)
ANCHOR = datetime(2020, 1, 1, tzinfo=UTC)
#: Shorter than INTERVAL, so that at a restart the latest missed slot is
#: sometimes within grace and sometimes not: SkipMissed, not RunOnce.
SKIP_GRACE = timedelta(milliseconds=100)
SCHEDULES: dict[str, MisfirePolicy] = {
    "catchup": CatchUp(),
    "skip": SkipMissed(grace=SKIP_GRACE),
    "once": RunOnce(),
}
#: Attempts are spent by kills (a reaped lease counts as one); the test is
#: about crashes, not about running out of attempts.
RETRY = RetryPolicy(max_attempts=1000)
#: How many jobs a ``run`` node enqueues while it works (acknowledged ones are logged).
EXTRA_PER_RUN = 200


def seed_label(n: int) -> str:
    return f"s-{n:05d}"


class SlotStore:
    """The SQLite store, except that a claimed schedule job gets its slot as
    the ``slot`` keyword, so the tick task can log which slot it ran."""

    def __init__(self, inner: SQLiteStorage) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def claim(self, queue: str, **options: Any) -> list[JobRecord]:
        return [_with_slot(job) for job in await self.inner.claim(queue, **options)]

    async def complete_and_claim(
        self, queue: str, **options: Any
    ) -> tuple[set[str], list[JobRecord]]:
        done, jobs = await self.inner.complete_and_claim(queue, **options)
        return done, [_with_slot(job) for job in jobs]


def _with_slot(job: JobRecord) -> JobRecord:
    if job.fire_time is None:
        return job
    return attrs.evolve(job, kwargs={**job.kwargs, "slot": job.fire_time.isoformat()})


async def seed(db: str, count: int) -> None:
    now = datetime.now(UTC)
    async with await SQLiteStorage.open(db) as store:
        for n in range(count):
            label = seed_label(n)
            job = JobRecord(
                id=label, task=WORK, args=[label], queue=WORK, run_at=now, enqueued_at=now
            )
            with contextlib.suppress(JobConflict):  # seeded by an earlier try
                await store.enqueue(job)


async def drain(store: SQLiteStorage, queue: str) -> None:
    """Until no job of ``queue`` is queued or running; polled, because the
    jobs of a killed node are only the store's to see (running, until reaped)."""
    while True:
        live = 0
        for state in (JobState.queued, JobState.running):
            live += len(await store.list_jobs(state=state, queue=queue, limit=1))
        if not live:
            return
        await trio.sleep(0.1)


async def node(db: str, log_path: str, final: bool) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rng = random.Random()

    def record(line: str) -> None:
        os.write(fd, f"{line}\n".encode())

    async def work(label: str) -> None:
        await trio.sleep(rng.uniform(0.0, 0.04))  # keep jobs in flight
        record(f"job {label}")

    def tick(name: str, *, slot: str) -> None:
        record(f"tick {name} {slot}")

    try:
        async with (
            await SQLiteStorage.open(db) as storage,
            open_scheduler() as scheduler,
            trio.open_nursery() as nursery,
        ):
            store: JobStore = SlotStore(storage)
            queue = JobQueue(
                store, scheduler, lease=LEASE, heartbeat=HEARTBEAT, reap_every=REAP_EVERY
            )
            queue.register(WORK, work, queue=WORK, retry=RETRY)
            queue.register("tick", tick, queue=TICKS, retry=RETRY)
            queue.configure(WORK, concurrency=CONCURRENCY)
            queue.configure(TICKS, concurrency=TICK_CONCURRENCY)
            await nursery.start(queue.run)
            schedules: list[Schedule] = [
                queue.add_schedule(
                    "tick",
                    Every(INTERVAL, anchor=ANCHOR),
                    name=name,
                    args=[name],
                    misfire=misfire,
                    overlap=AllowOverlap(),
                )
                for name, misfire in SCHEDULES.items()
            ]
            print(f"ready {scheduler.clock.now().isoformat()}", flush=True)
            if not final:
                tag = f"x-{os.getpid()}"
                for k in range(EXTRA_PER_RUN):
                    label = f"{tag}-{k}"
                    await queue.enqueue(WORK, label)
                    record(f"enq {label}")
                    await trio.sleep(0.01)
                await trio.sleep_forever()
            # final: drain the work queue (reaped jobs of killed nodes included),
            # then stop the schedules and drain the jobs they enqueued.
            await drain(storage, WORK)
            for schedule in schedules:
                schedule.cancel()
            await trio.sleep(0.5)  # the feeder stores the last slots fired
            await drain(storage, TICKS)
            nursery.cancel_scope.cancel()
    finally:
        os.close(fd)


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "seed":
        trio.run(seed, argv[1], int(argv[2]))
    elif len(argv) == 3 and argv[0] in ("run", "final"):
        trio.run(node, argv[1], argv[2], argv[0] == "final")
    else:
        sys.exit(f"usage: {sys.argv[0]} seed DB N | run DB LOG | final DB LOG")


if __name__ == "__main__":
    main(sys.argv[1:])
