"""Rate limits: at most ``count`` job starts in any interval of length ``per``.

`RateLimit` is the setting; `RateWindow` the pure arithmetic of one limit:
a sliding log (at most ``count`` starts in any interval of length ``per``),
exact rather than the approximate token bucket, so "10 per minute" means
exactly that. No trio: the caller passes the time.
"""

from __future__ import annotations

from collections import deque
from datetime import timedelta

import attrs

from kernel.errors import InvalidJob

__all__ = ["RateLimit", "RateWindow"]


def _check_count(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidJob("rate_limit.count", value, "must be an int >= 1")


def _check_per(_instance: object, _attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InvalidJob("rate_limit.per", value, "must be a positive timedelta")


@attrs.frozen
class RateLimit:
    """At most ``count`` job starts in any interval of length ``per``."""

    count: int = attrs.field(validator=_check_count)
    per: timedelta = attrs.field(validator=_check_per)


@attrs.define
class RateWindow:
    """The state of one `RateLimit`: a sliding log of start times (seconds on
    any monotonic clock, trio's here). A start at ``t`` occupies a slot during
    ``[t, t + per)``; memory is at most ``count`` floats.

    Pure: no trio, the caller passes ``now``. Times must not go backwards.
    """

    limit: RateLimit
    _starts: deque[float] = attrs.field(factory=deque, init=False)

    def _forget(self, now: float) -> None:
        per = self.limit.per.total_seconds()
        starts = self._starts
        while starts and starts[0] + per <= now:
            starts.popleft()

    def available(self, now: float) -> int:
        """How many starts are allowed at ``now``."""
        self._forget(now)
        return self.limit.count - len(self._starts)

    def next_free(self, now: float) -> float:
        """The earliest time (>= ``now``) at which a start is allowed."""
        if self.available(now) > 0:
            return now
        return self._starts[0] + self.limit.per.total_seconds()

    def acquire(self, now: float) -> bool:
        """Record a start at ``now`` if one is allowed; whether it was."""
        if self.available(now) <= 0:
            return False
        self._starts.append(now)
        return True
