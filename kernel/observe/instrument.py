"""The instrumentation seam: where the kernel tells a tracer what it does.

The kernel imports no tracing library. A tracer (``trio-kernel-otel`` for
OpenTelemetry, or your own) implements `Instrumentation` and is registered
with `Kernel.instrument` (or `JobQueue.instrument` / `Scheduler.instrument`
for embedders who hold those alone). The kernel then calls it at four
points, each in the trio task doing the work, so that what the tracer makes
current there is the parent of whatever the work itself traces:

1. **enqueue** (`Instrumentation.enqueue`): around storing a new job, in the
   caller's task; what the context manager yields is stored with the job as
   its ``headers`` (the W3C ``traceparent`` of the caller, its baggage);
2. **one attempt of a job** (`Instrumentation.attempt`): before a worker
   calls the task, with the claimed job (headers and all); the returned
   `AttemptObserver` makes its context current around the call
   (``running``; a ``blocking=True`` task's thread sees it too, since trio
   copies the context into ``to_thread`` threads) and is told how the attempt
   ended (``finished``, an `AttemptOutcome`);
3. **a schedule fire** (`Instrumentation.schedule_fire`): around the run of
   a function schedule, or around storing the job of a queued schedule's
   slot (its enqueue is reported inside it);
4. **a plugin lifecycle step** (`Instrumentation.plugin_step`): around
   ``on_install``, ``on_enable``, ``on_disable`` (with the wait for runs to
   finish) and a supervisor's wait before a restart. A tracer had better
   not make a step's context current: trio copies the context into every
   task started from it, and what a plugin starts in ``on_enable`` runs
   long after the step.

An attempt is one call of a task: a job put back before its call (its
task's breaker is open, its rate limit is reached, its task is unknown here)
or buried before it (its arguments no longer fit) has no attempt.

With nothing registered, each point costs one ``is None`` test. The shape
follows Sidekiq's client and server middleware (around push, around
perform) and Celery's ``before_task_publish`` / ``task_prerun`` /
``task_postrun`` signals; unlike signals, one object sees a job from enqueue
to outcome, as an OpenTelemetry span must.

An implementation must not raise from these calls (an exception would fail
the enqueue, the attempt or the plugin step it reports) and must be quick:
all of them run on the trio thread.
"""

from __future__ import annotations

import enum
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kernel.jobs.record import JobRecord

__all__ = [
    "AttemptObserver",
    "AttemptOutcome",
    "AttemptResult",
    "Instrumentation",
    "PluginStep",
    "checked_instrumentation",
]


class AttemptResult(enum.Enum):
    """How one attempt of a job ended."""

    SUCCEEDED = "succeeded"  #: the task returned (the success is stored with the next claim)
    RETRY = "retry"  #: it failed and runs again after `AttemptOutcome.retry_delay`
    DEAD = "dead"  #: it failed for the last time: a dead letter
    RELEASED = "released"  #: interrupted by a stop: put back, its attempt not spent
    CANCELLED = "cancelled"  #: the job was cancelled, or this worker lost its lease


@attrs.frozen
class AttemptOutcome:
    """What an `AttemptObserver` is told when its attempt is over: the
    ``result``, the ``error`` of a failed attempt (a `kernel.errors.JobTimedOut`
    when ``timed_out``), and for a retry how long until it runs again."""

    result: AttemptResult
    error: BaseException | None = None
    retry_delay: timedelta | None = None
    timed_out: bool = False


class PluginStep(enum.Enum):
    """The lifecycle steps of a plugin the kernel reports."""

    INSTALL = "install"  #: ``on_install``, once per store
    ENABLE = "enable"  #: ``on_enable``, at each start (under its timeout)
    DISABLE = "disable"  #: ``on_disable`` and the wait for its runs, within the grace
    RESTART = "restart"  #: the supervisor's wait before restarting a crashed or exited plugin


class AttemptObserver(Protocol):
    """One attempt of one job, seen by an `Instrumentation`."""

    def running(self) -> AbstractContextManager[object]:
        """Entered around the task's call, in the worker's task: make the
        attempt's context current there."""
        ...

    def finished(self, outcome: AttemptOutcome) -> None:
        """The attempt is over (called once; not at all if the process is
        torn down under it, past every grace period)."""
        ...


@runtime_checkable
class Instrumentation(Protocol):
    """What a tracer implements to see the kernel work (see the module
    docstring for when each is called)."""

    def enqueue(self, job: JobRecord) -> AbstractContextManager[Mapping[str, str]]:
        """Around storing ``job`` (new, not yet stored), in the enqueuer's
        task; yields the headers to store with it (`JobRecord.headers`: at
        most 32 text entries)."""
        ...

    def attempt(self, job: JobRecord) -> AttemptObserver:
        """A worker is about to call the task of ``job`` (claimed: its
        ``attempts`` counts this one)."""
        ...

    def schedule_fire(
        self, schedule: str, fire_time: datetime | None
    ) -> AbstractContextManager[object]:
        """Around one fire of ``schedule`` for the slot ``fire_time``."""
        ...

    def plugin_step(
        self, plugin: str, step: PluginStep, *, error: BaseException | None = None
    ) -> AbstractContextManager[object]:
        """Around one lifecycle ``step`` of ``plugin``; a restart comes with
        the ``error`` it crashed with (None when its ``run`` returned)."""
        ...


def checked_instrumentation(value: object) -> Instrumentation | None:
    """``value`` if it is an `Instrumentation` (or None); else `TypeError`."""
    if value is not None and not isinstance(value, Instrumentation):
        raise TypeError(
            f"expected an Instrumentation (enqueue, attempt, schedule_fire, plugin_step)"
            f" or None, got {value!r}"
        )
    return value
