"""Schedules that enqueue through the job queue, under trio's MockClock:
one job per slot across processes, restarts that meet the misfire policy,
overlap through dedup keys, and a store that fails for a while."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from kernel.errors import InvalidJob, StorageError, UnknownTask
from kernel.jobs.queue import JobQueue
from kernel.jobs.record import JobRecord, JobState
from kernel.observe.metrics import Metrics
from kernel.resilience.retry import Jitter, RetryPolicy
from kernel.storage.memory import MemoryJobStore
from kernel.time.clock import Clock
from kernel.time.policies import AllowOverlap, CatchUp, QueueOne, RunOnce, SkipMissed
from kernel.time.scheduler import open_scheduler
from kernel.time.triggers import Cron, Every

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)


@asynccontextmanager
async def node(
    store: Any, clock: Clock, *, worker: str = "w1", concurrency: int = 1, **kw: Any
) -> AsyncIterator[JobQueue]:
    """One kernel process: a scheduler and a queue, working ``store``."""
    async with open_scheduler(clock) as scheduler, trio.open_nursery() as nursery:
        queue = JobQueue(store, scheduler, worker=worker, rng=random.Random(1), **kw)
        queue.configure("default", concurrency=concurrency)
        await nursery.start(queue.run)
        yield queue
        nursery.cancel_scope.cancel()


def t0_clock() -> Clock:
    clock = Clock.starting_at(T0)
    clock.now()
    return clock


async def jobs_of(store: MemoryJobStore, schedule: str) -> list[JobRecord]:
    jobs = []
    for state in JobState:
        jobs += [
            j for j in await store.list_jobs(state=state, limit=1000) if j.schedule == schedule
        ]
    return sorted(jobs, key=lambda j: j.fire_time or T0)


async def test_each_slot_becomes_one_job_that_runs(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    clock = t0_clock()
    runs: list[float] = []
    async with node(store, clock) as queue:
        queue.register("tick", lambda: runs.append(trio.current_time()))
        schedule = queue.add_schedule("tick", Every(seconds=1))
        await trio.sleep(10.5)
        assert schedule.name == "tick"
    assert runs == pytest.approx([float(n) for n in range(1, 11)], abs=1e-3)
    jobs = await jobs_of(store, "tick")
    assert [j.fire_time for j in jobs] == [T0 + n * S for n in range(1, 11)]
    assert {j.state for j in jobs} == {JobState.succeeded}
    state = await store.get_schedule_state("tick")
    assert state == {
        "last_fire_time": (T0 + 10 * S).isoformat(),
        "next_fire_time": (T0 + 11 * S).isoformat(),
    }


async def test_three_processes_enqueue_each_slot_once(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    clock = t0_clock()
    runs: list[str] = []
    async with (
        node(store, clock, worker="a") as a,
        node(store, clock, worker="b") as b,
        node(store, clock, worker="c") as c,
    ):
        for queue in (a, b, c):
            worker = queue.worker
            queue.register("tick", lambda worker=worker: runs.append(worker))
            queue.add_schedule("tick", Every(seconds=1, anchor=T0))
        await trio.sleep(30.5)
    assert len(runs) == 30
    jobs = await jobs_of(store, "tick")
    assert [j.fire_time for j in jobs] == [T0 + n * S for n in range(1, 31)]


@pytest.mark.parametrize(
    ("misfire", "expected"),
    [
        # down from 10 s to 60.5 s: slots 11..60 were missed
        (CatchUp(), [T0 + n * S for n in range(1, 11)] + [T0 + n * S for n in range(11, 66)]),
        (RunOnce(), [T0 + n * S for n in range(1, 11)] + [T0 + n * S for n in range(60, 66)]),
        # slot 60 is 0.5 s late: within the default grace of 1 s
        (SkipMissed(), [T0 + n * S for n in range(1, 11)] + [T0 + n * S for n in range(60, 66)]),
        (
            SkipMissed(grace=timedelta(milliseconds=100)),
            [T0 + n * S for n in range(1, 11)] + [T0 + n * S for n in range(61, 66)],
        ),
    ],
)
async def test_a_restart_meets_the_misfire_policy(
    autojump_clock: MockClock, misfire: Any, expected: list[datetime]
) -> None:
    store = MemoryJobStore()
    clock = t0_clock()
    for downtime in (False, True):
        async with node(store, clock, concurrency=64) as queue:
            queue.register("tick", lambda: None)
            # unanchored: a restart keeps the grid of the first start
            queue.add_schedule("tick", Every(seconds=1), misfire=misfire, overlap=AllowOverlap())
            await trio.sleep(65.5 - trio.current_time() if downtime else 10.5)
        await trio.sleep(0 if downtime else 50)
    jobs = await jobs_of(store, "tick")
    assert [j.fire_time for j in jobs] == expected
    assert {j.state for j in jobs} == {JobState.succeeded}


class Killed(BaseException):
    """The process dies here (a SIGKILL, as far as the store can tell)."""


class DiesBeforeTheFirstLastFire(MemoryJobStore):
    """A process killed after a schedule's first job is stored and before
    its last fire is: the job stays, that write never happens."""

    dies = True

    async def put_schedule_state(self, name: str, state: Any) -> None:
        if self.dies and state.get("last_fire_time") is not None:
            raise Killed
        await super().put_schedule_state(name, state)


async def test_a_crash_before_the_first_last_fire_is_stored_still_catches_up(
    autojump_clock: MockClock,
) -> None:
    store = DiesBeforeTheFirstLastFire()
    clock = t0_clock()

    async def first_process() -> None:
        async with node(store, clock, concurrency=64) as queue:
            queue.register("tick", lambda: None)
            queue.add_schedule("tick", Every(seconds=1), misfire=CatchUp(), overlap=AllowOverlap())
            await trio.sleep(10)

    with pytest.raises(BaseExceptionGroup) as died:
        await first_process()
    assert died.value.subgroup(Killed) is not None
    assert [j.fire_time for j in await jobs_of(store, "tick")] == [T0 + S]
    await trio.sleep(5)  # down from 1 s to 6 s
    store.dies = False
    async with node(store, clock, concurrency=64) as queue:
        queue.register("tick", lambda: None)
        queue.add_schedule("tick", Every(seconds=1), misfire=CatchUp(), overlap=AllowOverlap())
        await trio.sleep(12.5 - trio.current_time())
    # the slots of the downtime ran at the restart: it was no first start
    fired = [j.fire_time for j in await jobs_of(store, "tick")]
    assert fired == [T0 + n * S for n in range(1, 13)]


async def test_a_restarted_cron_schedule_catches_up_in_another_process(
    autojump_clock: MockClock,
) -> None:
    store = MemoryJobStore()
    clock = t0_clock()
    async with node(store, clock, worker="first") as queue:
        queue.register("report", lambda: None)
        queue.add_schedule("report", Cron("*/10 * * * *"), misfire=CatchUp())
        await trio.sleep(25 * 60)
    await trio.sleep(40 * 60)  # nobody runs it from 00:25 to 01:05
    async with node(store, clock, worker="second") as queue:
        queue.register("report", lambda: None)
        queue.add_schedule("report", Cron("*/10 * * * *"), misfire=CatchUp())
        await trio.sleep(60)
    jobs = await jobs_of(store, "report")
    minutes = [int((j.fire_time - T0).total_seconds() // 60) for j in jobs if j.fire_time]
    assert minutes == [10, 20, 30, 40, 50, 60]
    assert [j.worker for j in jobs] == ["first"] * 2 + ["second"] * 4


async def test_skip_if_running_holds_back_slots_while_a_job_is_live(
    autojump_clock: MockClock,
) -> None:
    store = MemoryJobStore()
    clock = t0_clock()
    async with node(store, clock) as queue:

        async def slow() -> None:
            await trio.sleep(2.5)

        queue.register("slow", slow)
        schedule = queue.add_schedule("slow", Every(seconds=1))
        await trio.sleep(10.2)
    jobs = await jobs_of(store, "slow")
    # a run started at 1, 4, 7, 10 (each lasting 2.5 s); the slots between
    # were claimed but stored no job
    assert [j.fire_time for j in jobs] == [T0 + n * S for n in (1, 4, 7, 10)]
    assert schedule.stats.fired == 10


async def test_allow_overlap_runs_up_to_the_queue_concurrency(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    clock = t0_clock()
    running: list[int] = []
    peak = 0

    async def slow() -> None:
        nonlocal peak
        running.append(1)
        peak = max(peak, len(running))
        await trio.sleep(3.5)
        running.pop()

    async with node(store, clock, concurrency=8) as queue:
        queue.register("slow", slow)
        queue.add_schedule("slow", Every(seconds=1), overlap=AllowOverlap())
        await trio.sleep(20.2)
    assert peak == 4
    assert len(await jobs_of(store, "slow")) == 20


async def test_schedule_runs_get_the_task_retries_and_metrics(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    clock = t0_clock()
    metrics = Metrics()
    calls: list[float] = []

    def flaky() -> None:
        calls.append(trio.current_time())
        if len(calls) == 1:
            raise ConnectionError("first call fails")

    policy = RetryPolicy(max_attempts=3, initial=S, jitter=Jitter.NONE)
    async with node(store, clock, metrics=metrics) as queue:
        queue.register("flaky", flaky, retry=policy)
        queue.add_schedule("flaky", Cron("0 * * * *"))
        await trio.sleep(3600 + 5)
    assert calls == pytest.approx([3600.0, 3601.0], abs=1e-3)
    (job,) = await jobs_of(store, "flaky")
    assert (job.state, job.attempts) == (JobState.succeeded, 2)
    lateness = metrics.histogram("schedule_lateness_seconds", task="flaky")
    assert lateness.count == 2


async def test_bad_schedules_are_refused_and_change_nothing(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    async with node(store, t0_clock()) as queue:
        queue.register("tick", lambda: None)
        with pytest.raises(UnknownTask):
            queue.add_schedule("tock", Every(seconds=1))
        with pytest.raises(InvalidJob, match="overlap"):
            queue.add_schedule("tick", Every(seconds=1), overlap=QueueOne())
        with pytest.raises(InvalidJob, match="priority"):
            queue.add_schedule("tick", Every(seconds=1), priority=2**40)
        queue.add_schedule("tick", Every(seconds=1))
        with pytest.raises(InvalidJob, match="already active"):
            queue.add_schedule("tick", Every(seconds=5))
        await trio.sleep(3.5)
    assert len(await jobs_of(store, "tick")) == 3


class FlakyStore(MemoryJobStore):
    """Fails every enqueue and state write while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = 0

    def _check(self) -> None:
        if self.down:
            self.refused += 1
            raise StorageError("database restarting")

    async def enqueue(self, job: JobRecord) -> tuple[JobRecord, bool]:
        self._check()
        return await super().enqueue(job)

    async def claim(self, *args: Any, **kwargs: Any) -> list[JobRecord]:
        self._check()
        return await super().claim(*args, **kwargs)


