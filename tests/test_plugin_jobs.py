"""Plugins and the kernel's job queue: tasks, enqueue, schedules that go
through the queue, and what disabling a plugin does to its jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio
from trio.testing import MockClock

from kernel import Kernel, Manifest, Plugin, PluginContext, PluginSpec
from kernel.jobs.record import JobState
from kernel.resilience.retry import Jitter, RetryPolicy
from kernel.runtime.supervisor import PluginState
from kernel.storage.memory import MemoryJobStore
from kernel.time.clock import Clock
from kernel.time.policies import CatchUp, QueueOne
from kernel.time.triggers import Every

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class Mailer(Plugin):
    manifest = Manifest("mailer")

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.started = trio.Event()
        self.hold = False

    async def on_enable(self, ctx: PluginContext) -> None:
        ctx.register_task("send", self.send)

    async def send(self, to: str) -> None:
        self.started.set()
        if self.hold:
            await trio.sleep_forever()
        self.sent.append(to)


async def test_a_plugin_registers_tasks_and_enqueues_jobs(autojump_clock: MockClock) -> None:
    mailer = Mailer()
    async with Kernel([mailer], clock=Clock.starting_at(T0)) as kernel:
        ctx = kernel.plugins["mailer"].context
        assert ctx is not None
        job = await ctx.enqueue("send", "ada@example.org", delay=60)
        assert (job.task, job.queue) == ("mailer.send", "mailer")
        await trio.sleep(59)
        assert mailer.sent == []
        await trio.sleep(2)
        assert mailer.sent == ["ada@example.org"]
        # any task by its full name, from anywhere
        await kernel.queue.enqueue("mailer.send", "bob@example.org")
        await trio.sleep(1)
        assert mailer.sent == ["ada@example.org", "bob@example.org"]


async def test_disabling_a_plugin_puts_its_running_jobs_back(autojump_clock: MockClock) -> None:
    mailer = Mailer()
    mailer.hold = True
    async with Kernel([mailer], clock=Clock.starting_at(T0), shutdown_grace=5) as kernel:
        ctx = kernel.plugins["mailer"].context
        assert ctx is not None
        job = await ctx.enqueue("send", "ada@example.org")
        await mailer.started.wait()
        await kernel.disable("mailer")
        stored = await kernel.queue.get_job(job.id)
        assert stored is not None
        # interrupted by the stop, not failed: the attempt is given back
        assert (stored.state, stored.attempts) == (JobState.queued, 0)
        await trio.sleep(3600)
        assert mailer.sent == []  # nobody runs a disabled plugin's jobs
        mailer.hold = False
        await kernel.enable("mailer")
        await trio.sleep(1)
        assert mailer.sent == ["ada@example.org"]
        done = await kernel.queue.get_job(job.id)
        assert done is not None
        assert (done.state, done.attempts) == (JobState.succeeded, 1)


class Ticker(Plugin):
    manifest = Manifest("ticker")

    def __init__(self, retry: RetryPolicy | None = None) -> None:
        self.ticks: list[datetime] = []
        self.retry = retry
        self.fail_next = 0
        self.ctx: PluginContext | None = None

    async def on_enable(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        ctx.schedule(self.tick, Every(minutes=1), misfire=CatchUp(), retry=self.retry)

    def tick(self) -> None:
        assert self.ctx is not None
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("flaky")
        self.ticks.append(self.ctx.clock.now())


async def test_schedules_survive_a_restart(autojump_clock: MockClock) -> None:
    jobs = MemoryJobStore()  # what SQLite or PostgreSQL keep across processes
    clock = Clock.starting_at(T0)
    first = Ticker()
    async with Kernel([first], jobs=jobs, clock=clock):
        await trio.sleep(5 * 60 + 30)
    await trio.sleep(10 * 60)  # the process is down for ten minutes
    second = Ticker()
    async with Kernel([second], jobs=jobs, clock=clock):
        await trio.sleep(60)
    minutes = [int((t - T0).total_seconds() // 60) for t in first.ticks + second.ticks]
    # 1..5 on time; 6..15 missed while down and caught up at the restart
    # (15:30), one after another as the queue's concurrency allows; then 16
    assert minutes == [1, 2, 3, 4, 5] + [15] * 10 + [16]
    done = await jobs.list_jobs(state=JobState.succeeded, limit=100)
    assert sorted(j.fire_time for j in done if j.fire_time) == [
        T0 + timedelta(minutes=n) for n in range(1, 17)
    ]


async def test_a_schedule_run_gets_its_retries(autojump_clock: MockClock) -> None:
    ticker = Ticker(
        retry=RetryPolicy(max_attempts=3, initial=timedelta(seconds=5), jitter=Jitter.NONE)
    )
    ticker.fail_next = 2
    async with Kernel([ticker], clock=Clock.starting_at(T0)):
        await trio.sleep(90)
    assert ticker.ticks == [T0 + timedelta(seconds=60 + 5 + 10)]


async def test_a_schedule_run_is_not_retried_unless_asked(autojump_clock: MockClock) -> None:
    ticker = Ticker()
    ticker.fail_next = 1
    async with Kernel([ticker], clock=Clock.starting_at(T0)):
        await trio.sleep(150)
    assert ticker.ticks == [T0 + timedelta(minutes=2)]


async def test_an_overlap_policy_the_queue_cannot_keep_fails_the_start(
    autojump_clock: MockClock,
) -> None:
    class Queued(Plugin):
        manifest = Manifest("queued")

        async def on_enable(self, ctx: PluginContext) -> None:
            ctx.schedule(lambda: None, Every(minutes=1), overlap=QueueOne())

    async with Kernel([PluginSpec(Queued())], clock=Clock.starting_at(T0)) as kernel:
        supervisor = kernel.plugins["queued"]
        await trio.sleep(3600)  # its restarts fail the same way
        assert supervisor.state is PluginState.FAILED
        assert "SkipIfRunning() or AllowOverlap()" in supervisor.reason
