"""Wake-ups from other processes: a store that can say when another process
enqueued (PostgreSQL's LISTEN/NOTIFY, Redis pub/sub) is listened to for as
long as the workers serve, and listening is restarted after a failure.
Each (re)start makes every queue claim once, for what was enqueued while
nobody listened. Stores that cannot notify are polled by the workers."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from kernel.errors import StorageError
from kernel.ports import EnqueueListener
from kernel.resilience.retry import Backoff
from kernel.time.scheduler import Scheduler

__all__ = ["listen_for_enqueues"]

log = logging.getLogger("kernel.queue")


async def listen_for_enqueues(
    store: EnqueueListener,
    scheduler: Scheduler,
    wake: Callable[[str], None],
    wake_all: Callable[[], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``wake(queue)`` when another process enqueues into ``queue``,
    and ``wake_all()`` each time listening (re)starts; ``start`` returns
    once the first attempt is over, listening or not."""
    backoff = Backoff()
    reported = False
    while True:
        try:
            async with trio.open_nursery() as listening:
                await listening.start(store.listen_enqueued, wake)
                wake_all()
                if not reported:
                    reported = True
                    task_status.started()
        except* StorageError as failed:
            if not reported:
                reported = True
                task_status.started()
            wait = backoff.next()
            log.warning(
                "listening for new jobs failed (%s); retrying in %.1f s",
                failed.exceptions[0],
                wait,
            )
            await scheduler.sleep(wait)
