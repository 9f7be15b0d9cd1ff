"""The priority work queue under trio's MockClock: exact times, no sleeps."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from kernel.errors import (
    DuplicateTask,
    InvalidJob,
    NotJSONSerializable,
    UnknownTask,
)
from kernel.jobs.queue import JobQueue
from kernel.jobs.rate import RateLimit, RateWindow
from kernel.jobs.record import JobRecord, JobState
from kernel.observe.metrics import Metrics
from kernel.ports import JobStore
from kernel.resilience.breaker import CircuitBreaker
from kernel.resilience.retry import Jitter, RetryPolicy
from kernel.storage.memory import MemoryJobStore
from kernel.storage.sqlite import SQLiteStorage
from kernel.time.clock import Clock
from kernel.time.scheduler import Scheduler, open_scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)
NO_JITTER = RetryPolicy(max_attempts=3, initial=S, factor=2.0, jitter=Jitter.NONE)


class RecordingBus:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._published = trio.Event()

    async def publish(self, topic: str, payload: Any = None) -> None:
        await trio.lowlevel.checkpoint()
        self.events.append((topic, payload))
        self._published.set()

    async def wait_for(self, *topics: str) -> None:
        """Until every one of ``topics`` has been published (threads, as in
        the SQLite store, let MockClock jump, so time cannot be the signal)."""
        while not set(topics) <= {t for t, _ in self.events}:
            self._published = trio.Event()
            await self._published.wait()

    def topics(self, job_id: str | None = None) -> list[str]:
        return [t for t, p in self.events if job_id is None or p["id"] == job_id]


@asynccontextmanager
async def scheduler_at_t0() -> AsyncIterator[Scheduler]:
    clock = Clock.starting_at(T0)
    clock.now()  # anchor: trio time 0 is T0
    async with open_scheduler(clock) as scheduler:
        yield scheduler


@asynccontextmanager
async def serving(queue: JobQueue) -> AsyncIterator[JobQueue]:
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        yield queue
        nursery.cancel_scope.cancel()


def make_queue(scheduler: Scheduler, store: JobStore | None = None, **kw: Any) -> JobQueue:
    kw.setdefault("worker", "w1")
    kw.setdefault("rng", random.Random(7))
    return JobQueue(store if store is not None else MemoryJobStore(), scheduler, **kw)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ---------------------------------------------------------------------------
# RateWindow: pure arithmetic
# ---------------------------------------------------------------------------


def test_rate_window_allows_count_per_period_exactly() -> None:
    window = RateWindow(RateLimit(2, timedelta(seconds=10)))
    assert window.acquire(0.0)
    assert window.acquire(0.0)
    assert not window.acquire(9.999)
    assert window.next_free(5.0) == 10.0
    assert window.acquire(10.0)
    assert window.available(10.0) == 1


def test_rate_limit_rejects_nonsense() -> None:
    with pytest.raises(InvalidJob, match="count"):
        RateLimit(0, S)
    with pytest.raises(InvalidJob, match="per"):
        RateLimit(1, timedelta(0))


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 5),
    per_ms=st.integers(1, 5000),
    gaps=st.lists(st.integers(0, 3000), min_size=1, max_size=60),
)
def test_rate_window_never_exceeds_and_next_free_is_exact(
    count: int, per_ms: int, gaps: list[int]
) -> None:
    per = per_ms / 1000
    window = RateWindow(RateLimit(count, timedelta(milliseconds=per_ms)))
    now = 0.0
    accepted: list[float] = []
    for gap in gaps:
        now += gap / 1000
        free = window.next_free(now)
        if window.acquire(now):
            assert free == now
            accepted.append(now)
        else:
            # refused only when count starts lie within the last `per`
            assert sum(1 for t in accepted if t + per > now) >= count
            assert free > now
            assert window.acquire(free)  # the promised time really is free
            accepted.append(free)
            now = free
    for i in range(len(accepted) - count):
        assert accepted[i + count] - accepted[i] >= per - 1e-9


# ---------------------------------------------------------------------------
# Registry and enqueue checks
# ---------------------------------------------------------------------------


async def test_unknown_task_and_bad_payload_store_nothing(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler, store)
        queue.register("ok", lambda *a, **k: None)
        with pytest.raises(UnknownTask, match=r"'nope'.*'ok'"):
            await queue.enqueue("nope", 1)
        with pytest.raises(NotJSONSerializable) as info:
            await queue.enqueue("ok", 1, {2, 3})
        assert info.value.path == "args[1]"
        with pytest.raises(NotJSONSerializable) as info:
            await queue.enqueue("ok", when={"at": b"raw bytes"})
        assert info.value.path == "kwargs['when']['at']"
        with pytest.raises(InvalidJob, match="naive"):
            await queue.enqueue("ok", run_at=datetime(2026, 1, 1))
        assert await store.list_jobs() == []
        with pytest.raises(DuplicateTask):
            queue.register("ok", print)


async def test_decorator_registers_and_enqueue_accepts_the_function(
    autojump_clock: MockClock,
) -> None:
    calls: list[int] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)

        @queue.task(name="add")
        def add(x: int, y: int) -> None:  # a sync task
            calls.append(x + y)

        job = await queue.enqueue(add, 2, y=3)
        assert job.task == "add"
        async with serving(queue):
            await trio.sleep(1)
        assert calls == [5]
        done = await queue.get_job(job.id)
        assert done is not None
        assert done.state is JobState.succeeded


async def test_dedup_returns_the_existing_job(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler, store)
        queue.register("t", lambda: None)
        first = await queue.enqueue("t", dedup_key="k", delay=10)
        second = await queue.enqueue("t", dedup_key="k")
        assert second.id == first.id
        assert len(await store.list_jobs()) == 1


# ---------------------------------------------------------------------------
# Ordering, aging, concurrency
# ---------------------------------------------------------------------------


async def test_higher_priority_runs_first(autojump_clock: MockClock) -> None:
    order: list[int] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.register("t", order.append)
        for p in (1, 5, 3, -2, 4):
            await queue.enqueue("t", p, priority=p)
        async with serving(queue):
            await trio.sleep(1)
    assert order == [5, 4, 3, 1, -2]


async def _starvation_run(aging: timedelta | None) -> float | None:
    """A low-priority job enqueued first under a steady stream of high ones
    (one per second, each taking a second); when did it run?"""
    low_ran: list[float] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.configure("default", concurrency=1, aging=aging)

        async def work(kind: str) -> None:
            if kind == "low":
                low_ran.append(trio.current_time())
            await trio.sleep(1)

        queue.register("work", work)
        queue.pause("default")
        await queue.enqueue("work", "low", priority=0)
        async with serving(queue):
            await queue.enqueue("work", "high", priority=10)
            queue.resume("default")
            await trio.sleep(1)
            for _ in range(300):
                await queue.enqueue("work", "high", priority=10)
                await trio.sleep(1)
    return low_ran[0] if low_ran else None


async def test_aging_lets_a_low_priority_run_under_a_stream(autojump_clock: MockClock) -> None:
    ran = await _starvation_run(timedelta(seconds=10))
    assert ran is not None
    assert ran < 200  # 10 levels of 10 s each, plus the queue ahead of it


async def test_without_aging_the_low_priority_starves(autojump_clock: MockClock) -> None:
    assert await _starvation_run(None) is None


async def test_concurrency_bound_is_never_exceeded(autojump_clock: MockClock) -> None:
    in_flight = 0
    peak = 0
    done = 0
    rng = random.Random(3)
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.configure("default", concurrency=3)

        async def work(seconds: float) -> None:
            nonlocal in_flight, peak, done
            in_flight += 1
            peak = max(peak, in_flight)
            assert queue.running("default") <= 3
            await trio.sleep(seconds)
            in_flight -= 1
            done += 1

        queue.register("work", work)
        for _ in range(30):
            await queue.enqueue("work", rng.uniform(0.1, 2.0))
        async with serving(queue):
            await trio.sleep(100)
    assert peak == 3
    assert done == 30


# ---------------------------------------------------------------------------
# Time: delays, run_at, retries, timeouts
# ---------------------------------------------------------------------------


async def test_delay_and_run_at_are_honoured_exactly(autojump_clock: MockClock) -> None:
    started: dict[str, datetime] = {}
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.register("t", lambda name: started.__setitem__(name, scheduler.clock.now()))
        async with serving(queue):
            await queue.enqueue("t", "later", run_at=at(3600))
            await queue.enqueue("t", "soon", delay=timedelta(seconds=5))
            await queue.enqueue("t", "frac", delay=2.25)
            await queue.enqueue("t", "now")
            await trio.sleep(4000)
    assert started == {"now": T0, "frac": at(2.25), "soon": at(5), "later": at(3600)}


async def test_retries_back_off_exactly_then_dead_letter(autojump_clock: MockClock) -> None:
    bus = RecordingBus()
    metrics = Metrics()
    attempts_at: list[float] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler, bus=bus, metrics=metrics)

        async def flaky() -> None:
            attempts_at.append(trio.current_time())
            raise ValueError("boom")

        queue.register("flaky", flaky, retry=NO_JITTER)
        async with serving(queue):
            job = await queue.enqueue("flaky")
            await trio.sleep(60)
            dead = await queue.dead_letters()
    assert attempts_at == [0.0, 1.0, 3.0]
    assert [j.id for j in dead] == [job.id]
    assert dead[0].attempts == 3
    assert dead[0].last_error is not None
    assert "max attempts (3) reached" in dead[0].last_error
    assert "Traceback (most recent call last)" in dead[0].last_error
    assert "ValueError: boom" in dead[0].last_error
    topics = bus.topics(job.id)
    # job.enqueued is published once the job is stored, and a claim already
    # in flight may start it meanwhile: it comes before the first retry
    assert topics.index("job.enqueued") < topics.index("job.retrying")
    assert [topic for topic in topics if topic != "job.enqueued"] == [
        "job.started",
        "job.retrying",
        "job.started",
        "job.retrying",
        "job.started",
        "job.dead",
    ]
    assert bus.events[-1][1]["error"] == "boom"
    assert bus.events[-1][1]["attempts"] == 3
    assert metrics.counter("job_failures", task="flaky").value == 3
    assert metrics.counter("job_retries", task="flaky").value == 2
    assert metrics.counter("job_dead", task="flaky").value == 1


async def test_seeded_jitter_is_reproducible(autojump_clock: MockClock) -> None:
    policy = RetryPolicy(max_attempts=4, initial=timedelta(seconds=10), jitter=Jitter.FULL)
    expected_rng = random.Random(7)
    delays = [policy.delay(attempt, expected_rng).total_seconds() for attempt in (1, 2, 3)]
    attempts_at: list[float] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler, rng=random.Random(7))

        def fail() -> None:
            attempts_at.append(trio.current_time())
            raise OSError("down")

        queue.register("fail", fail, retry=policy)
        async with serving(queue):
            await queue.enqueue("fail")
            await trio.sleep(200)
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert len(gaps) == 3
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay <= gap < delay + 0.001  # the wheel rounds up to its 1 ms tick


async def test_give_up_on_goes_dead_at_once(autojump_clock: MockClock) -> None:
    calls = 0
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)

        def bad() -> None:
            nonlocal calls
            calls += 1
            raise KeyError("no such thing")

        queue.register("bad", bad, retry=RetryPolicy(max_attempts=5, give_up_on=KeyError))
        async with serving(queue):
            job = await queue.enqueue("bad")
            await trio.sleep(10)
            record = await queue.get_job(job.id)
    assert calls == 1
    assert record is not None
    assert record.state is JobState.dead
    assert record.attempts == 1
    assert record.last_error is not None
    assert "in give_up_on" in record.last_error


async def test_per_job_retry_policy_overrides_the_task(autojump_clock: MockClock) -> None:
    calls = 0
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)

        def bad() -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("x")

        queue.register("bad", bad, retry=NO_JITTER)
        async with serving(queue):
            await queue.enqueue("bad", retry=RetryPolicy(max_attempts=1))
            await trio.sleep(60)
    assert calls == 1


async def test_timeout_is_a_failure(autojump_clock: MockClock) -> None:
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)

        async def slow() -> None:
            await trio.sleep(100)

        queue.register("slow", slow, timeout=2.5, retry=RetryPolicy(max_attempts=1))
        async with serving(queue):
            job = await queue.enqueue("slow")
            await trio.sleep(10)
            record = await queue.get_job(job.id)
    assert record is not None
    assert record.state is JobState.dead
    assert record.finished_at == at(2.5)
    assert record.last_error is not None
    assert "timed out after 2.5s" in record.last_error


# ---------------------------------------------------------------------------
# Cancellation, pause, graceful stop
# ---------------------------------------------------------------------------


async def test_cancel_a_queued_job(autojump_clock: MockClock) -> None:
    ran: list[int] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.register("t", ran.append)
        async with serving(queue):
            job = await queue.enqueue("t", 1, delay=10)
            cancelled = await queue.cancel(job.id)
            await trio.sleep(20)
            assert await queue.cancel(job.id) is None
    assert cancelled is not None
    assert cancelled.state is JobState.cancelled
    assert ran == []


async def test_cancel_a_running_job(autojump_clock: MockClock) -> None:
    saw_cancel = False
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)

        async def long() -> None:
            nonlocal saw_cancel
            try:
                await trio.sleep(100)
            except trio.Cancelled:
                saw_cancel = True
                raise

        queue.register("long", long)
        async with serving(queue):
            job = await queue.enqueue("long")
            await trio.sleep(1)
            assert queue.running("default") == 1
            await queue.cancel(job.id)
            await trio.sleep(1)
            assert queue.running("default") == 0
            record = await queue.get_job(job.id)
    assert saw_cancel
    assert record is not None
    assert record.state is JobState.cancelled
    assert record.finished_at == at(1)


async def test_pause_and_resume(autojump_clock: MockClock) -> None:
    started: list[float] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.register("t", lambda: started.append(trio.current_time()))
        async with serving(queue):
            queue.pause("default")
            await queue.enqueue("t")
            await queue.enqueue("t", delay=3)
            await trio.sleep(10)
            assert started == []
            queue.resume("default")
            await trio.sleep(1)
    assert started == [10.0, 10.0]


async def test_graceful_stop_releases_running_jobs_unspent(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler, store)
        queue.configure("default", concurrency=2)

        async def long() -> None:
            await trio.sleep(1000)

        queue.register("long", long)
        async with serving(queue):
            a = await queue.enqueue("long")
            b = await queue.enqueue("long")
            await trio.sleep(5)
            assert queue.running("default") == 2
    for job_id in (a.id, b.id):
        record = await store.get_job(job_id)
        assert record is not None
        assert record.state is JobState.queued
        assert record.attempts == 0
        assert record.worker is None


# ---------------------------------------------------------------------------
# Rate limits and circuit breakers
# ---------------------------------------------------------------------------


async def test_queue_rate_limit_n_per_period(autojump_clock: MockClock) -> None:
    started: list[float] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.configure("default", concurrency=5, rate_limit=RateLimit(2, timedelta(seconds=10)))
        queue.register("t", lambda: started.append(trio.current_time()))
        for _ in range(7):
            await queue.enqueue("t")
        async with serving(queue):
            await trio.sleep(100)
    assert started == [0, 0, 10, 10, 20, 20, 30]


async def test_task_rate_limit_releases_without_spending(autojump_clock: MockClock) -> None:
    started: list[float] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)
        queue.configure("default", concurrency=3)
        queue.register(
            "t",
            lambda: started.append(trio.current_time()),
            rate_limit=RateLimit(1, timedelta(seconds=5)),
        )
        jobs = [await queue.enqueue("t") for _ in range(3)]
        async with serving(queue):
            await trio.sleep(100)
            records = [await queue.get_job(job.id) for job in jobs]
    assert started == [0, 5, 10]
    assert all(r is not None and r.attempts == 1 for r in records)


async def test_open_breaker_makes_jobs_wait_without_spending_attempts(
    autojump_clock: MockClock,
) -> None:
    breaker = CircuitBreaker(
        "dep", minimum_calls=1, failure_rate=1.0, open_for=timedelta(seconds=30), half_open_probes=1
    )
    calls: list[float] = []
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)

        def call_dep() -> None:
            calls.append(trio.current_time())
            if len(calls) == 1:
                raise ConnectionError("dependency down")

        policy = RetryPolicy(max_attempts=2, initial=S, jitter=Jitter.NONE)
        queue.register("dep", call_dep, retry=policy, breaker=breaker)
        async with serving(queue):
            job = await queue.enqueue("dep")
            await trio.sleep(10)
            waiting = await queue.get_job(job.id)
            await trio.sleep(30)
            record = await queue.get_job(job.id)
    # failed at 0, retry due at 1 but the breaker is open until 30: it waits
    # until then, plus up to a fifth more so that waiting jobs spread out
    assert waiting is not None
    assert waiting.state is JobState.queued
    assert waiting.attempts == 1
    assert at(30) <= waiting.run_at <= at(36)
    assert calls[0] == 0.0
    assert 30.0 <= calls[1] <= 36.0
    assert len(calls) == 2
    assert record is not None
    assert record.state is JobState.succeeded
    assert record.attempts == 2


# ---------------------------------------------------------------------------
# Leases
# ---------------------------------------------------------------------------


async def test_a_reaped_job_out_of_attempts_is_buried(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler, store)
        queue.register("t", lambda: None, retry=RetryPolicy(max_attempts=1))
        job = await queue.enqueue("t")
        # another worker claims it, then dies without renewing its lease
        [claimed] = await store.claim(
            "default", worker="dead-node", now=scheduler.clock.now(), lease=timedelta(seconds=5)
        )
        assert claimed.id == job.id
        async with serving(queue):
            await trio.sleep(20)
            record = await queue.get_job(job.id)
    assert record is not None
    assert record.state is JobState.dead
    assert record.last_error is not None
    assert "lease expired" in record.last_error


async def test_heartbeats_keep_a_long_job_leased(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler, store, lease=timedelta(seconds=30))

        async def long() -> None:
            await trio.sleep(120)

        queue.register("long", long)
        async with serving(queue):
            job = await queue.enqueue("long")
            await trio.sleep(60)
            mid = await store.get_job(job.id)
            await trio.sleep(100)
            record = await store.get_job(job.id)
    assert mid is not None
    assert mid.state is JobState.running
    assert mid.lease_expires_at is not None
    assert mid.lease_expires_at > at(60)
    assert record is not None
    assert record.state is JobState.succeeded
    assert record.attempts == 1


# ---------------------------------------------------------------------------
# Dead letters, metrics
# ---------------------------------------------------------------------------


async def test_retry_dead_and_purge(autojump_clock: MockClock) -> None:
    calls = 0
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler)

        def once_bad() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("first")

        queue.register("t", once_bad, retry=RetryPolicy(max_attempts=1))
        async with serving(queue):
            job = await queue.enqueue("t")
            other = await queue.enqueue("t", priority=-1)  # succeeds
            await trio.sleep(1)
            assert [j.id for j in await queue.dead_letters()] == [job.id]
            again = await queue.retry_dead(job.id)
            assert again is not None
            assert again.attempts == 0
            await trio.sleep(1)
            assert await queue.dead_letters() == []
            record = await queue.get_job(job.id)
            assert record is not None
            assert record.state is JobState.succeeded
            assert (await queue.get_job(other.id)) is not None
            assert await queue.purge_dead() == 0


async def test_running_gauge_and_run_histogram(autojump_clock: MockClock) -> None:
    metrics = Metrics()
    async with scheduler_at_t0() as scheduler:
        queue = make_queue(scheduler, metrics=metrics)
        queue.configure("default", concurrency=2)

        async def work() -> None:
            await trio.sleep(4)

        queue.register("work", work)
        async with serving(queue):
            for _ in range(3):
                await queue.enqueue("work")
            await trio.sleep(1)
            assert metrics.gauge("jobs_running", queue="default").value == 2
            await trio.sleep(10)
            assert metrics.gauge("jobs_running", queue="default").value == 0
    histogram = metrics.histogram("job_run_seconds", task="work")
    assert histogram.count == 3
    assert histogram.total == pytest.approx(12.0)


# ---------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------


async def test_sqlite_success_retry_and_dead_letter(tmp_path: Path, mock_clock: MockClock) -> None:
    # jump only after 20 ms of real idleness: the store's threads finish first
    mock_clock.autojump_threshold = 0.02
    store = await SQLiteStorage.open(tmp_path / "q.db")
    async with store, scheduler_at_t0() as scheduler:
        bus = RecordingBus()
        queue = make_queue(scheduler, store, bus=bus)
        queue.register("ok", lambda x: None)

        def bad() -> None:
            raise ValueError("sqlite boom")

        queue.register("bad", bad, retry=NO_JITTER)
        async with serving(queue):
            ok = await queue.enqueue("ok", {"n": [1, 2]})
            bad_job = await queue.enqueue("bad")
            with trio.fail_after(60):
                await bus.wait_for("job.succeeded", "job.dead")
        ok_record = await store.get_job(ok.id)
        dead = await queue.dead_letters()
    assert ok_record is not None
    assert ok_record.state is JobState.succeeded
    assert [j.id for j in dead] == [bad_job.id]
    assert dead[0].attempts == 3
    assert dead[0].last_error is not None
    assert "ValueError: sqlite boom" in dead[0].last_error


async def test_sqlite_graceful_stop_releases(tmp_path: Path, mock_clock: MockClock) -> None:
    mock_clock.autojump_threshold = 0.02
    async with await SQLiteStorage.open(tmp_path / "q.db") as store:
        async with scheduler_at_t0() as scheduler:
            queue = make_queue(scheduler, store)
            started = trio.Event()

            async def long() -> None:
                started.set()
                await trio.sleep_forever()

            queue.register("long", long)
            async with serving(queue):
                job = await queue.enqueue("long")
                await started.wait()
        record: JobRecord | None = await store.get_job(job.id)
    assert record is not None
    assert record.state is JobState.queued
    assert record.attempts == 0
