"""Metrics through the OpenTelemetry metrics API, read back with the SDK's
`InMemoryMetricReader`: attempt durations and outcomes by task and queue,
jobs sent, schedule fires. Under MockClock, so durations are exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from otel_helpers import points
from trio.testing import MockClock

import kernel_otel
from kernel import Clock, Every, Jitter, JobQueue, RetryPolicy
from kernel.storage.memory import MemoryJobStore
from kernel.time.scheduler import open_scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_attempt_durations_and_outcomes_by_task_and_queue(
    autojump_clock: MockClock,
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    calls = 0

    async def export_report() -> None:
        await trio.sleep(3)

    async def charge() -> None:
        nonlocal calls
        calls += 1
        await trio.sleep(0.5)
        if calls < 3:
            raise ConnectionError("provider down")

    clock = Clock.starting_at(T0)
    clock.now()
    async with open_scheduler(clock) as scheduler:
        queue = JobQueue(MemoryJobStore(), scheduler, worker="w1")
        kernel_otel.instrument(
            queue, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        queue.register("reports.export", export_report, queue="reports")
        retry = RetryPolicy(max_attempts=2, initial=timedelta(seconds=1), jitter=Jitter.NONE)
        queue.register("billing.charge", charge, queue="billing", retry=retry)
        queue.register("ping", lambda: None, queue="reports")
        queue.add_schedule("ping", Every(seconds=10), name="ping")
        await queue.enqueue("reports.export")
        await queue.enqueue("reports.export")
        await queue.enqueue("billing.charge")
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            await trio.sleep(25)
            nursery.cancel_scope.cancel()

    durations = {
        (a["trio_kernel.job.task"], a["trio_kernel.job.outcome"], a.get("error.type")): (
            p.count,
            p.sum,
        )
        for a, p in points(reader, "messaging.process.duration")
    }
    assert durations == {
        ("reports.export", "succeeded", None): (2, 6.0),
        ("billing.charge", "retry", "ConnectionError"): (1, 0.5),
        ("billing.charge", "dead", "ConnectionError"): (1, 0.5),
        ("ping", "succeeded", None): (2, 0.0),
    }
    for attributes, _ in points(reader, "messaging.process.duration"):
        assert attributes["messaging.system"] == "trio-kernel"
        assert attributes["messaging.operation.name"] == "process"
        queue_name = (
            "billing" if attributes["trio_kernel.job.task"] == "billing.charge" else "reports"
        )
        assert attributes["messaging.destination.name"] == queue_name
    attempts = {
        (a["trio_kernel.job.task"], a["trio_kernel.job.outcome"]): p.value
        for a, p in points(reader, "trio_kernel.job.attempts")
    }
    assert attempts == {
        ("reports.export", "succeeded"): 2,
        ("billing.charge", "retry"): 1,
        ("billing.charge", "dead"): 1,
        ("ping", "succeeded"): 2,
    }
    sent = {
        a["messaging.destination.name"]: p.value
        for a, p in points(reader, "messaging.client.sent.messages")
    }
    assert sent == {"reports": 4, "billing": 1}
    fires = {
        a["trio_kernel.schedule.name"]: p.value
        for a, p in points(reader, "trio_kernel.schedule.fires")
    }
    assert fires == {"ping": 2}
