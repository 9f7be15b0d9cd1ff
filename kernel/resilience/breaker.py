"""A circuit breaker: stop calling a dependency that keeps failing, and probe
it now and then to notice when it is back.

Three states, after Michael Nygard's *Release It!* and Martin Fowler's
CircuitBreaker article; the knobs are resilience4j's:

- **closed**: calls go through; their outcomes fill a sliding window. When,
  within the window, at least ``minimum_calls`` calls were recorded and at
  least ``failure_rate`` of them failed, the breaker opens.
- **open**: every call is rejected at once (`CircuitOpen`) for ``open_for``.
- **half-open**: up to ``half_open_probes`` calls are let through as probes.
  When that many have succeeded the breaker closes with an empty window; the
  first failure opens it again for another ``open_for``.

The window is *by time* (the last ``window``, 60 s by default), not by count.
A count window never forgets: at a dependency called twice an hour, the
failures of yesterday would still be half of a 10-call window today. A time
window forgets at the pace of the clock, and ``minimum_calls`` keeps a quiet
period (one failure out of one call) from opening the breaker. Like
resilience4j's time-based window (and Hystrix's rolling buckets) it counts
per bucket, ``window / buckets`` wide, so memory stays constant at any call
rate: a call counts for at least ``window`` and less than ``window + window /
buckets``.

The breaker is plumbing-free state: it never sleeps and never starts a task.
Time comes from the ``clock`` callable; the open -> half-open transition
happens when the breaker is next looked at (`state`, `allow`), which is when
it matters. Not thread-safe: use one breaker from one trio run, or from sync
code outside trio.
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, overload

import attrs
import trio

from kernel.errors import CircuitOpen, InvalidCircuitBreaker

__all__ = ["BreakerState", "CircuitBreaker"]

logger = logging.getLogger("kernel.breaker")

P = ParamSpec("P")
T = TypeVar("T")

_ONE_SECOND: Final = timedelta(seconds=1)


class BreakerState(enum.Enum):
    """The three states; the values are what metrics and JSON show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class _DefaultClock:
    """``trio.current_time`` if the breaker is first used inside trio, else
    ``time.monotonic``; chosen once per breaker, because the two clocks are
    not comparable and a breaker must not mix them. A breaker created at
    import time and used in trio therefore follows trio's clock (and a
    ``MockClock`` in tests)."""

    def __init__(self) -> None:
        self._source: Callable[[], float] | None = None

    def __call__(self) -> float:
        if self._source is None:
            try:
                trio.current_time()
            except RuntimeError:  # no trio run in this thread
                self._source = time.monotonic
            else:
                self._source = trio.current_time
        return self._source()

    def __repr__(self) -> str:
        source = "undecided" if self._source is None else self._source.__name__
        return f"<default clock: {source}>"


# -- validators --------------------------------------------------------------------


def _reject(instance: Any, field: str, value: object, reason: str) -> InvalidCircuitBreaker:
    return InvalidCircuitBreaker(getattr(instance, "name", "?"), field, value, reason)


