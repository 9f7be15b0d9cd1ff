"""Spans in one process, under trio's MockClock: the enqueue, each attempt
with its outcome, schedule fires and plugin lifecycle steps, read back from
the SDK's `InMemorySpanExporter`."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import trio
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from otel_helpers import named, one, parent_id, span_id, trace_id
from trio.testing import MockClock

import kernel_otel
from kernel import (
    Clock,
    Every,
    Jitter,
    JobQueue,
    Kernel,
    Manifest,
    Plugin,
    PluginContext,
    Restart,
    RestartIntensity,
    RetryPolicy,
)
from kernel.storage.memory import MemoryJobStore
from kernel.time.scheduler import open_scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)
ONE_RETRY = RetryPolicy(max_attempts=2, initial=S, jitter=Jitter.NONE)


@asynccontextmanager
async def queue_at_t0(tracer_provider: TracerProvider) -> AsyncIterator[JobQueue]:
    clock = Clock.starting_at(T0)
    clock.now()
    async with open_scheduler(clock) as scheduler:
        queue = JobQueue(MemoryJobStore(), scheduler, worker="w1")
        kernel_otel.instrument(queue, tracer_provider=tracer_provider)
        yield queue


@asynccontextmanager
async def serving(queue: JobQueue) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        yield
        nursery.cancel_scope.cancel()


async def test_the_attempt_is_a_child_of_the_enqueue_and_the_task_spans_of_the_attempt(
    autojump_clock: MockClock,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    tracer = tracer_provider.get_tracer("test")
    ran = {"send": trio.Event(), "resize": trio.Event()}

    async def send_invoice(number: int) -> None:
        with tracer.start_as_current_span("render pdf"):
            await trio.sleep(2)
        ran["send"].set()

    def resize(name: str) -> None:  # blocking=True: runs in a worker thread
        assert threading.current_thread() is not threading.main_thread()
        with tracer.start_as_current_span("resize image"):
            pass
        trio.from_thread.run_sync(ran["resize"].set)

    async with queue_at_t0(tracer_provider) as queue:
        queue.register("billing.send_invoice", send_invoice, queue="billing")
        queue.register("media.resize", resize, queue="media", blocking=True)
        with tracer.start_as_current_span("checkout") as checkout:
            job = await queue.enqueue("billing.send_invoice", 42)
            await queue.enqueue("media.resize", "cat.png")
        version, trace_hex, parent_hex, _flags = job.headers["traceparent"].split("-")
        assert version == "00"
        assert int(trace_hex, 16) == checkout.get_span_context().trace_id
        async with serving(queue):
            for event in ran.values():  # not a sleep: a thread lets the clock jump
                await event.wait()
            await queue.wait_idle("media")
            await queue.wait_idle("billing")
    spans = exporter.get_finished_spans()
    root = one(spans, "checkout")
    send = one(spans, "send billing")
    process = one(spans, "process billing")
    render = one(spans, "render pdf")
    assert send.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert {trace_id(s) for s in spans} == {trace_id(root)}  # one trace, both jobs
    assert parent_id(send) == span_id(root)
    assert parent_id(process) == span_id(send)
    assert [link.context.span_id for link in process.links] == [span_id(send)]
    assert parent_id(render) == span_id(process)
    assert int(parent_hex, 16) == span_id(send)  # the creation context is the send span's
    assert dict(send.attributes or {}) == {
        "messaging.system": "trio-kernel",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "billing",
        "messaging.message.id": job.id,
        "trio_kernel.job.task": "billing.send_invoice",
    }
    assert dict(process.attributes or {}) == {
        "messaging.system": "trio-kernel",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "billing",
        "messaging.message.id": job.id,
        "messaging.client.id": "w1",
        "trio_kernel.job.task": "billing.send_invoice",
        "trio_kernel.job.attempt": 1,
        "trio_kernel.job.outcome": "succeeded",
    }
    assert process.status.status_code is StatusCode.UNSET
    assert parent_id(one(spans, "resize image")) == span_id(one(spans, "process media"))


async def test_retry_with_its_delay_then_success(
    autojump_clock: MockClock, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    calls = 0

    async def charge() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("provider down")

    async with queue_at_t0(tracer_provider) as queue:
        queue.register("charge", charge, retry=ONE_RETRY)
        with tracer_provider.get_tracer("test").start_as_current_span("order"):
            await queue.enqueue("charge")
        async with serving(queue):
            await trio.sleep(5)
    spans = exporter.get_finished_spans()
    first, second = named(spans, "process default")
    send = one(spans, "send default")
    assert parent_id(first) == parent_id(second) == span_id(send)
    assert first.attributes is not None
    assert first.attributes["trio_kernel.job.attempt"] == 1
    assert first.attributes["trio_kernel.job.outcome"] == "retry"
    assert first.attributes["trio_kernel.job.retry_delay"] == 1.0
    assert first.attributes["error.type"] == "ConnectionError"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "ConnectionError: provider down"
    (event,) = first.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ConnectionError"
    assert second.attributes is not None
    assert second.attributes["trio_kernel.job.attempt"] == 2
    assert second.attributes["trio_kernel.job.outcome"] == "succeeded"
    assert "error.type" not in second.attributes


async def test_dead_letter_and_timeout(
    autojump_clock: MockClock, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def broken() -> None:
        raise ValueError("bad input")

    async def slow() -> None:
        await trio.sleep(60)

    async with queue_at_t0(tracer_provider) as queue:
        queue.register("broken", broken, queue="a", retry=RetryPolicy(max_attempts=1))
        queue.register("slow", slow, queue="b", retry=RetryPolicy(max_attempts=1), timeout=2)
        await queue.enqueue("broken")
        await queue.enqueue("slow")
        async with serving(queue):
            await trio.sleep(5)
    spans = exporter.get_finished_spans()
    dead = one(spans, "process a").attributes
    timed_out = one(spans, "process b").attributes
    assert dead is not None
    assert timed_out is not None
    assert dead["trio_kernel.job.outcome"] == "dead"
    assert dead["error.type"] == "ValueError"
    assert "trio_kernel.job.timed_out" not in dead
    assert timed_out["trio_kernel.job.outcome"] == "dead"
    assert timed_out["trio_kernel.job.timed_out"] is True
    assert timed_out["error.type"] == "kernel.errors.JobTimedOut"
    assert one(spans, "process b").status.status_code is StatusCode.ERROR


async def test_a_job_without_a_context_starts_its_own_trace(
    autojump_clock: MockClock, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Enqueued with no instrumentation (an older process): the attempt is a
    root, not a child of whatever the worker's task held when it started."""
    store = MemoryJobStore()
    clock = Clock.starting_at(T0)
    clock.now()
    async with open_scheduler(clock) as scheduler:
        queue = JobQueue(store, scheduler, worker="w1")
        queue.register("t", lambda: None)
        await queue.enqueue("t")
        kernel_otel.instrument(queue, tracer_provider=tracer_provider)
        with tracer_provider.get_tracer("test").start_as_current_span("main"):
            async with serving(queue):  # the workers start inside "main"
                await trio.sleep(1)
    process = one(exporter.get_finished_spans(), "process default")
    assert process.parent is None
    assert process.links == ()


