"""Noise control for notifications to people: a dedup window, a rate limit,
and a digest of what the two held back.

A plugin in a crash loop, a flapping health check or a job failing every
minute must not send hundreds of messages to a chat channel. Per notifier,
`NoiseFilter` lets the first of a kind through and holds back:

- **duplicates**: the same alert (same dedup key: topic, plugin, level and
  title) again within ``dedup_window`` of the one delivered; the window
  starts at each delivery, as Alertmanager's ``repeat_interval`` and
  Sentry's issue grouping;
- **the excess over the rate limit**: more than ``rate_limit`` deliveries in
  any ``rate_period`` (a sliding window), whatever they say.

Nothing held back is dropped silently: a `Digest` listing each alert held
back, with its count, is due ``dedup_window`` (or ``rate_period`` when
dedup is off) after the first one held back, and is itself exempt from both
rules. The defaults (`NoiseRules`: 10 minutes, 20 an hour) turn a crash loop
into a handful of messages.

Pure policy: times are plain seconds (trio's clock in the kernel), nothing
here sleeps, so the rules are tested with plain numbers.
"""

from __future__ import annotations

import collections
import math
from datetime import timedelta
from typing import Final

import attrs

from kernel.ports import Level

__all__ = [
    "DEFAULT_NOISE_RULES",
    "NO_NOISE_RULES",
    "Digest",
    "HeldBack",
    "NoiseFilter",
    "NoiseRules",
]

#: Keys remembered before expired windows are swept (bounds the memory a
#: stream of distinct alerts can take).
_SWEEP_AT: Final = 1024


def _non_negative(_instance: object, attribute: attrs.Attribute[timedelta], value: object) -> None:
    if not isinstance(value, timedelta) or value < timedelta(0):
        raise ValueError(f"{attribute.name} must be a duration >= 0, got {value!r}")


def _positive(_instance: object, attribute: attrs.Attribute[timedelta], value: object) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be a positive duration, got {value!r}")


def _count(_instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {value!r}")


@attrs.frozen
class NoiseRules:
    """How much one notifier may say: a zero ``dedup_window`` or
    ``rate_limit`` turns that rule off."""

    dedup_window: timedelta = attrs.field(default=timedelta(minutes=10), validator=_non_negative)
    rate_limit: int = attrs.field(default=20, validator=_count)
    rate_period: timedelta = attrs.field(default=timedelta(hours=1), validator=_positive)

    @property
    def digest_after(self) -> float:
        """Seconds from the first alert held back to the digest."""
        window = self.dedup_window if self.dedup_window else self.rate_period
        return window.total_seconds()


DEFAULT_NOISE_RULES: Final = NoiseRules()
NO_NOISE_RULES: Final = NoiseRules(dedup_window=timedelta(0), rate_limit=0)


@attrs.frozen
class HeldBack:
    """One kind of alert held back since the last digest: how many times,
    when first and last (seconds), and why (``"duplicate"`` or
    ``"rate limit"``, the first reason seen)."""

    title: str
    level: Level
    count: int
    first: float
    last: float
    reason: str


@attrs.frozen
class Digest:
    """What was held back between ``since`` and ``until`` (seconds), each
    kind of alert once, oldest first."""

    held_back: tuple[HeldBack, ...]
    since: float
    until: float

    @property
    def total(self) -> int:
        return sum(entry.count for entry in self.held_back)

    @property
    def level(self) -> Level:
        """The most serious level held back."""
        return max(entry.level for entry in self.held_back)

    @property
    def title(self) -> str:
        noun = "notification" if self.total == 1 else "notifications"
        return f"{self.total} {noun} held back"

    def message(self, rules: NoiseRules) -> str:
        """One line per kind of alert, saying how often and why."""
        lines = []
        for entry in self.held_back:
            if entry.reason == "duplicate":
                why = f"repeated within {_seconds(rules.dedup_window)}"
            else:
                why = f"over the rate limit of {rules.rate_limit} per {_seconds(rules.rate_period)}"
            times = "once" if entry.count == 1 else f"{entry.count} times"
            lines.append(f"- {entry.level.value}: {entry.title} ({times}, {why})")
        span = _seconds(timedelta(seconds=max(0.0, self.until - self.since)))
        return f"Held back in the last {span}:\n" + "\n".join(lines)


def _seconds(value: timedelta) -> str:
    total = value.total_seconds()
    for unit, size in (("h", 3600), ("m", 60)):
        if total >= size and total % size == 0:
            return f"{int(total // size)}{unit}"
    return f"{total:g}s"


@attrs.define
class _Held:
    title: str
    level: Level
    count: int
    first: float
    last: float
    reason: str


class NoiseFilter:
    """The noise rules of one notifier, applied to a stream of alerts."""

    def __init__(self, rules: NoiseRules = DEFAULT_NOISE_RULES) -> None:
        self.rules = rules
        self._window_ends: dict[str, float] = {}
        self._deliveries: collections.deque[float] = collections.deque()
        self._held: dict[str, _Held] = {}
        self._held_since: float | None = None

    def admit(self, key: str, title: str, level: Level, now: float) -> bool:
        """Whether the alert ``key`` (saying ``title`` at ``level``) is to be
        delivered at ``now``; if not, it is counted for the next digest."""
        rules = self.rules
        window = rules.dedup_window.total_seconds()
        if window:
            if len(self._window_ends) >= _SWEEP_AT:
                self._window_ends = {k: end for k, end in self._window_ends.items() if end > now}
            end = self._window_ends.get(key)
            if end is not None and now < end:
                self._hold(key, title, level, now, "duplicate")
                return False
        if rules.rate_limit:
            period = rules.rate_period.total_seconds()
            while self._deliveries and self._deliveries[0] <= now - period:
                self._deliveries.popleft()
            if len(self._deliveries) >= rules.rate_limit:
                self._hold(key, title, level, now, "rate limit")
                return False
            self._deliveries.append(now)
        if window:
            self._window_ends[key] = now + window
        return True

    def _hold(self, key: str, title: str, level: Level, now: float, reason: str) -> None:
        held = self._held.get(key)
        if held is None:
            self._held[key] = _Held(title, level, 1, now, now, reason)
        else:
            held.count += 1
            held.last = now
        if self._held_since is None:
            self._held_since = now

    @property
    def held_back(self) -> int:
        """How many alerts the next digest will list."""
        return sum(held.count for held in self._held.values())

    def next_digest_at(self) -> float:
        """When the next digest is due (``math.inf`` while nothing is held)."""
        if self._held_since is None:
            return math.inf
        return self._held_since + self.rules.digest_after

    def take_digest(self, now: float) -> Digest | None:
        """The digest, if one is due at ``now``; what it lists is forgotten."""
        if self._held_since is None or now < self.next_digest_at():
            return None
        digest = Digest(
            tuple(
                HeldBack(held.title, held.level, held.count, held.first, held.last, held.reason)
                for held in sorted(self._held.values(), key=lambda held: held.first)
            ),
            since=self._held_since,
            until=now,
        )
        self._held.clear()
        self._held_since = None
        return digest