def _check_name(instance: Any, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise _reject(instance, attribute.name, value, "must be a non-empty string")


def _check_positive_int(instance: Any, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _reject(instance, attribute.name, value, "must be an integer >= 1")


def _check_failure_rate(instance: Any, attribute: attrs.Attribute[float], value: object) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 < value <= 1
    ):
        raise _reject(
            instance, attribute.name, value, "must be a fraction in (0, 1], e.g. 0.5 for 50 %"
        )


def _check_positive_duration(
    instance: Any, attribute: attrs.Attribute[timedelta], value: object
) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise _reject(instance, attribute.name, value, "must be a positive datetime.timedelta")


def _to_exception_types(value: object) -> object:
    if isinstance(value, type):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


def _check_exception_types(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(
        isinstance(item, type) and issubclass(item, BaseException) for item in value
    ):
        raise _reject(instance, attribute.name, value, "must be a tuple of exception classes")


def _check_callable(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if not callable(value):
        raise _reject(instance, attribute.name, value, "must be callable")


def _check_optional_callable(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise _reject(instance, attribute.name, value, "must be callable or None")


# -- the breaker -------------------------------------------------------------------


@attrs.define(eq=False)
class CircuitBreaker:
    """A circuit breaker around one dependency, named for messages and metrics.

    Use it as ``async with breaker:`` (or ``with breaker:``, or ``@breaker``
    on a function): a rejected call raises `CircuitOpen` before the body
    runs; the body's outcome is recorded when it ends. An exception in
    ``failure_on`` (default: any `Exception`) is a failure, any other
    `Exception` is a success (the dependency answered; the caller did not
    like the answer), and an exception that is not an `Exception` (trio's
    ``Cancelled``, `KeyboardInterrupt`) is not recorded at all: the call was
    interrupted, so it tells nothing about the dependency.

    The same protocol by hand: `allow` asks for permission (and takes a probe
    permit when half-open), then exactly one of `record_success`,
    `record_failure` or `release` reports how the permitted call ended.

    ``on_transition(name, old, new)`` is called synchronously on every state
    change (a raising observer is logged, not propagated). The counters
    ``calls`` (outcomes recorded), ``failures``, ``rejections`` and
    ``transitions`` only ever grow.
    """

    name: str = attrs.field(validator=_check_name)
    failure_rate: float = attrs.field(default=0.5, kw_only=True, validator=_check_failure_rate)
    minimum_calls: int = attrs.field(default=10, kw_only=True, validator=_check_positive_int)
    window: timedelta = attrs.field(
        default=timedelta(seconds=60), kw_only=True, validator=_check_positive_duration
    )
    buckets: int = attrs.field(default=60, kw_only=True, validator=_check_positive_int)
    open_for: timedelta = attrs.field(
        default=timedelta(seconds=30), kw_only=True, validator=_check_positive_duration
    )
    half_open_probes: int = attrs.field(default=3, kw_only=True, validator=_check_positive_int)
    failure_on: tuple[type[BaseException], ...] = attrs.field(
        default=(Exception,),
        kw_only=True,
        converter=_to_exception_types,
        validator=_check_exception_types,
    )
    clock: Callable[[], float] = attrs.field(
        factory=_DefaultClock, kw_only=True, validator=_check_callable
    )
    on_transition: Callable[[str, BreakerState, BreakerState], None] | None = attrs.field(
        default=None, kw_only=True, validator=_check_optional_callable
    )

    calls: int = attrs.field(default=0, init=False)
    failures: int = attrs.field(default=0, init=False)
    rejections: int = attrs.field(default=0, init=False)
    transitions: int = attrs.field(default=0, init=False)

    _state: BreakerState = attrs.field(default=BreakerState.CLOSED, init=False)
    #: When the breaker last opened (clock seconds).
    _opened_at: float = attrs.field(default=0.0, init=False)
    #: The closed-state window: [bucket index, calls, failures], oldest first.
    _buckets: deque[list[int]] = attrs.field(factory=deque, init=False, repr=False)
    _window_calls: int = attrs.field(default=0, init=False)
    _window_failures: int = attrs.field(default=0, init=False)
    #: Half-open: permits handed out (and not released), successes seen.
    _probes_admitted: int = attrs.field(default=0, init=False)
    _probes_succeeded: int = attrs.field(default=0, init=False)

    # -- reading -----------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose ``open_for`` has passed
        becomes half-open here."""
        if self._state is BreakerState.OPEN and self._now() >= self._half_opens_at():
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        """Seconds until the breaker half-opens; 0 when it is not open."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._half_opens_at() - self._now())

    @property
    def window_calls(self) -> int:
        """Calls recorded in the current window (closed state only)."""
        self._slide(self._now())
        return self._window_calls

    @property
    def window_failures(self) -> int:
        """Failures recorded in the current window (closed state only)."""
        self._slide(self._now())
        return self._window_failures

    # -- the protocol ------------------------------------------------------------

    def allow(self) -> bool:
        """May a call go through now? Never raises.

        True when closed, and for each of the ``half_open_probes`` probe
        permits when half-open; the caller must then report the call's end
        with `record_success`, `record_failure` or `release`. False (counted
        in ``rejections``) when open or when every probe permit is taken.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes_admitted < self.half_open_probes:
            self._probes_admitted += 1
            return True
        self.rejections += 1
        return False

    def record_success(self) -> None:
        """A permitted call succeeded."""
        self.calls += 1
        state = self.state
        if state is BreakerState.CLOSED:
            self._add_to_window(failed=False)
        elif state is BreakerState.HALF_OPEN:
            self._probes_succeeded += 1
            if self._probes_succeeded >= self.half_open_probes:
                self._transition(BreakerState.CLOSED)
        # OPEN: a call let in before the breaker opened; it changes nothing.

    def record_failure(self) -> None:
        """A permitted call failed."""
        self.calls += 1
        self.failures += 1
        state = self.state
        if state is BreakerState.CLOSED:
            self._add_to_window(failed=True)
        elif state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.OPEN)

    def release(self) -> None:
        """A permitted call ended without telling anything about the
        dependency (it was cancelled): give its probe permit back."""
        if self._state is BreakerState.HALF_OPEN and self._probes_admitted > 0:
            self._probes_admitted -= 1

    def reset(self) -> None:
        """Close the breaker now with an empty window (an operator's override)."""
        if self._state is BreakerState.CLOSED:
            self._clear_window()
        else:
            self._transition(BreakerState.CLOSED)

    def is_failure(self, error: BaseException) -> bool | None:
        """How the context manager counts ``error``: True (a failure), False
        (a success: the dependency answered) or None (not counted: an
        interruption). An exception group is a failure if any of its leaves
        is in ``failure_on``."""
        if not isinstance(error, Exception):
            return None
        if isinstance(error, self.failure_on):
            return True
        if isinstance(error, BaseExceptionGroup):
            matched, _rest = error.split(self.failure_on)
            return matched is not None
        return False

    # -- context managers and decorator -----------------------------------------------

    def _enter(self) -> None:
        if not self.allow():
            state = self._state
            raise CircuitOpen(self.name, self.retry_after(), state=state.value)

    def _exit(self, error: BaseException | None) -> None:
        verdict = False if error is None else self.is_failure(error)
        if verdict is None:
            self.release()
        elif verdict:
            self.record_failure()
        else:
            self.record_success()

    async def __aenter__(self) -> CircuitBreaker:
        self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    def __enter__(self) -> CircuitBreaker:
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    @overload
    def __call__(
        self, function: Callable[P, Awaitable[T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, function: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, function: Callable[P, Any]) -> Callable[P, Any]:
        """``@breaker``: every call of the (async or sync) function goes
        through the breaker, as pybreaker's decorator does."""
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def guarded_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with self:
                    return await function(*args, **kwargs)

            return guarded_async

        @functools.wraps(function)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            with self:
                return function(*args, **kwargs)

        return guarded

    # -- internals -------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock()

    def _half_opens_at(self) -> float:
        return self._opened_at + self.open_for / _ONE_SECOND

    def _bucket_width(self) -> float:
        return self.window / _ONE_SECOND / self.buckets

    def _slide(self, now: float) -> None:
        # Bucket k holds calls made in [k*w, (k+1)*w); it is dropped once its
        # newest possible call is older than the window: k + buckets < now // w.
        current = math.floor(now / self._bucket_width())
        buckets = self._buckets
        while buckets and buckets[0][0] + self.buckets < current:
            _index, calls, failures = buckets.popleft()
            self._window_calls -= calls
            self._window_failures -= failures

    def _add_to_window(self, *, failed: bool) -> None:
        now = self._now()
        self._slide(now)
        index = math.floor(now / self._bucket_width())
        buckets = self._buckets
        if buckets and buckets[-1][0] >= index:  # same bucket (or a clock that went back)
            bucket = buckets[-1]
        else:
            bucket = [index, 0, 0]
            buckets.append(bucket)
        bucket[1] += 1
        self._window_calls += 1
        if failed:
            bucket[2] += 1
            self._window_failures += 1
        if (
            self._window_calls >= self.minimum_calls
            and self._window_failures / self._window_calls >= self.failure_rate
        ):
            self._transition(BreakerState.OPEN)

    def _clear_window(self) -> None:
        self._buckets.clear()
        self._window_calls = 0
        self._window_failures = 0

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self.transitions += 1
        self._clear_window()
        self._probes_admitted = 0
        self._probes_succeeded = 0
        if new is BreakerState.OPEN:
            self._opened_at = self._now()
        if self.on_transition is not None:
            try:
                self.on_transition(self.name, old, new)
            except Exception:
                logger.exception(
                    "circuit breaker %r: on_transition raised on %s -> %s",
                    self.name,
                    old.value,
                    new.value,
                )
