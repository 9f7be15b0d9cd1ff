"""The workers' own promises, in one process (issue #9): jobs of tasks not
registered yet wait, outcomes are stored despite a busy store, a stored
retry policy never imports and never loops, timeouts hold for blocking code,
leases outlive a blocked loop, a stop gives prefetched jobs back and says
what it waits for. Time is trio's MockClock where the test allows it; the
tests of real blocking use short real sleeps, since blocking is the point."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from test_queue import at, make_queue, scheduler_at_t0, serving
from trio.testing import MockClock

from kernel.errors import StorageError
from kernel.jobs.leases import LeaseKeeper
from kernel.jobs.queue import JobQueue
from kernel.jobs.record import JobState
from kernel.observe.watchdog import LoopWatchdog
from kernel.resilience.retry import RetryPolicy
from kernel.storage.memory import MemoryJobStore
from kernel.storage.sqlite import SQLiteStorage
from kernel.time.scheduler import Scheduler

S = timedelta(seconds=1)


# ---------------------------------------------------------------------------
# Tasks not registered (yet)
# ---------------------------------------------------------------------------


async def test_a_job_of_a_task_registered_later_waits_and_runs(autojump_clock: MockClock) -> None:
    ran: list[float] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.register("known", lambda: None)  # serves "default"
        store = queue.store
        early = await queue.enqueue("known")
        job = early.__class__(task="later", run_at=at(0), enqueued_at=at(0))
        await store.enqueue(job)
        async with serving(queue):
            await trio.sleep(10)
            waiting = await store.get_job(job.id)
            assert queue.describe_unknown_tasks().keys() == {"later"}
            queue.register("later", lambda: ran.append(trio.current_time()))
            await trio.sleep(60)
    assert waiting is not None
    assert (waiting.state, waiting.attempts) == (JobState.queued, 0)  # not spent, not buried
    assert len(ran) == 1
    done = await store.get_job(job.id)
    assert done is not None
    assert done.state is JobState.succeeded


async def test_a_task_that_stays_unknown_is_buried_after_the_grace(
    autojump_clock: MockClock,
) -> None:
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler, unknown_task_grace=timedelta(minutes=5))
        queue.register("known", lambda: None)
        job = (await queue.enqueue("known")).__class__(task="gone", run_at=at(0), enqueued_at=at(0))
        await queue.store.enqueue(job)
        async with serving(queue):
            await trio.sleep(4 * 60)
            before = await queue.get_job(job.id)
            await trio.sleep(2 * 60)
            after = await queue.get_job(job.id)
    assert before is not None
    assert before.state is JobState.queued
    assert after is not None
    assert after.state is JobState.dead
    assert after.last_error is not None
    assert "unknown task 'gone'" in after.last_error
    assert "grace of 5m" in after.last_error


# ---------------------------------------------------------------------------
# Stored retry policies
# ---------------------------------------------------------------------------


async def test_a_stored_policy_that_does_not_read_makes_a_dead_letter_not_a_loop(
    autojump_clock: MockClock,
) -> None:
    calls: list[int] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.register("t", lambda: calls.append(1))
        job = await queue.enqueue("t")
        bad = job.__class__(
            task="t", run_at=at(0), enqueued_at=at(0), retry={"max_attempts": "many"}
        )
        await queue.store.enqueue(bad)
        async with serving(queue):
            await trio.sleep(120)
        stored = await queue.get_job(bad.id)
    assert stored is not None
    assert (stored.state, stored.attempts) == (JobState.dead, 1)
    assert stored.last_error is not None
    assert "stored retry policy does not read" in stored.last_error


async def test_a_policy_naming_a_class_renamed_in_a_deploy_is_judged_by_name(
    autojump_clock: MockClock,
) -> None:
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)

        def fail() -> None:
            raise ConnectionError("refused")

        queue.register("t", fail)
        job = await queue.enqueue("t", retry=RetryPolicy(max_attempts=3))
        stored_policy = {**RetryPolicy(max_attempts=3).to_json(), "retry_on": ["old.module.Gone"]}
        renamed = job.__class__(task="t", run_at=at(0), enqueued_at=at(0), retry=stored_policy)
        await queue.store.enqueue(renamed)
        async with serving(queue):
            await trio.sleep(120)
        dead = await queue.get_job(renamed.id)
    assert dead is not None
    assert (dead.state, dead.attempts) == (JobState.dead, 1)
    assert dead.last_error is not None
    assert "retry_on names classes this process does not have: old.module.Gone" in dead.last_error


# ---------------------------------------------------------------------------
# Outcomes stored despite a failing store
# ---------------------------------------------------------------------------


class FlakyStore(MemoryJobStore):
    """Fails ``complete_and_claim`` and ``retry_later`` a few times, as a
    database busy with another process's transaction would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def complete_and_claim(
        self, queue: str, *, completed: Sequence[str] = (), **options: Any
    ) -> tuple[set[str], list[Any]]:
        if completed and self.failures > 0:
            self.failures -= 1
            raise StorageError("database is locked")
        return await super().complete_and_claim(queue, completed=completed, **options)

    async def retry_later(self, job_id: str, **options: Any) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise StorageError("database is locked")
        return await super().retry_later(job_id, **options)


