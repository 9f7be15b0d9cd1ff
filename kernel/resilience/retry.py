"""The retry policy: whether a failed attempt is tried again, and after how long.

Pure policy, no trio and no sleeping: the queue asks `RetryPolicy.decide`
after each failed attempt and, on `Outcome.RETRY`, waits `RetryPolicy.delay`
on the kernel's timer wheel. Keeping the arithmetic here makes it testable
with plain numbers and a seeded `random.Random`.

The delays are capped exponential backoff with the three jitter modes of
Marc Brooker's "Exponential Backoff And Jitter" (AWS Architecture Blog,
2015): none, *full* (uniform in ``[0, base]``, the default: it spreads a herd
of clients best) and *equal* (half fixed, half random). stamina and tenacity
are the Python prior art for the knobs.

A policy stored with a job names its exception classes by their dotted
names, and reading it back never imports anything (a shared store must not
make a worker execute what it reads): a name whose class this process has
already loaded is matched as that class, any other is kept as text and
matched against the names in a raised error's class hierarchy. A class
renamed in a deploy is then simply not matched, and the job's error is
judged not retryable, with a reason that says so.

Cancellation never spends an attempt. An exception that is not an
`Exception` (``trio.Cancelled``, `KeyboardInterrupt`, `SystemExit`,
`GeneratorExit`) means the attempt was interrupted, not that it failed, so
`decide` answers `Outcome.NOT_A_FAILURE` and the queue runs the same attempt
again later. This module does not import trio to know that.
"""

from __future__ import annotations

import enum
import inspect
import math
import random
import sys
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

import attrs

from kernel.errors import InvalidRetryPolicy

__all__ = [
    "MAX_RETRY_AFTER",
    "Backoff",
    "Decision",
    "Jitter",
    "Outcome",
    "RetryPolicy",
    "retry_after_of",
]

_ONE_SECOND: Final = timedelta(seconds=1)
_ONE_MICROSECOND: Final = timedelta(microseconds=1)

MAX_RETRY_AFTER: Final = timedelta(days=1)
"""The longest wait a ``retry_after`` can impose: a service asking for more
is taken to be wrong (or hostile), not obeyed for a week."""


class Jitter(enum.Enum):
    """How much randomness spreads a delay; the value is what JSON stores."""

    #: Exactly the capped exponential delay: clients that failed together retry together.
    NONE = "none"
    #: Uniform in ``[0, base]``: the least contention, and the shortest average wait.
    FULL = "full"
    #: ``base/2`` plus uniform in ``[0, base/2]``: never much shorter than the base.
    EQUAL = "equal"


class Outcome(enum.Enum):
    """What the queue does with an attempt that raised."""

    #: Try again after `RetryPolicy.delay`; the attempt is spent.
    RETRY = "retry"
    #: Stop: the error is not retryable or no attempt is left (dead letter).
    GIVE_UP = "give-up"
    #: The attempt was interrupted (cancellation, shutdown), not failed: run it
    #: again without spending an attempt and without backoff.
    NOT_A_FAILURE = "not-a-failure"


@attrs.frozen
class Decision:
    """An `Outcome` and the human ``reason`` a job's history shows."""

    outcome: Outcome
    reason: str

    @property
    def retry(self) -> bool:
        return self.outcome is Outcome.RETRY

    @property
    def give_up(self) -> bool:
        return self.outcome is Outcome.GIVE_UP

    @property
    def not_a_failure(self) -> bool:
        return self.outcome is Outcome.NOT_A_FAILURE


# -- validators ------------------------------------------------------------------


def _fail(field: str, value: object, reason: str) -> InvalidRetryPolicy:
    return InvalidRetryPolicy(field, value, reason)


