"""Durable delivery: a notification to a remote notifier is a job.

A chat service that is down, a mail relay that refuses, a crash between
``notify()`` and the HTTP request: a notification must survive all three.
So `Outbox` hands each one to the kernel's own `JobQueue` as a job of the
built-in task ``kernel:notify`` on the queue ``kernel:notify``: it is stored
with the kernel's jobs (SQLite, PostgreSQL), retried with the route's
`RetryPolicy` (exponential backoff with full jitter, never sooner than a
service's ``Retry-After``), dead-lettered after its attempts, and visible in
``kernel jobs``. This is the transactional outbox of service architectures
(Chris Richardson's pattern), with the job queue as the outbox table.

The job's arguments are the route's label (never its URL, which may hold a
secret), the title, message and level, and the `NotificationContext`; the
delivery runs in that context again. The queue calls back into the
`FanoutNotifier` that owns the routes, so this module knows nothing of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Final

from kernel.errors import InvalidNotification, NotifierNotConfigured
from kernel.jobs.queue import JobQueue
from kernel.notifier.context import NotificationContext
from kernel.ports import JobRecord, Level, Notification
from kernel.resilience.retry import Jitter, RetryPolicy

__all__ = ["QUEUE", "TASK", "Deliver", "Outbox", "delivery_policy"]

TASK: Final = "kernel:notify"
"""The built-in task that delivers one notification to one notifier."""
QUEUE: Final = "kernel:notify"
"""Its queue (no plugin can be named so: plugin names have no colon)."""

Deliver = Callable[[str, Notification, NotificationContext], Awaitable[None]]
"""Delivers one notification to the notifier of a label, now, or raises."""


def delivery_policy(max_attempts: int) -> RetryPolicy:
    """How a delivery is retried: from 5 s, doubling, up to 10 minutes apart,
    with full jitter; a notifier that is no longer configured, or a
    notification no notifier can take, is not retried."""
    return RetryPolicy(
        max_attempts=max_attempts,
        initial=timedelta(seconds=5),
        factor=2.0,
        max_delay=timedelta(minutes=10),
        jitter=Jitter.FULL,
        give_up_on=(NotifierNotConfigured, InvalidNotification),
    )


class Outbox:
    """Notifications as jobs of one `JobQueue`; see the module docstring."""

    def __init__(self, queue: JobQueue, deliver: Deliver, *, concurrency: int = 4) -> None:
        self.queue = queue
        self._deliver = deliver
        self._concurrency = concurrency

    def start(self) -> None:
        """Register the task and configure its queue (workers start at once
        when the queue is running): stored deliveries from before a restart
        go out now."""
        self.queue.register(TASK, self._run, queue=QUEUE)
        self.queue.configure(QUEUE, concurrency=self._concurrency, aging=None)

    def stop(self) -> None:
        self.queue.unregister(TASK)

    async def enqueue(
        self,
        label: str,
        notification: Notification,
        context: NotificationContext,
        *,
        dedup: str | None,
        max_attempts: int,
        timeout: timedelta,  # noqa: ASYNC109 - the delivery's timeout, not ours
    ) -> JobRecord:
        """Store the delivery of ``notification`` to the notifier ``label``.

        With ``dedup`` (an alert's dedup key), a delivery of the same alert
        to the same notifier still waiting (queued or retrying) is returned
        instead of a second one, across every process sharing the store."""
        dedup_key = None
        if dedup is not None:
            digest = hashlib.sha256(dedup.encode("utf-8", "replace")).hexdigest()[:16]
            dedup_key = f"notify:{label}:{digest}"
        return await self.queue.enqueue(
            TASK,
            label,
            notification.title,
            notification.message,
            notification.level.value,
            context.to_json(),
            dedup_key=dedup_key,
            retry=delivery_policy(max_attempts),
            timeout=timeout,
        )

    async def _run(
        self, notifier: str, title: str, message: str, level: str, context: dict[str, Any]
    ) -> None:
        await self._deliver(
            notifier,
            Notification(title, message, Level(level)),
            NotificationContext.from_json(context),
        )