async def test_a_success_that_fails_to_save_is_saved_later_not_run_again(
    autojump_clock: MockClock,
) -> None:
    runs: list[float] = []
    async with scheduler_at_t0() as scheduler:
        store = FlakyStore(failures=3)
        queue = make_queue(scheduler, store)
        queue.register("t", lambda: runs.append(trio.current_time()))
        job = await queue.enqueue("t")
        async with serving(queue):
            await trio.sleep(60)
        stored = await store.get_job(job.id)
    assert len(runs) == 1
    assert stored is not None
    assert (stored.state, stored.attempts) == (JobState.succeeded, 1)


async def test_a_retry_that_fails_to_save_is_retried_while_the_lease_lasts(
    autojump_clock: MockClock,
) -> None:
    runs: list[float] = []
    async with scheduler_at_t0() as scheduler:
        store = FlakyStore(failures=0)
        queue = make_queue(scheduler, store)

        def fail_once() -> None:
            runs.append(trio.current_time())
            if len(runs) == 1:
                store.failures = 3
                raise ConnectionError("first")

        queue.register("t", fail_once, retry=RetryPolicy(max_attempts=3, initial=S))
        job = await queue.enqueue("t")
        async with serving(queue):
            await trio.sleep(60)
        stored = await store.get_job(job.id)
    assert len(runs) == 2
    assert stored is not None
    assert (stored.state, stored.attempts) == (JobState.succeeded, 2)


