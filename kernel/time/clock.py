"""The one source of time.

Monotonic time is ``trio.current_time()``: it never jumps, and trio's
``MockClock`` can drive it, so months of schedules run in milliseconds in
tests. Wall time (what cron and ``At`` speak) is derived from it through one
offset: ``wall = wall_at_zero + monotonic``. The offset is read once from a
wall source (``time.time`` by default) and re-read by `check_jump`; when the
system clock has been stepped, the offset moves and the scheduler re-maps
every wall-clock deadline onto monotonic time.

The scheduler's timer wheel counts integer ticks. `tick_now` and
`tick_deadline` are the only conversions between ticks and trio seconds, so
a timer due at tick ``k`` fires exactly when ``current_time() >= k / TICKS``
and never a tick early or late through rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs
import trio

__all__ = ["TICKS_PER_SECOND", "Clock"]

#: Timer resolution: 1 tick = 1 ms.
TICKS_PER_SECOND = 1000

_ONE_MICROSECOND = timedelta(microseconds=1)
_MICROS_PER_TICK = 1_000_000 // TICKS_PER_SECOND


@attrs.define
class Clock:
    """Monotonic and wall time for one scheduler.

    ``wall_source`` returns POSIX seconds (default ``time.time``); ``None``
    means wall time moves with trio time only, starting at ``start_wall``,
    which is what tests under ``MockClock`` want (see `starting_at`).
    ``jump_tolerance`` is how far the wall source may disagree with the
    derived wall time before it counts as a clock jump.
    """

    wall_source: Callable[[], float] | None = time.time
    start_wall: datetime | None = attrs.field(default=None, kw_only=True)
    jump_tolerance: timedelta = attrs.field(default=timedelta(seconds=1), kw_only=True)
    #: How often (seconds) a scheduler with wall-clock timers re-reads the wall
    #: source while idle, to notice a stepped system clock.
    jump_check_interval: float = attrs.field(default=60.0, kw_only=True)
    _wall_at_zero: datetime | None = attrs.field(default=None, init=False)

    @classmethod
    def starting_at(cls, wall: datetime) -> Clock:
        """A clock whose wall time at its first use is ``wall`` and then moves
        with trio time only: the clock to pair with ``MockClock``."""
        if wall.tzinfo is None:
            raise ValueError(f"starting_at needs an aware datetime, got naive {wall!r}")
        return cls(None, start_wall=wall)

    # -- reading time ---------------------------------------------------------

    def monotonic(self) -> float:
        """Seconds on trio's clock (needs a running trio loop)."""
        return trio.current_time()

    def now(self) -> datetime:
        """The current wall time, aware, in UTC."""
        return self._zero() + timedelta(seconds=trio.current_time())

    def to_monotonic(self, wall: datetime) -> float:
        """The trio time at which ``wall`` (aware) is reached."""
        return (wall - self._zero()) / timedelta(seconds=1)

    def to_wall(self, monotonic: float) -> datetime:
        """The wall time (UTC) of trio time ``monotonic``."""
        return self._zero() + timedelta(seconds=monotonic)

    # -- ticks ----------------------------------------------------------------

    @staticmethod
    def tick_now() -> int:
        """The last tick reached: the largest ``k`` with ``k / TICKS <= now``."""
        now = trio.current_time()
        tick = math.floor(now * TICKS_PER_SECOND)
        if (tick + 1) / TICKS_PER_SECOND <= now:
            tick += 1
        elif tick / TICKS_PER_SECOND > now:
            tick -= 1
        return tick

    @staticmethod
    def tick_deadline(tick: int) -> float:
        """The trio time at which ``tick`` is reached."""
        return tick / TICKS_PER_SECOND

    @staticmethod
    def tick_after(monotonic: float) -> int:
        """The first tick at or after trio time ``monotonic``."""
        tick = math.ceil(monotonic * TICKS_PER_SECOND)
        if (tick - 1) / TICKS_PER_SECOND >= monotonic:
            tick -= 1
        return tick

    def wall_to_tick(self, wall: datetime) -> int:
        """The first tick at or after wall time ``wall``, computed in integer
        microseconds so that wall-clock schedules never drift by rounding."""
        micros = (wall - self._zero()) // _ONE_MICROSECOND
        return -(-micros // _MICROS_PER_TICK)

    # -- clock jumps ----------------------------------------------------------

    def check_jump(self) -> timedelta:
        """Re-read the wall source; if it disagrees with the derived wall time
        by more than ``jump_tolerance``, adopt it and return the jump (positive
        when the clock moved forward). Returns zero otherwise."""
        if self.wall_source is None:
            return timedelta(0)
        derived = self.now()
        actual = datetime.fromtimestamp(self.wall_source(), UTC)
        jump = actual - derived
        if abs(jump) <= self.jump_tolerance:
            return timedelta(0)
        self._wall_at_zero = self._zero() + jump
        return jump

    @property
    def detects_jumps(self) -> bool:
        return self.wall_source is not None

    def _zero(self) -> datetime:
        zero = self._wall_at_zero
        if zero is None:
            mono = timedelta(seconds=trio.current_time())
            if self.start_wall is not None:
                zero = self.start_wall.astimezone(UTC) - mono
            else:
                assert self.wall_source is not None
                zero = datetime.fromtimestamp(self.wall_source(), UTC) - mono
            self._wall_at_zero = zero
        return zero
