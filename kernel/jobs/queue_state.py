"""How one queue is worked here (`QueueConfig`) and what this process holds
of it at a moment (`QueueState`): the jobs claimed ahead, running, and
succeeded but not yet stored, the claimer's timer and wake-up, the workers'
parking lot. `kernel.jobs.workers` drives both."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
import trio

from kernel.errors import InvalidJob
from kernel.jobs.rate import RateLimit, RateWindow
from kernel.jobs.record import JobRecord
from kernel.time.wheel import Timer

if TYPE_CHECKING:
    from kernel.jobs.attempt import Run
    from kernel.time.scheduler import Scheduler

__all__ = ["QueueConfig", "QueueState"]


def _prefetch(_instance: object, _attribute: object, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise InvalidJob("prefetch", value, "must be an int >= 0 (or None: concurrency // 4)")


@attrs.frozen
class QueueConfig:
    """How one queue is worked: concurrency, rate limit, aging and prefetch.

    ``prefetch`` is how many jobs beyond ``concurrency`` are claimed ahead
    into a local buffer (None: a quarter of ``concurrency``), so a worker
    that finishes finds its next job ready instead of waiting for a claim in
    flight. A job claimed ahead runs before any job claimed after it: a
    higher priority that arrives meanwhile may wait behind at most
    ``prefetch`` jobs. Set 0 for strict priority order, or for long jobs
    shared by several machines (no job then waits in one machine's buffer
    while another is idle).
    """

    name: str
    concurrency: int = 1
    rate_limit: RateLimit | None = None
    aging: timedelta | None = timedelta(seconds=60)
    prefetch: int | None = attrs.field(default=None, validator=_prefetch)

    @property
    def ahead(self) -> int:
        return self.concurrency // 4 if self.prefetch is None else self.prefetch


@attrs.define(eq=False)
class QueueState:
    """This process's hold on one queue (see the module docstring)."""

    config: QueueConfig
    window: RateWindow | None
    paused: bool = False
    buffer: deque[JobRecord] = attrs.field(factory=deque)  # claimed, not started
    running: dict[str, Run] = attrs.field(factory=dict)  # started, outcome not stored
    completed: list[JobRecord] = attrs.field(factory=list)  # succeeded, to store next round
    to_release: list[JobRecord] = attrs.field(factory=list)  # prefetched, to give back
    storing: int = 0  # outcomes or give-backs taken from the lists above, in flight
    wake: trio.Event = attrs.field(factory=trio.Event)
    ready: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    timer: Timer[Callable[[], None]] | None = None
    timer_at: float = math.inf
    due_hint: datetime | None = None
    check_due: bool = True  # ask the store when the next job is due, once drained
    poll: float = 0.0  # the current wait between polls of a store shared without wake-ups
    serving: bool = False
    nursery: trio.Nursery | None = None
    workers: int = 0
    idle: trio.Event | None = None  # made while someone waits for the queue to go idle
    gauge: Any = None

    @property
    def busy(self) -> bool:
        return bool(
            self.running or self.buffer or self.completed or self.to_release or self.storing
        )

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """While a store call holds outcomes taken off this queue's lists, it
        is still busy (``wait_idle`` must not see it idle between the two)."""
        self.storing += 1
        try:
            yield
        finally:
            self.storing -= 1

    def check_idle(self) -> None:
        """Wake whoever waits for the queue to go idle, if it now is."""
        if self.idle is not None and not self.busy:
            self.idle.set()
            self.idle = None

    # -- the claimer's one timer on the wheel -------------------------------------

    def arm(self, scheduler: Scheduler, deadline: float, due: datetime | None) -> None:
        """Keep one wheel timer for the queue, at the earliest thing it waits
        for (its next due job, a poll, a retry after a store failure, a
        rate-limit slot); ``due`` is the job's due time when it is one."""
        if self.timer is not None and self.timer_at <= deadline:
            return
        self.disarm(scheduler)

        def fire() -> None:
            self.timer = None
            self.timer_at = math.inf
            if due is not None:
                self.due_hint = due
            self.check_due = True
            self.wake.set()

        self.timer = scheduler.call_at(deadline, fire)
        self.timer_at = deadline

    def disarm(self, scheduler: Scheduler) -> None:
        if self.timer is not None:
            scheduler.cancel_timer(self.timer)
            self.timer = None
            self.timer_at = math.inf