async def test_a_completion_blocked_by_another_process_lock_is_stored(tmp_path: Path) -> None:
    """A real SQLite lock: another connection holds a write transaction
    longer than the busy timeout right as the job finishes."""
    db = tmp_path / "jobs.db"
    runs: list[float] = []
    async with await SQLiteStorage.open(db, busy_timeout=0.05) as store:
        lock = threading.Event()

        def hold_the_lock() -> None:
            other = sqlite3.connect(db, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            lock.set()
            time.sleep(0.5)
            other.execute("COMMIT")
            other.close()

        async def work() -> None:
            runs.append(trio.current_time())
            threading.Thread(target=hold_the_lock).start()
            await trio.to_thread.run_sync(lock.wait)

        scheduler = Scheduler()
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            queue = JobQueue(store, scheduler, worker="w1")
            queue.register("t", work)
            job = await queue.enqueue("t")
            async with serving(queue):
                await trio.sleep(0.1)
                with trio.fail_after(10):
                    await queue.wait_idle("default")  # the success is stored
                stored = await store.get_job(job.id)
            nursery.cancel_scope.cancel()
    assert len(runs) == 1
    assert stored is not None
    assert stored.state is JobState.succeeded


# ---------------------------------------------------------------------------
# Timeouts and blocking code
# ---------------------------------------------------------------------------


async def _run_one(queue: JobQueue, task: str, seconds: float = 5.0) -> Any:
    job = await queue.enqueue(task)
    async with serving(queue):
        with trio.fail_after(seconds):
            while True:
                stored = await queue.get_job(job.id)
                if stored is not None and stored.state.finished:
                    return stored
                await trio.sleep(0.02)


async def test_a_blocking_task_that_times_out_is_abandoned_and_recorded_as_timed_out() -> None:
    scheduler = Scheduler()
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        queue = JobQueue(MemoryJobStore(), scheduler, worker="w1")
        queue.register(
            "hang", lambda: time.sleep(1.0), blocking=True, timeout=0.1, retry=RetryPolicy(1)
        )
        began = time.monotonic()
        dead = await _run_one(queue, "hang")
        took = time.monotonic() - began
        nursery.cancel_scope.cancel()
    assert dead.state is JobState.dead
    assert "JobTimedOut" in dead.last_error
    assert took < 0.9  # abandoned, not waited for


async def test_async_code_that_ignores_its_timeout_is_recorded_as_timed_out() -> None:
    """A thread not run with abandon_on_cancel cannot be cut short: the job
    runs on, but what is recorded is a timeout that says why, not a success."""
    scheduler = Scheduler()
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        queue = JobQueue(MemoryJobStore(), scheduler, worker="w1")

        async def stubborn() -> None:
            await trio.to_thread.run_sync(time.sleep, 0.4)

        queue.register("stubborn", stubborn, timeout=0.1, retry=RetryPolicy(1))
        dead = await _run_one(queue, "stubborn")
        nursery.cancel_scope.cancel()
    assert dead.state is JobState.dead
    assert "JobTimedOut" in dead.last_error
    assert "past its timeout" in dead.last_error


async def test_blocking_is_for_sync_functions() -> None:
    async def noop() -> None: ...

    queue = JobQueue(MemoryJobStore(), Scheduler(), worker="w1")
    with pytest.raises(TypeError, match="blocking=True is for sync functions"):
        queue.register("t", noop, blocking=True)


class RenewingStore(MemoryJobStore):
    """A memory store that can also renew from a thread, and counts it."""

    def __init__(self) -> None:
        super().__init__()
        self.renewed_from: list[str] = []

    def renew_leases_blocking(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        self.renewed_from.append(threading.current_thread().name)
        return set(job_ids)


async def test_leases_are_renewed_from_a_thread_while_the_loop_is_blocked() -> None:
    lost: list[set[str]] = []
    scheduler = Scheduler()
    store = RenewingStore()
    keeper = LeaseKeeper(
        store,
        scheduler,
        worker="w1",
        lease=timedelta(milliseconds=300),
        heartbeat=timedelta(milliseconds=100),
        lost=lost.append,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        nursery.start_soon(keeper.run)
        await trio.sleep(0.05)
        keeper.hold(["job-1"])
        time.sleep(0.6)  # noqa: ASYNC251 - the loop blocked for twice the lease is the test
        left = keeper.lease_left("job-1")
        nursery.cancel_scope.cancel()
    assert store.renewed_from
    assert set(store.renewed_from) == {"kernel lease keeper"}
    assert keeper.thread_renewals >= 1
    assert left > 0
    assert lost == []


# ---------------------------------------------------------------------------
# The watchdog
# ---------------------------------------------------------------------------


async def test_the_watchdog_names_the_running_jobs_during_a_stall(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watchdog = LoopWatchdog(threshold=0.1, every=0.05, describe=lambda: ["report.build (job 7)"])
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        assert (await watchdog.check()).status.value == "healthy"
        with caplog.at_level(logging.WARNING, logger="kernel.watchdog"):
            time.sleep(0.4)  # noqa: ASYNC251 - blocking the loop, as a bad job would
            await trio.sleep(0.2)
        report = await watchdog.check()
        nursery.cancel_scope.cancel()
    assert any("report.build (job 7)" in record.getMessage() for record in caplog.records)
    assert report.status.value == "degraded"
    assert watchdog.worst >= 0.3


# ---------------------------------------------------------------------------
# Stopping
# ---------------------------------------------------------------------------


async def test_pause_gives_prefetched_jobs_back_unspent(autojump_clock: MockClock) -> None:
    started: list[int] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.configure("default", concurrency=1, prefetch=3)

        async def work(n: int) -> None:
            started.append(n)
            await trio.sleep(10)

        queue.register("t", work)
        jobs = [await queue.enqueue("t", n) for n in range(4)]
        async with serving(queue):
            await trio.sleep(1)
            assert queue.describe()[0]["buffered"] == 3
            queue.pause("default")
            await trio.sleep(1)
            waiting = [await queue.get_job(job.id) for job in jobs[1:]]
            await trio.sleep(30)
    assert started == [0]
    assert all(
        job is not None and (job.state, job.attempts) == (JobState.queued, 0) for job in waiting
    )


async def test_drain_waits_for_running_jobs_then_interrupts_what_is_left(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    finished: list[str] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.configure("default", concurrency=2, prefetch=0)

        async def work(label: str, seconds: float) -> None:
            await trio.sleep(seconds)
            finished.append(label)

        queue.register("t", work)
        quick = await queue.enqueue("t", "quick", 3)
        slow = await queue.enqueue("t", "slow", 600)
        async with serving(queue):
            await trio.sleep(1)
            queue.stop_intake()
            with caplog.at_level(logging.INFO, logger="kernel.queue"):
                in_time = await queue.drain(10)
            stored = {job.id: await queue.get_job(job.id) for job in (quick, slow)}
    assert in_time is False
    assert finished == ["quick"]
    assert stored[quick.id].state is JobState.succeeded  # type: ignore[union-attr]
    assert (stored[slow.id].state, stored[slow.id].attempts) == (JobState.queued, 0)  # type: ignore[union-attr]
    assert "waiting for 2 job(s): t x2" in caplog.text


async def test_a_queue_stops_then_serves_again(autojump_clock: MockClock) -> None:
    ran: list[int] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.register("t", ran.append)
        async with serving(queue):
            await queue.enqueue("t", 1)
            await trio.sleep(1)
        async with serving(queue):
            await queue.enqueue("t", 2)
            await trio.sleep(1)
    assert ran == [1, 2]


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


class CountingStore(MemoryJobStore):
    """A memory store that counts the claimer's round trips."""

    rounds = 0

    async def complete_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        self.rounds += 1
        return await super().complete_and_claim(*args, **kwargs)


async def test_jobs_enqueued_in_a_loop_are_claimed_and_completed_in_few_round_trips(
    autojump_clock: MockClock,
) -> None:
    store = CountingStore()
    done: list[int] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler, store)
        queue.register("noop", lambda n: done.append(n))
        queue.configure("default", concurrency=64)
        async with serving(queue):
            for n in range(400):
                await queue.enqueue("noop", n)
            while len(done) < 400 or queue.running("default"):  # noqa: ASYNC110
                await trio.sleep(0.01)
            await queue.wait_idle("default")
    assert sorted(done) == list(range(400))
    assert all(job.state is JobState.succeeded for job in await store.list_jobs(limit=1000))
    # a round trip for each enqueue (and each completion) would be 400 or more
    assert store.rounds < 400 // 3, store.rounds


async def test_a_lone_job_is_claimed_at_once(autojump_clock: MockClock) -> None:
    started: list[float] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.register("noop", lambda: started.append(trio.current_time()))
        async with serving(queue):
            await trio.sleep(5)
            enqueued = trio.current_time()
            await queue.enqueue("noop")
            await trio.sleep(1)
    assert started == [enqueued]  # no timer, no poll: the claimer was woken
