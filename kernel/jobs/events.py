"""Job events on the bus: ``job.enqueued``, ``job.started``, ``job.succeeded``,
``job.retrying``, ``job.dead``, ``job.cancelled``.

An event is built only when someone may receive it: a bus that knows its
subscribers (the local bus: `kernel.ports.SubscriberAware`) is asked first,
so a busy queue with nobody listening builds no payloads. An event lost
must never lose the job's outcome, so a failing bus is logged and ignored.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from kernel.jobs.record import JobRecord
from kernel.ports import JSON, Bus, SubscriberAware

__all__ = ["JobEvents"]

log = logging.getLogger("kernel.queue")


class JobEvents:
    """Publishes what happens to jobs on ``bus`` (nothing without one)."""

    def __init__(self, bus: Bus | None) -> None:
        self.bus = bus
        self._aware = bus if isinstance(bus, SubscriberAware) else None

    def wants(self, topic: str) -> bool:
        """Whether an event on ``topic`` may reach anyone (cheap)."""
        if self.bus is None:
            return False
        return self._aware is None or self._aware.has_subscribers(topic)

    async def publish(self, topic: str, job: JobRecord, **extra: Any) -> None:
        if not self.wants(topic):
            return
        assert self.bus is not None
        payload: dict[str, JSON] = {
            "id": job.id,
            "task": job.task,
            "queue": job.queue,
            "attempts": job.attempts,
        }
        if job.fire_time is not None:
            payload["schedule"] = job.schedule
            payload["fire_time"] = job.fire_time.isoformat()
        for key, value in extra.items():
            payload[key] = value.isoformat() if isinstance(value, datetime) else value
        try:
            await self.bus.publish(topic, payload)
        except Exception:  # an event lost must not lose the job's outcome
            log.exception("could not publish %s for job %s", topic, job.id)
