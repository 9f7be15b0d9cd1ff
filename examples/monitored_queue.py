"""A monitored work queue: a producer, a consumer, and health from the backlog.

A producer task polls a feed (a webhook inbox, an SQS queue) into a bounded
in-process queue; a consumer task works through it. When work arrives faster
than it is done the backlog grows, and the plugin's ``health`` check says so:
degraded above one threshold, unhealthy above another. The kernel checks
health periodically and notifies every transition, recovery included, the
way a Kubernetes readiness probe or a Spring Boot health indicator would
surface it. A full queue drops new work and counts it (``jobs_dropped``);
work dropped since the last check makes the plugin unhealthy too.

Run it: ``kernel run examples/monitored_queue.toml``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import trio

from kernel import HealthReport, Manifest, Plugin, PluginContext

__all__ = ["FakeJobFeed", "MonitoredQueue", "MonitoredQueueConfig"]


@attrs.frozen
class MonitoredQueueConfig:
    """``[plugins.NAME.config]`` of `MonitoredQueue`."""

    poll_interval: timedelta = timedelta(seconds=1)
    #: How long the consumer takes per job.
    work_time: timedelta = timedelta(milliseconds=50)
    capacity: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))
    degraded_above: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    unhealthy_above: int = attrs.field(default=1_000, validator=attrs.validators.ge(0))

    def __attrs_post_init__(self) -> None:
        if self.unhealthy_above < self.degraded_above:
            raise ValueError(
                f"unhealthy_above ({self.unhealthy_above}) must be at least"
                f" degraded_above ({self.degraded_above})"
            )


class FakeJobFeed:
    """Stands in for an inbox: each poll returns ``rate`` new jobs (set
    ``rate`` to change the traffic)."""

    def __init__(self, rate: int = 10) -> None:
        self.rate = rate
        self.produced = 0

    async def poll(self) -> list[dict[str, Any]]:
        await trio.lowlevel.checkpoint()
        jobs = [{"job": self.produced + n} for n in range(self.rate)]
        self.produced += len(jobs)
        return jobs


class MonitoredQueue(Plugin):
    """A producer and a consumer with a health check; see the module docstring."""

    manifest = Manifest(
        "monitored-queue",
        description="a work queue whose health follows its backlog",
        config=MonitoredQueueConfig,
    )

    def __init__(self, feed: FakeJobFeed | None = None) -> None:
        self.feed = feed if feed is not None else FakeJobFeed()
        self.processed = 0
        self.dropped = 0
        self._dropped_when_checked = 0
        self._backlog: trio.MemoryReceiveChannel[dict[str, Any]] | None = None

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return 0 if self._backlog is None else self._backlog.statistics().current_buffer_used

    async def on_enable(self, ctx: PluginContext) -> None:
        config: MonitoredQueueConfig = ctx.config
        send, receive = trio.open_memory_channel[dict[str, Any]](config.capacity)
        self._backlog = receive
        ctx.start_task(self.produce, ctx, send, name="producer")
        ctx.start_task(self.consume, ctx, receive, name="consumer")
        ctx.start_task(self.report, ctx, name="reporter")
        ctx.log.info(
            "polling every %gs into a queue of %d; degraded above %d waiting, unhealthy above %d",
            config.poll_interval.total_seconds(),
            config.capacity,
            config.degraded_above,
            config.unhealthy_above,
        )

    async def report(self, ctx: PluginContext, every: float = 10.0) -> None:
        """One info line every ``every`` seconds: what was done meanwhile."""
        processed, dropped = self.processed, self.dropped
        while True:
            await ctx.sleep(every)
            ctx.log.info(
                "processed %d jobs in the last %gs (%d in all), %d waiting, %d dropped",
                self.processed - processed,
                every,
                self.processed,
                self.depth,
                self.dropped - dropped,
            )
            processed, dropped = self.processed, self.dropped

    async def produce(
        self, ctx: PluginContext, send: trio.MemorySendChannel[dict[str, Any]]
    ) -> None:
        config: MonitoredQueueConfig = ctx.config
        depth = ctx.metrics.gauge("queue_depth")
        dropped = ctx.metrics.counter("jobs_dropped")
        while True:
            for job in await self.feed.poll():
                try:
                    send.send_nowait(job)
                except trio.WouldBlock:
                    self.dropped += 1
                    dropped.inc()
            depth.set(self.depth)
            await ctx.sleep(config.poll_interval.total_seconds())

    async def consume(
        self, ctx: PluginContext, receive: trio.MemoryReceiveChannel[dict[str, Any]]
    ) -> None:
        config: MonitoredQueueConfig = ctx.config
        done = ctx.metrics.counter("jobs_processed")
        async for _job in receive:
            await ctx.sleep(config.work_time.total_seconds())  # the work itself
            self.processed += 1
            done.inc()

    async def health(self, ctx: PluginContext) -> HealthReport:
        config: MonitoredQueueConfig = ctx.config
        depth = self.depth
        newly_dropped = self.dropped - self._dropped_when_checked
        self._dropped_when_checked = self.dropped
        details = {"depth": depth, "processed": self.processed, "dropped": self.dropped}
        if newly_dropped:
            reason = f"queue full: {newly_dropped} jobs dropped since the last check"
            return HealthReport.unhealthy(reason, **details)
        if depth > config.unhealthy_above:
            return HealthReport.unhealthy(f"backlog of {depth} jobs", **details)
        if depth > config.degraded_above:
            return HealthReport.degraded(f"backlog of {depth} jobs", **details)
        return HealthReport.healthy(**details)
