"""Triggers: when a schedule fires (`kernel.time.policies`: what happens
when it is late or busy).

A trigger is a pure function of time: ``next_fire_after(t)`` answers the
first fire time strictly after the aware datetime ``t``, or ``None`` when
the trigger is exhausted. Triggers never look at a clock, so every answer is
reproducible and property-testable; the scheduler owns the clock.

Jitter is a property of a trigger but is applied by the scheduler on top of
the exact fire times, so a jittered schedule never drifts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from kernel.time.cron import CronExpression

__all__ = [
    "AllOf",
    "AnyOf",
    "At",
    "Cron",
    "Every",
    "Trigger",
]

_ZERO = timedelta(0)


@runtime_checkable
class Trigger(Protocol):
    """Anything that can say when it fires next."""

    @property
    def jitter(self) -> timedelta:
        """Upper bound of a random delay the scheduler adds to each fire."""
        ...

    def next_fire_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (aware), or None."""
        ...


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (with a tzinfo), got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value < _ZERO:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


def _as_zone(value: str | tzinfo) -> tzinfo:
    if isinstance(value, tzinfo):
        return value
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc


@attrs.frozen(init=False)
class Every:
    """Fire at ``anchor + n * interval`` for n = 1, 2, ...

    Fire times are computed from the anchor, never from the previous fire,
    so a schedule that runs for years does not drift by a microsecond. An
    Every without an anchor is anchored by the scheduler at the moment it is
    added (first fire one interval later); give an ``anchor`` to align fires
    to wall-clock boundaries or to start later.
    """

    interval: timedelta
    anchor: datetime | None
    jitter: timedelta

    def __init__(
        self,
        interval: timedelta | None = None,
        *,
        weeks: float = 0,
        days: float = 0,
        hours: float = 0,
        minutes: float = 0,
        seconds: float = 0,
        milliseconds: float = 0,
        anchor: datetime | None = None,
        jitter: timedelta = _ZERO,
    ) -> None:
        parts = timedelta(
            weeks=weeks,
            days=days,
            hours=hours,
            minutes=minutes,
            seconds=seconds,
            milliseconds=milliseconds,
        )
        if interval is not None and parts:
            raise ValueError("give Every either an interval or keyword units, not both")
        interval = interval if interval is not None else parts
        if interval <= _ZERO:
            raise ValueError(f"Every needs a positive interval, got {interval}")
        if anchor is not None:
            _require_aware("anchor", anchor)
        if jitter < _ZERO:
            raise ValueError(f"jitter must not be negative, got {jitter}")
        self.__attrs_init__(interval, anchor, jitter)

    def anchored(self, anchor: datetime) -> Every:
        """This trigger with ``anchor`` set (kept if already set)."""
        if self.anchor is not None:
            return self
        _require_aware("anchor", anchor)
        return attrs.evolve(self, anchor=anchor)

    def next_fire_after(self, after: datetime) -> datetime | None:
        _require_aware("after", after)
        anchor = self.anchor if self.anchor is not None else datetime(1970, 1, 1, tzinfo=UTC)
        if after < anchor:
            return anchor
        # floor division of timedeltas is exact integer arithmetic on microseconds
        periods = (after - anchor) // self.interval + 1
        return anchor + periods * self.interval


@attrs.frozen(init=False)
class Cron:
    """Fire on a cron expression, read in time zone ``tz`` (default UTC).

    The DST policy is cron's own (see `kernel.time.cron`): a skipped local time
    fires once at the first valid instant after it; a repeated one fires once.
    """

    expression: CronExpression
    tz: tzinfo
    jitter: timedelta

    def __init__(
        self,
        expression: str | CronExpression,
        *,
        tz: str | tzinfo = "UTC",
        jitter: timedelta = _ZERO,
    ) -> None:
        parsed = (
            expression
            if isinstance(expression, CronExpression)
            else CronExpression.parse(expression)
        )
        if jitter < _ZERO:
            raise ValueError(f"jitter must not be negative, got {jitter}")
        self.__attrs_init__(parsed, _as_zone(tz), jitter)

    def next_fire_after(self, after: datetime) -> datetime | None:
        _require_aware("after", after)
        return self.expression.next_after(after, self.tz)


@attrs.frozen
class At:
    """Fire once, at ``when``."""

    when: datetime
    jitter: timedelta = attrs.field(default=_ZERO, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        _require_aware("when", self.when)

    def next_fire_after(self, after: datetime) -> datetime | None:
        _require_aware("after", after)
        return self.when if self.when > after else None


def _at_least_two(
    _: object, attribute: attrs.Attribute[tuple[Trigger, ...]], value: tuple[Trigger, ...]
) -> None:
    if len(value) < 2:
        raise ValueError(f"{attribute.name} needs at least two triggers, got {len(value)}")


@attrs.frozen(init=False)
class AnyOf:
    """Fire whenever any of the triggers fires (the union of their times)."""

    triggers: tuple[Trigger, ...] = attrs.field(validator=_at_least_two)
    jitter: timedelta = attrs.field(default=_ZERO, validator=_non_negative)

    def __init__(self, *triggers: Trigger, jitter: timedelta = _ZERO) -> None:
        self.__attrs_init__(triggers, jitter)

    def next_fire_after(self, after: datetime) -> datetime | None:
        fires = [
            fire
            for fire in (trigger.next_fire_after(after) for trigger in self.triggers)
            if fire is not None
        ]
        return min(fires) if fires else None


@attrs.frozen(init=False)
class AllOf:
    """Fire only when all triggers fire at the same instant (the intersection).

    The search leapfrogs: each round asks every trigger for its next time
    after the latest candidate. ``max_rounds`` bounds the search for
    triggers that never coincide; past it the trigger is exhausted (None).
    """

    triggers: tuple[Trigger, ...] = attrs.field(validator=_at_least_two)
    jitter: timedelta = attrs.field(default=_ZERO, validator=_non_negative)
    max_rounds: int = 10_000

    def __init__(
        self, *triggers: Trigger, jitter: timedelta = _ZERO, max_rounds: int = 10_000
    ) -> None:
        self.__attrs_init__(triggers, jitter, max_rounds)

    def next_fire_after(self, after: datetime) -> datetime | None:
        cursor = after
        for _ in range(self.max_rounds):
            fires = [trigger.next_fire_after(cursor) for trigger in self.triggers]
            if any(fire is None for fire in fires):
                return None
            times = [fire for fire in fires if fire is not None]
            latest = max(times)
            if all(fire == latest for fire in times):
                return latest
            cursor = latest - timedelta(microseconds=1)
        return None