async def test_slots_fired_while_the_store_is_down_are_kept(autojump_clock: MockClock) -> None:
    store = FlakyStore()
    runs: list[float] = []
    async with node(store, t0_clock(), concurrency=16) as queue:
        queue.register("tick", lambda: runs.append(trio.current_time()))
        queue.add_schedule("tick", Every(seconds=1), overlap=AllowOverlap())
        await trio.sleep(5.5)
        store.down = True
        await trio.sleep(20)
        store.down = False
        await trio.sleep(40)
    assert store.refused > 0
    jobs = await jobs_of(store, "tick")
    assert [j.fire_time for j in jobs] == [T0 + n * S for n in range(1, 66)]
    assert {j.state for j in jobs} == {JobState.succeeded}
    assert len(runs) == 65
    # backoff: after the store came back, the backlog ran within its cap (30 s)
    assert max(runs) <= 65.5


async def test_stop_queue_gives_running_attempts_back(autojump_clock: MockClock) -> None:
    store = MemoryJobStore()
    async with node(store, t0_clock()) as queue:
        started = trio.Event()

        async def forever() -> None:
            started.set()
            await trio.sleep_forever()

        queue.register("forever", forever)
        job = await queue.enqueue("forever")
        await started.wait()
        await queue.stop_queue("default")
        stored = await store.get_job(job.id)
        assert stored is not None
        assert (stored.state, stored.attempts) == (JobState.queued, 0)
        await trio.sleep(60)
        assert queue.running("default") == 0  # paused: not claimed again
        queue.resume("default")
        await trio.sleep(1)
        assert queue.running("default") == 1