async def test_baggage_travels_with_the_job(
    autojump_clock: MockClock, tracer_provider: TracerProvider
) -> None:
    seen: list[object] = []

    async with queue_at_t0(tracer_provider) as queue:
        queue.register("t", lambda: seen.append(baggage.get_baggage("tenant")))
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            await queue.enqueue("t")
        finally:
            context.detach(token)
        async with serving(queue):
            await trio.sleep(1)
    assert seen == ["acme"]


async def test_schedule_fires_are_roots_and_parents(
    autojump_clock: MockClock, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    runs = 0

    async def tick() -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            raise RuntimeError("second tick fails")

    async with queue_at_t0(tracer_provider) as queue:
        queue.scheduler.instrument(queue.instrumentation)
        queue.register("report", lambda: None, queue="reports")
        queue.add_schedule("report", Every(seconds=10), name="reports/hourly")
        queue.scheduler.add_schedule(tick, Every(seconds=10), name="tick")
        with tracer_provider.get_tracer("test").start_as_current_span("main"):
            async with serving(queue):
                await trio.sleep(25)
    spans = exporter.get_finished_spans()
    fires = named(spans, "fire reports/hourly")
    assert len(fires) == 2
    for fire in fires:
        assert fire.parent is None  # a timer has no caller, not even "main"
        assert fire.kind is SpanKind.INTERNAL
    first = fires[0]
    assert first.attributes is not None
    assert first.attributes["trio_kernel.schedule.name"] == "reports/hourly"
    assert first.attributes["trio_kernel.schedule.fire_time"] == "2026-01-01T00:00:10+00:00"
    sends = named(spans, "send reports")
    processes = named(spans, "process reports")
    assert [parent_id(s) for s in sends] == [span_id(f) for f in fires]
    assert sorted(parent_id(p) or 0 for p in processes) == sorted(span_id(s) for s in sends)
    assert processes[0].attributes is not None
    assert processes[0].attributes["trio_kernel.schedule.name"] == "reports/hourly"
    ticks = named(spans, "fire tick")
    assert [t.status.status_code for t in ticks] == [StatusCode.UNSET, StatusCode.ERROR]
    assert ticks[1].attributes is not None
    assert ticks[1].attributes["error.type"] == "RuntimeError"


class Crashy(Plugin):
    """Crashes once in ``run``, then runs until stopped."""

    manifest = Manifest(
        "crashy",
        restart=Restart.TRANSIENT,
        intensity=RestartIntensity(max_restarts=3, period=60, backoff_initial=1),
    )

    def __init__(self) -> None:
        self.runs = 0

    async def on_enable(self, ctx: PluginContext) -> None:
        async def noop() -> None:
            pass

        ctx.register_task("noop", noop)
        await ctx.enqueue("noop")  # enqueued during the enable step

    async def run(self, ctx: PluginContext) -> None:
        self.runs += 1
        if self.runs == 1:
            raise OSError("disk full")
        await trio.sleep_forever()


async def test_plugin_lifecycle_spans(
    autojump_clock: MockClock, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    kernel = Kernel([Crashy()], clock=Clock.starting_at(T0))
    kernel_otel.instrument(kernel, tracer_provider=tracer_provider)
    async with kernel:
        await trio.sleep(5)
    spans = exporter.get_finished_spans()
    steps = [s.name for s in spans if s.name.endswith("plugin crashy")]
    assert steps == [
        "install plugin crashy",
        "enable plugin crashy",
        "restart plugin crashy",
        "enable plugin crashy",
        "disable plugin crashy",
    ]
    restart = one(spans, "restart plugin crashy")
    assert restart.attributes is not None
    assert restart.attributes["trio_kernel.plugin.name"] == "crashy"
    assert restart.attributes["trio_kernel.plugin.step"] == "restart"
    assert restart.status.status_code is StatusCode.UNSET  # the crash is an event
    (crash,) = restart.events
    assert crash.attributes is not None
    assert crash.attributes["exception.type"] == "OSError"
    # the steps are not made current: the jobs enqueued in on_enable, like
    # the tasks started there, do not live under a step that has ended
    sends = named(spans, "send crashy")
    assert len(sends) == 2
    assert all(send.parent is None for send in sends)


async def test_a_dedup_hit_keeps_the_context_of_the_first_enqueue(
    autojump_clock: MockClock, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = tracer_provider.get_tracer("test")
    async with queue_at_t0(tracer_provider) as queue:
        queue.register("sync", lambda: None)
        with tracer.start_as_current_span("first"):
            first = await queue.enqueue("sync", dedup_key="sync", delay=10)
        with tracer.start_as_current_span("second"):
            second = await queue.enqueue("sync", dedup_key="sync")
        assert second.id == first.id
        assert second.headers == first.headers
        async with serving(queue):
            await trio.sleep(15)
    spans = exporter.get_finished_spans()
    sends = named(spans, "send default")
    assert len(sends) == 2  # the second enqueue has its span, with the id it was given
    assert sends[1].attributes is not None
    assert sends[1].attributes["messaging.message.id"] != first.id
    assert parent_id(one(spans, "process default")) == span_id(sends[0])
    assert sends[0].attributes is not None
    assert sends[0].attributes["trio_kernel.job.run_at"] == "2026-01-01T00:00:10+00:00"


async def test_a_cancelled_function_schedule_run_is_not_a_failure(
    autojump_clock: MockClock, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def long() -> None:
        await trio.sleep(3600)

    clock = Clock.starting_at(T0)
    clock.now()
    async with open_scheduler(clock) as scheduler:
        kernel_otel.instrument(scheduler, tracer_provider=tracer_provider)
        schedule = scheduler.add_schedule(long, Every(seconds=10), name="long")
        await trio.sleep(15)
        schedule.cancel()  # cancels its run in progress
        await trio.sleep(1)
    fire = one(exporter.get_finished_spans(), "fire long")
    assert fire.status.status_code is StatusCode.UNSET
    assert fire.attributes is not None
    assert fire.attributes["trio_kernel.cancelled"] is True
    assert "error.type" not in fire.attributes
