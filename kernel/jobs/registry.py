"""The registry of tasks: what a job's task name means in this process.

A task is a function registered under a name, with how its jobs run (queue,
retries, timeout, breaker, rate limit). Workers look tasks up by the name
stored in the job; `JobQueue.enqueue` also accepts the function itself.
Each task keeps a checked template job, so a new job of it costs only the
fields that differ (`kernel.jobs.record.derive_record`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs

from kernel.errors import DuplicateTask, InvalidJob, UnknownTask
from kernel.jobs._checks import validate_name
from kernel.jobs.rate import RateLimit, RateWindow
from kernel.jobs.record import JobRecord
from kernel.resilience.breaker import CircuitBreaker
from kernel.resilience.retry import RetryPolicy

__all__ = ["TaskRegistry", "TaskSpec", "positive_seconds"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def positive_seconds(field: str, value: object) -> float | None:
    """``value`` (seconds or a `timedelta`, or None) as positive finite
    seconds, else `InvalidJob` naming ``field``."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidJob(field, value, "must be seconds (a float) or a timedelta")
    if not math.isfinite(value) or value <= 0:
        raise InvalidJob(field, value, "must be a positive, finite number of seconds")
    return float(value)


@attrs.frozen
class TaskSpec:
    """A registered task: the function and how its jobs run."""

    name: str
    func: Callable[..., Any]
    queue: str = "default"
    retry: RetryPolicy | None = None
    timeout: float | None = None
    breaker: CircuitBreaker | None = None
    rate_limit: RateLimit | None = None
    blocking: bool = False
    """Run a sync function in a worker thread (abandoned on timeout or
    cancellation) instead of on the event loop."""


@attrs.define(eq=False)
class _Entry:
    spec: TaskSpec
    template: JobRecord  # a checked job of the task
    window: RateWindow | None  # the task's own rate limit


class TaskRegistry:
    """Tasks by name (and by function), each with its template job and rate
    window."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._names_by_func: dict[int, str] = {}

    def register(
        self,
        name: str,
        func: Callable[..., Any],
        *,
        queue: str = "default",
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
        blocking: bool = False,
    ) -> TaskSpec:
        """`JobQueue.register`: everything is checked before anything changes."""
        validate_name("task", name)
        validate_name("queue", queue)
        if not callable(func):
            raise TypeError(f"register needs a callable, got {func!r}")
        if name in self._entries:
            raise DuplicateTask(name)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breaker must be a CircuitBreaker, got {breaker!r}")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit, got {rate_limit!r}")
        if not isinstance(blocking, bool):
            raise TypeError(f"blocking must be a bool, got {blocking!r}")
        if blocking and inspect.iscoroutinefunction(func):
            raise TypeError(f"blocking=True is for sync functions; {name!r} is async")
        spec = TaskSpec(
            name,
            func,
            queue=queue,
            retry=retry,
            timeout=positive_seconds("timeout", timeout),
            breaker=breaker,
            rate_limit=rate_limit,
            blocking=blocking,
        )
        self._entries[name] = _Entry(
            spec,
            JobRecord(task=name, queue=queue, run_at=_EPOCH, enqueued_at=_EPOCH),
            None if rate_limit is None else RateWindow(rate_limit),
        )
        self._names_by_func[id(func)] = name
        return spec

    def unregister(self, name: str) -> None:
        """Forget task ``name``; unknown names are ignored."""
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._names_by_func.pop(id(entry.spec.func), None)

    def get(self, name: str) -> TaskSpec | None:
        """The task registered as ``name``, if any."""
        entry = self._entries.get(name)
        return None if entry is None else entry.spec

    def spec(self, task: str | Callable[..., Any]) -> TaskSpec:
        """The task of a name or a registered function, else `UnknownTask`."""
        name = task if isinstance(task, str) else self._names_by_func.get(id(task))
        entry = None if name is None else self._entries.get(name)
        if entry is None:
            raise UnknownTask(task if isinstance(task, str) else repr(task), self.names())
        return entry.spec

    def template(self, name: str) -> JobRecord:
        """The checked template job of task ``name`` (registered)."""
        return self._entries[name].template

    def window(self, name: str) -> RateWindow | None:
        """The rate window of task ``name``, if it has a rate limit."""
        entry = self._entries.get(name)
        return None if entry is None else entry.window

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[TaskSpec]:
        return (entry.spec for entry in self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
