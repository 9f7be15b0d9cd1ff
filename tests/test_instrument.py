"""The instrumentation seam (`kernel.observe.instrument`) with a recording
implementation: what the kernel reports, in which task's context, and the
outcome of every kind of attempt. OpenTelemetry is contrib/otel's business;
here a context variable stands in for a tracer's current span."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from kernel import (
    AttemptOutcome,
    AttemptResult,
    Clock,
    Every,
    Instrumentation,
    JobQueue,
    Kernel,
    Manifest,
    Plugin,
    PluginContext,
    PluginStep,
    Restart,
    RestartIntensity,
    RetryPolicy,
)
from kernel.errors import JobTimedOut
from kernel.jobs.record import JobRecord
from kernel.resilience.retry import Jitter
from kernel.storage.memory import MemoryJobStore
from kernel.time.scheduler import Scheduler, open_scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)

current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="none")
"""What a tracer would hold as its current span."""


@attrs.define
class Attempt:
    recorder: Recorder
    job: JobRecord
    outcome: AttemptOutcome | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        token = current.set(f"attempt {self.job.task} #{self.job.attempts}")
        try:
            yield
        finally:
            current.reset(token)

    def finished(self, outcome: AttemptOutcome) -> None:
        assert self.outcome is None, "finished twice"
        self.outcome = outcome


@attrs.define
class Recorder:
    """An `Instrumentation` that writes down what it is told."""

    events: list[tuple[Any, ...]] = attrs.field(factory=list)
    attempts: list[Attempt] = attrs.field(factory=list)

    @contextmanager
    def enqueue(self, job: JobRecord) -> Iterator[dict[str, str]]:
        self.events.append(("enqueue", job.task, current.get()))
        yield {"traceparent": f"enqueued in {current.get()}"}

    def attempt(self, job: JobRecord) -> Attempt:
        attempt = Attempt(self, job)
        self.attempts.append(attempt)
        return attempt

    @contextmanager
    def schedule_fire(self, schedule: str, fire_time: datetime | None) -> Iterator[None]:
        token = current.set(f"fire {schedule}")
        try:
            yield
        except BaseException as error:
            self.events.append(("fire", schedule, fire_time, type(error).__name__))
            raise
        else:
            self.events.append(("fire", schedule, fire_time, None))
        finally:
            current.reset(token)

    @contextmanager
    def plugin_step(
        self, plugin: str, step: PluginStep, *, error: BaseException | None = None
    ) -> Iterator[None]:
        try:
            yield
        except BaseException as raised:
            self.events.append((step.value, plugin, repr(error), type(raised).__name__))
            raise
        self.events.append((step.value, plugin, repr(error), None))

    def outcomes(self) -> list[tuple[str, int, AttemptResult | None]]:
        return [
            (a.job.task, a.job.attempts, None if a.outcome is None else a.outcome.result)
            for a in self.attempts
        ]


@asynccontextmanager
async def instrumented_queue(
    recorder: Recorder, store: MemoryJobStore | None = None
) -> AsyncIterator[JobQueue]:
    clock = Clock.starting_at(T0)
    clock.now()
    async with open_scheduler(clock) as scheduler:
        queue = JobQueue(store or MemoryJobStore(), scheduler, worker="w1")
        queue.instrument(recorder)
        yield queue


@asynccontextmanager
async def serving(queue: JobQueue) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        yield nursery
        nursery.cancel_scope.cancel()


NO_JITTER = RetryPolicy(max_attempts=2, initial=S, factor=2.0, jitter=Jitter.NONE)


def test_a_recorder_is_an_instrumentation_and_nonsense_is_refused() -> None:
    assert isinstance(Recorder(), Instrumentation)
    kernel = Kernel()
    assert kernel.instrumentation is None
    with pytest.raises(TypeError, match="expected an Instrumentation"):
        kernel.instrument(object())  # type: ignore[arg-type]
    kernel.instrument(Recorder())
    kernel.instrument(None)
    assert kernel.instrumentation is None


async def test_nothing_is_registered_by_default(autojump_clock: MockClock) -> None:
    async with Kernel(clock=Clock.starting_at(T0)) as kernel:
        assert kernel.scheduler.instrumentation is None
        assert kernel.queue.instrumentation is None
        job = await kernel.queue.enqueue(kernel.queue.register("t", lambda: None).name)
        assert job.headers == {}


async def test_the_enqueuer_context_is_stored_and_the_attempt_runs_in_its_own(
    autojump_clock: MockClock,
) -> None:
    recorder = Recorder()
    seen: dict[str, tuple[str, str]] = {}

    ran = {"a": trio.Event(), "b": trio.Event()}

    async def on_loop(tag: str) -> None:
        seen[tag] = (current.get(), "loop")
        ran[tag].set()

    def in_thread(tag: str) -> None:
        assert threading.current_thread() is not threading.main_thread()
        seen[tag] = (current.get(), "thread")
        trio.from_thread.run_sync(ran[tag].set)

    store = MemoryJobStore()
    async with instrumented_queue(recorder, store) as queue:
        queue.register("loop", on_loop)
        queue.register("blocking", in_thread, blocking=True)
        token = current.set("checkout")
        first = await queue.enqueue("loop", "a")
        second = await queue.enqueue("blocking", "b")
        current.reset(token)
        for job in (first, second):
            stored = await store.get_job(job.id)
            assert stored is not None
            assert stored.headers == {"traceparent": "enqueued in checkout"}
        async with serving(queue):
            # not a sleep: a thread lets the mock clock jump past any time
            for event in ran.values():
                await event.wait()
            await queue.wait_idle("default")
    assert seen == {"a": ("attempt loop #1", "loop"), "b": ("attempt blocking #1", "thread")}
    assert ("enqueue", "loop", "checkout") in recorder.events
    assert sorted(recorder.outcomes()) == [
        ("blocking", 1, AttemptResult.SUCCEEDED),
        ("loop", 1, AttemptResult.SUCCEEDED),
    ]
    assert [a.job.headers for a in recorder.attempts] == [
        {"traceparent": "enqueued in checkout"}
    ] * 2
    assert current.get() == "none"  # nothing leaked into the test's task


async def test_retry_with_its_delay_then_success(autojump_clock: MockClock) -> None:
    recorder = Recorder()
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("provider down")

    async with instrumented_queue(recorder) as queue:
        queue.register("flaky", flaky, retry=NO_JITTER)
        await queue.enqueue("flaky")
        async with serving(queue):
            await trio.sleep(5)
    assert recorder.outcomes() == [
        ("flaky", 1, AttemptResult.RETRY),
        ("flaky", 2, AttemptResult.SUCCEEDED),
    ]
    retry = recorder.attempts[0].outcome
    assert retry is not None
    assert retry.retry_delay == S
    assert isinstance(retry.error, ConnectionError)
    assert not retry.timed_out


async def test_dead_letter_and_timeout(autojump_clock: MockClock) -> None:
    recorder = Recorder()

    async def broken() -> None:
        raise ValueError("bad input")

    async def slow() -> None:
        await trio.sleep(60)

    async with instrumented_queue(recorder) as queue:
        queue.register("broken", broken, retry=RetryPolicy(max_attempts=1))
        queue.register("slow", slow, retry=RetryPolicy(max_attempts=1), timeout=2)
        await queue.enqueue("broken")
        await queue.enqueue("slow")
        async with serving(queue):
            await trio.sleep(5)
    by_task = {a.job.task: a.outcome for a in recorder.attempts}
    dead, timed_out = by_task["broken"], by_task["slow"]
    assert dead is not None
    assert dead.result is AttemptResult.DEAD
    assert isinstance(dead.error, ValueError)
    assert not dead.timed_out
    assert timed_out is not None
    assert timed_out.result is AttemptResult.DEAD
    assert isinstance(timed_out.error, JobTimedOut)
    assert timed_out.timed_out


async def test_cancelled_released_and_torn_down(autojump_clock: MockClock) -> None:
    recorder = Recorder()
    started = trio.Event()

    async def long() -> None:
        started.set()
        await trio.sleep(3600)

    async with instrumented_queue(recorder) as queue:
        queue.register("long", long, queue="q")
        job = await queue.enqueue("long")
        async with serving(queue):
            await started.wait()
            await queue.cancel(job.id)  # the job is cancelled while it runs
            await queue.wait_idle("q")
            started = trio.Event()
            await queue.enqueue("long")
            await started.wait()
            await queue.stop_queue("q")  # a plugin stopping: the attempt is given back
            queue.resume("q")
            started = trio.Event()
            await queue.enqueue("long")
            await started.wait()
        # leaving `serving` cancelled the workers under the running job
    assert recorder.outcomes() == [
        ("long", 1, AttemptResult.CANCELLED),
        ("long", 1, AttemptResult.RELEASED),
        # the released job ran again (its attempt given back), and was torn down
        ("long", 1, AttemptResult.RELEASED),
    ]
    assert recorder.attempts[1].job.id == recorder.attempts[2].job.id


async def test_function_schedule_fires_in_their_own_context(autojump_clock: MockClock) -> None:
    recorder = Recorder()
    seen: list[str] = []

    async def tick() -> None:
        seen.append(current.get())
        if len(seen) == 2:
            raise RuntimeError("second run fails")

    clock = Clock.starting_at(T0)
    clock.now()
    async with open_scheduler(clock) as scheduler:
        scheduler.instrument(recorder)
        scheduler.add_schedule(tick, Every(seconds=10), name="tick")
        await trio.sleep(25)
    assert seen == ["fire tick", "fire tick"]
    assert recorder.events == [
        ("fire", "tick", T0 + timedelta(seconds=10), None),
        ("fire", "tick", T0 + timedelta(seconds=20), "RuntimeError"),
    ]


async def test_a_queued_schedule_fire_is_the_parent_of_its_enqueue(
    autojump_clock: MockClock,
) -> None:
    recorder = Recorder()
    ran: list[str] = []
    async with instrumented_queue(recorder) as queue:
        queue.register("report", lambda: ran.append(current.get()))
        queue.add_schedule("report", Every(seconds=10), name="hourly")
        async with serving(queue):
            await trio.sleep(15)
    assert recorder.events[:2] == [
        ("enqueue", "report", "fire hourly"),
        ("fire", "hourly", T0 + timedelta(seconds=10), None),
    ]
    (attempt,) = recorder.attempts
    assert attempt.job.headers == {"traceparent": "enqueued in fire hourly"}
    assert ran == ["attempt report #1"]


class Crashy(Plugin):
    manifest = Manifest(
        "crashy",
        restart=Restart.TRANSIENT,
        intensity=RestartIntensity(max_restarts=3, period=60, backoff_initial=1),
    )

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, ctx: PluginContext) -> None:
        self.runs += 1
        if self.runs == 1:
            raise OSError("disk full")
        await trio.sleep_forever()


async def test_plugin_lifecycle_steps(autojump_clock: MockClock) -> None:
    recorder = Recorder()
    kernel = Kernel([Crashy()], clock=Clock.starting_at(T0))
    kernel.instrument(recorder)  # before it starts, as a contrib's serve() does
    async with kernel:
        await trio.sleep(5)
        assert kernel.queue.instrumentation is recorder
        assert kernel.scheduler.instrumentation is recorder
    assert recorder.events == [
        ("install", "crashy", "None", None),
        ("enable", "crashy", "None", None),
        ("restart", "crashy", "OSError('disk full')", None),
        ("enable", "crashy", "None", None),
        ("disable", "crashy", "None", None),
    ]


async def test_instrumenting_a_running_kernel_takes_effect_at_once(
    autojump_clock: MockClock,
) -> None:
    recorder = Recorder()
    async with Kernel(clock=Clock.starting_at(T0)) as kernel:
        kernel.queue.register("t", lambda: None)
        await kernel.queue.enqueue("t")
        await trio.sleep(1)
        kernel.instrument(recorder)
        await kernel.queue.enqueue("t")
        await trio.sleep(1)
        kernel.instrument(None)
        await kernel.queue.enqueue("t")
        await trio.sleep(1)
    assert [event[0] for event in recorder.events] == ["enqueue"]
    assert recorder.outcomes() == [("t", 1, AttemptResult.SUCCEEDED)]


async def test_scheduler_instrument_checks_its_argument() -> None:
    scheduler = Scheduler()
    with pytest.raises(TypeError):
        scheduler.instrument("otel")  # type: ignore[arg-type]