def _check_max_attempts(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(attribute.name, value, "must be an integer (total attempts, first included)")
    if value < 1:
        raise _fail(attribute.name, value, "must be at least 1 (the first attempt counts)")


def _check_duration(
    _instance: object, attribute: attrs.Attribute[timedelta], value: timedelta
) -> None:
    if not isinstance(value, timedelta):
        raise _fail(attribute.name, value, "must be a datetime.timedelta")
    if value < timedelta(0):
        raise _fail(attribute.name, value, "must not be negative")


def _check_factor(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _fail(attribute.name, value, "must be a number")
    if not math.isfinite(value) or value < 1:
        raise _fail(attribute.name, value, "must be a finite number >= 1 (1 is a constant delay)")


def _check_max_delay(
    instance: RetryPolicy, attribute: attrs.Attribute[timedelta], value: timedelta
) -> None:
    _check_duration(instance, attribute, value)
    if value < instance.initial:
        raise _fail(
            attribute.name, value, f"must not be shorter than initial ({instance.initial!r})"
        )


def _to_jitter(value: object) -> Jitter:
    # "full" as well as Jitter.FULL, so config files and JSON can spell it.
    if isinstance(value, Jitter):
        return value
    try:
        return Jitter(value)
    except ValueError:
        choices = ", ".join(repr(j.value) for j in Jitter)
        raise _fail("jitter", value, f"must be one of {choices}") from None


ExceptionMatch = type[BaseException] | str
"""An exception class, or the dotted name of one (read back from a stored
policy whose class this process has not loaded)."""


def _to_exception_types(value: object) -> tuple[ExceptionMatch, ...]:
    # A single class is a one-class tuple, as `except` and `isinstance` accept.
    if isinstance(value, type):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(value)
    return value  # type: ignore[return-value]  # the validator names the problem


def _check_exception_types(
    _instance: object,
    attribute: attrs.Attribute[tuple[ExceptionMatch, ...]],
    value: object,
) -> None:
    if not isinstance(value, tuple):
        raise _fail(attribute.name, value, "must be a tuple of exception classes")
    for item in value:
        if isinstance(item, str):
            _check_dotted(attribute.name, item)
        elif not (isinstance(item, type) and issubclass(item, BaseException)):
            raise _fail(attribute.name, item, "is not an exception class")


# -- the policy --------------------------------------------------------------------


@attrs.frozen
class RetryPolicy:
    """When to try a failed job again and how long to wait first.

    ``max_attempts`` counts every attempt, the first included (1 = never
    retry). The wait after the n-th failure is
    ``min(max_delay, initial * factor ** (n - 1))``, then jittered.
    An error is retried when it is an instance of ``retry_on`` and not of
    ``give_up_on`` (which wins). An exception group is judged by its leaf
    exceptions: retried only if every leaf is retryable, given up on if any
    leaf is in ``give_up_on``. Either may also hold dotted class names
    (what `from_json` keeps for classes this process has not loaded),
    matched against the names of an error's classes.

    An error with a ``retry_after`` attribute (seconds, or a `timedelta`:
    a service's ``Retry-After``) waits at least that long, whatever
    ``max_delay`` says.
    """

    max_attempts: int = attrs.field(default=5, validator=_check_max_attempts)
    initial: timedelta = attrs.field(default=_ONE_SECOND, validator=_check_duration)
    factor: float = attrs.field(default=2.0, validator=_check_factor)
    max_delay: timedelta = attrs.field(default=timedelta(minutes=5), validator=_check_max_delay)
    jitter: Jitter = attrs.field(default=Jitter.FULL, converter=_to_jitter)
    retry_on: tuple[ExceptionMatch, ...] = attrs.field(
        default=(Exception,), converter=_to_exception_types, validator=_check_exception_types
    )
    give_up_on: tuple[ExceptionMatch, ...] = attrs.field(
        default=(), converter=_to_exception_types, validator=_check_exception_types
    )

    # -- backoff -------------------------------------------------------------------

    def base_delay(self, attempt: int) -> timedelta:
        """The capped exponential delay after failure number ``attempt``, before jitter."""
        _check_attempt(attempt)
        initial_us = self.initial // _ONE_MICROSECOND
        max_us = self.max_delay // _ONE_MICROSECOND
        if initial_us == 0:
            return timedelta(0)
        try:
            # Float power overflows (raises) past ~1e308; capped either way.
            raw = initial_us * self.factor ** (attempt - 1)
        except OverflowError:
            raw = math.inf
        base_us = max_us if raw >= max_us else round(raw)
        return timedelta(microseconds=base_us)

    def delay(
        self, attempt: int, rng: random.Random, error: BaseException | None = None
    ) -> timedelta:
        """How long to wait after failure number ``attempt`` (1 = the first try
        failed) before the next attempt, jittered with ``rng``.

        Microsecond resolution; never negative, never above ``max_delay``,
        except that an ``error`` carrying a ``retry_after`` (what a service's
        HTTP ``Retry-After`` asked for, see `retry_after_of`) sets a floor:
        asking again sooner would only be refused again. A seeded ``rng``
        gives the same delays every time.
        """
        base_us = self.base_delay(attempt) // _ONE_MICROSECOND
        if self.jitter is Jitter.NONE:
            delay_us = base_us
        elif self.jitter is Jitter.FULL:
            delay_us = rng.randint(0, base_us)
        else:
            half_us = (base_us + 1) // 2  # rounded up: never below base/2
            delay_us = half_us + rng.randint(0, base_us - half_us)
        floor = None if error is None else retry_after_of(error)
        if floor is not None:
            delay_us = max(delay_us, floor // _ONE_MICROSECOND)
        return timedelta(microseconds=delay_us)

    # -- the decision ----------------------------------------------------------------

    def decide(self, attempt: int, error: BaseException) -> Decision:
        """What to do after attempt number ``attempt`` (1 = the first) raised ``error``.

        Checked in this order: an interruption is `Outcome.NOT_A_FAILURE`
        whatever the policy says; an error in ``give_up_on`` or not in
        ``retry_on`` is given up on; then the attempts are counted. The delay
        is not computed here: ask `delay` for it.
        """
        _check_attempt(attempt)
        if not isinstance(error, Exception):
            # trio.Cancelled, KeyboardInterrupt, SystemExit, GeneratorExit, or a
            # group holding one of them: the attempt was cut short.
            return Decision(Outcome.NOT_A_FAILURE, "cancelled: the attempt is not spent")
        fatal = _first_matching_leaf(error, self.give_up_on)
        if fatal is not None:
            return Decision(
                Outcome.GIVE_UP, f"not retryable: {type(fatal).__name__} (in give_up_on)"
            )
        unexpected = _first_leaf_not_matching(error, self.retry_on)
        if unexpected is not None:
            unloaded = [item for item in self.retry_on if isinstance(item, str)]
            note = (
                f" (retry_on names classes this process does not have: {', '.join(unloaded)})"
                if unloaded
                else ""
            )
            return Decision(Outcome.GIVE_UP, f"not retryable: {type(unexpected).__name__}{note}")
        if attempt >= self.max_attempts:
            return Decision(Outcome.GIVE_UP, f"max attempts ({self.max_attempts}) reached")
        return Decision(
            Outcome.RETRY,
            f"retryable: {type(error).__name__} (attempt {attempt} of {self.max_attempts})",
        )

    # -- storage ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The policy as plain JSON, to be stored with a durable job.

        Durations are seconds (what config files also accept), exception
        classes are dotted names. A class that cannot be found again by its
        name (defined inside a function, made with ``type()``) is refused now
        rather than when the job is read back.
        """
        return {
            "max_attempts": self.max_attempts,
            "initial": self.initial.total_seconds(),
            "factor": self.factor,
            "max_delay": self.max_delay.total_seconds(),
            "jitter": self.jitter.value,
            "retry_on": [_dotted_name("retry_on", cls) for cls in self.retry_on],
            "give_up_on": [_dotted_name("give_up_on", cls) for cls in self.give_up_on],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RetryPolicy:
        """The policy `to_json` wrote. Keys left out take their defaults (so a
        policy stored by an older version still loads); an unknown key, a
        value of the wrong type or a malformed class name raises
        `InvalidRetryPolicy`. Nothing is imported: a class name is matched to
        a class only if this process has loaded it, else kept as a name."""
        if not isinstance(data, Mapping):
            raise _fail("(policy)", data, "must be a JSON object")
        unknown = sorted(set(data) - _JSON_KEYS)
        if unknown:
            raise _fail(str(unknown[0]), data[unknown[0]], "is not a retry policy field")
        kwargs: dict[str, Any] = {}
        if "max_attempts" in data:
            kwargs["max_attempts"] = data["max_attempts"]
        for key in ("initial", "max_delay"):
            if key in data:
                kwargs[key] = _seconds_from_json(key, data[key])
        if "factor" in data:
            kwargs["factor"] = data["factor"]
        if "jitter" in data:
            kwargs["jitter"] = data["jitter"]
        for key in ("retry_on", "give_up_on"):
            if key in data:
                names = data[key]
                if not isinstance(names, list):
                    raise _fail(key, names, "must be a list of dotted class names")
                kwargs[key] = tuple(_loaded_class(key, name) or name for name in names)
        return cls(**kwargs)


_JSON_KEYS: Final = frozenset(attrs.fields_dict(RetryPolicy))


def retry_after_of(error: BaseException) -> timedelta | None:
    """How long ``error`` says to wait before trying again, or None.

    Read from an attribute ``retry_after`` (seconds as a number, or a
    `timedelta`) on the error or, for an exception group, the longest of its
    leaves': what an adapter sets from a service's ``Retry-After`` (RFC 9110
    section 10.2.3), as `kernel.errors.NotificationFailed` does. A value that
    is not a finite, non-negative duration is ignored; one above
    `MAX_RETRY_AFTER` is cut to it.
    """
    if isinstance(error, BaseExceptionGroup):
        found = [retry_after_of(leaf) for leaf in error.exceptions]
        waits = [wait for wait in found if wait is not None]
        return max(waits) if waits else None
    value = getattr(error, "retry_after", None)
    if isinstance(value, timedelta):
        seconds: object = value.total_seconds()
    else:
        seconds = value
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    if seconds >= MAX_RETRY_AFTER.total_seconds():
        return MAX_RETRY_AFTER
    return timedelta(microseconds=round(seconds * 1_000_000))


def _check_attempt(attempt: int) -> None:
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise ValueError(f"attempt must be an integer >= 1 (1 = the first try), got {attempt!r}")


def _matches(error: BaseException, items: tuple[ExceptionMatch, ...]) -> bool:
    """Whether ``error`` is an instance of one of ``items``, classes by
    ``isinstance`` and names against its class hierarchy."""
    for item in items:
        if isinstance(item, str):
            if any(_name_of(cls) == item for cls in type(error).__mro__):
                return True
        elif isinstance(error, item):
            return True
    return False


def _name_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _first_matching_leaf(
    error: BaseException, types: tuple[ExceptionMatch, ...]
) -> BaseException | None:
    if _matches(error, types):
        return error
    if isinstance(error, BaseExceptionGroup):
        for leaf in error.exceptions:
            found = _first_matching_leaf(leaf, types)
            if found is not None:
                return found
    return None


def _first_leaf_not_matching(
    error: BaseException, types: tuple[ExceptionMatch, ...]
) -> BaseException | None:
    if _matches(error, types):
        return None
    if isinstance(error, BaseExceptionGroup):
        for leaf in error.exceptions:
            found = _first_leaf_not_matching(leaf, types)
            if found is not None:
                return found
        return None
    return error


def _seconds_from_json(key: str, value: object) -> timedelta:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _fail(key, value, "must be a number of seconds")
    if not math.isfinite(value):
        raise _fail(key, value, "must be a finite number of seconds")
    try:
        return timedelta(seconds=value)
    except OverflowError:
        raise _fail(key, value, "is too long for a datetime.timedelta") from None


def _dotted_name(field: str, item: ExceptionMatch) -> str:
    if isinstance(item, str):
        return item
    name = _name_of(item)
    try:
        found = _loaded_class(field, name)
    except InvalidRetryPolicy:  # "<locals>" in the name
        found = None
    if found is not item:
        raise _fail(field, item, f"cannot be stored: {name!r} does not name this class")
    return name


def _check_dotted(field: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise _fail(field, name, "must be a dotted class name such as 'builtins.ValueError'")
    parts = name.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise _fail(field, name, "must be a dotted class name such as 'builtins.ValueError'")
    return name


def _loaded_class(field: str, name: object) -> type[BaseException] | None:
    """The exception class ``name`` (``"builtins.ValueError"``,
    ``"package.module.Outer.Error"``) names, if its module is already loaded:
    the longest loaded module prefix, then attributes read statically (no
    import, no module ``__getattr__``, no descriptor runs). None otherwise."""
    parts = _check_dotted(field, name).split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        found: object = module
        try:
            for attribute in parts[split:]:
                found = inspect.getattr_static(found, attribute)
        except AttributeError:
            return None
        if isinstance(found, type) and issubclass(found, BaseException):
            return found
        if isinstance(found, type):
            raise _fail(field, name, "is not an exception class")
        return None
    return None


class Backoff:
    """Exponential waits for a loop whose backend fails (a database
    restarting): ``first`` seconds, doubling up to ``cap``; `reset` after a
    success. No jitter: one loop per process, so no herd to spread."""

    def __init__(self, first: float = 0.1, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self.wait = first

    def next(self) -> float:
        """The wait before the next try."""
        wait, self.wait = self.wait, min(self.wait * 2, self.cap)
        return wait

    def reset(self) -> None:
        self.wait = self.first