class ListeningStore(MemoryJobStore):
    """A store shared with "other processes" that enqueue behind our back."""

    def __init__(self) -> None:
        super().__init__()
        self.wake: Callable[[str], None] | None = None

    async def listen_enqueued(
        self,
        wake: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.wake = wake
        task_status.started()
        await trio.sleep_forever()


async def test_a_listening_store_wakes_idle_queues(autojump_clock: MockClock) -> None:
    store = ListeningStore()
    clock = t0_clock()
    ran: list[float] = []
    async with node(store, clock) as queue:
        queue.register("t", lambda: ran.append(trio.current_time()))
        await trio.sleep(5)
        # "another process" stores a job: only the listener can tell us
        await store.enqueue(JobRecord(task="t", run_at=clock.now(), enqueued_at=clock.now()))
        await trio.sleep(1)
        assert ran == []
        assert store.wake is not None
        store.wake("default")
        await trio.sleep(0.001)
    assert ran == pytest.approx([6.0], abs=1e-3)


async def test_schedules_wait_for_the_queue_to_run(autojump_clock: MockClock) -> None:
    """Added before the queue runs: fired slots are stored once it does."""
    store = MemoryJobStore()
    clock = t0_clock()
    async with open_scheduler(clock) as scheduler:
        queue = JobQueue(store, scheduler, worker="w")
        queue.register("tick", lambda: None)
        queue.add_schedule("tick", Every(seconds=1), misfire=CatchUp(), overlap=AllowOverlap())
        await trio.sleep(3.5)
        assert await jobs_of(store, "tick") == []
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert len(await jobs_of(store, "tick")) == 3


class SlowStateStore(MemoryJobStore):
    """Slow to read schedule state (a busy database), and checks on every
    write of it that no slot up to the recorded last fire is missing."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = False
        self.writes = 0

    async def get_schedule_state(self, schedule: str) -> dict[str, Any] | None:
        if self.slow:
            await trio.sleep(1.5)  # the schedule's next slot fires meanwhile
        return await super().get_schedule_state(schedule)

    async def put_schedule_state(self, schedule: str, state: Any) -> None:
        if state["last_fire_time"] is None:  # a first start: since when, nothing fired
            await super().put_schedule_state(schedule, state)
            return
        last = datetime.fromisoformat(state["last_fire_time"])
        stored = {j.fire_time for j in await jobs_of(self, schedule)}
        expected = {T0 + n * S for n in range(1, int((last - T0) / S) + 1)}
        assert expected <= stored, sorted(expected - stored)[:3]
        self.writes += 1
        await super().put_schedule_state(schedule, state)


async def test_the_recorded_last_fire_never_passes_an_unstored_slot(
    autojump_clock: MockClock,
) -> None:
    store = SlowStateStore()
    clock = t0_clock()
    async with node(store, clock, concurrency=64) as queue:
        queue.register("tick", lambda: None)
        queue.add_schedule("tick", Every(seconds=1), misfire=CatchUp(), overlap=AllowOverlap())
        await trio.sleep(10.5)
    await trio.sleep(50)
    store.slow = True
    async with node(store, clock, concurrency=64) as queue:
        queue.register("tick", lambda: None)
        queue.add_schedule("tick", Every(seconds=1), misfire=CatchUp(), overlap=AllowOverlap())
        await trio.sleep(5)
    assert store.writes > 10
    jobs = await jobs_of(store, "tick")
    assert [j.fire_time for j in jobs] == [T0 + n * S for n in range(1, 66)]


class SlowListeningStore(MemoryJobStore):
    """LISTEN takes a while (TLS to a remote server), and the first try fails."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    async def listen_enqueued(
        self,
        wake: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.tries += 1
        await trio.sleep(1)
        if self.tries == 1:
            raise StorageError("connection refused")
        task_status.started()
        await trio.sleep_forever()


async def test_jobs_enqueued_before_listening_starts_are_claimed(
    autojump_clock: MockClock,
) -> None:
    store = SlowListeningStore()
    clock = t0_clock()
    ran: list[float] = []
    async with open_scheduler(clock) as scheduler, trio.open_nursery() as nursery:
        queue = JobQueue(store, scheduler, worker="w")
        queue.register("t", lambda: ran.append(trio.current_time()))
        await nursery.start(queue.run)  # started after the first (failed) try
        assert trio.current_time() == pytest.approx(1.0)
        # another process enqueues while nobody listens: no notice reaches us
        await store.enqueue(JobRecord(task="t", run_at=clock.now(), enqueued_at=clock.now()))
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    # listening started at 1 + 0.1 (backoff) + 1: every queue claimed then
    assert ran == pytest.approx([2.1], abs=1e-3)
    assert store.tries == 2


class SlowSlots(MemoryJobStore):
    """A memory store whose enqueue of a schedule's job waits for ``go``."""

    def __init__(self) -> None:
        super().__init__()
        self.storing = trio.Event()
        self.go = trio.Event()

    async def enqueue(self, job: JobRecord) -> tuple[JobRecord, bool]:
        if job.schedule is not None:
            self.storing.set()
            await self.go.wait()
        return await super().enqueue(job)


async def test_a_stop_while_a_slot_is_being_stored_is_clean(autojump_clock: MockClock) -> None:
    """`stop_intake` drops the slots not yet stored while one is in flight
    (it used to make the feeder pop an empty queue and fail the kernel)."""
    store = SlowSlots()
    ran: list[float] = []

    async def tick() -> None:
        ran.append(trio.current_time())

    async with node(store, t0_clock()) as queue:
        queue.register("tick", tick)
        queue.add_schedule("tick", Every(S))
        await store.storing.wait()
        queue.stop_intake()
        store.go.set()
        await trio.sleep(5)
        stored = await jobs_of(store, "tick")
    assert len(stored) == 1  # the slot in flight was stored, no later one
    assert ran == []  # and nothing started after the stop
