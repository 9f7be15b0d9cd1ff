"""The hierarchical timer wheel: the kernel's only notion of future time.

A pure data structure over integer ticks (the scheduler uses 1 tick = 1 ms;
the wheel itself is unit-agnostic): no trio, no datetime, no floats. Prior
art: Varghese & Lauck, "Hashed and Hierarchical Timing Wheels" (SOSP 1987);
tokio's time wheel (``tokio/src/runtime/time/wheel/``); the Linux timer
wheel (``kernel/time/timer.c``).

Shape. Level ``k`` has 64 slots, each ``64**k`` ticks wide, so it covers a
window of ``64**(k+1)`` ticks aligned on that size. A timer lives at the
lowest level whose window holds both ``now`` and its deadline, i.e. the level
of the highest 6-bit group in which ``now`` and the deadline differ (tokio's
rule). With the default 8 levels that is ``2**48`` ticks, about 8,900 years
at 1 ms. A deadline beyond the top window waits in an overflow bucket and is
moved into the wheel when time enters its window, so it still fires on time.

Each level keeps an occupied-slot bitmap (a Python int). Every occupied slot
of level ``k`` starts after every occupied slot of the levels below it, so the
earliest occupied slot is the lowest set bit of the lowest non-empty level:
`next_deadline` and `advance` find it with bit arithmetic and never scan
slots or tick through empty time. Advancing over an idle span costs
O(occupied slots), not O(ticks).

Cascading. When `advance` reaches an occupied slot of level ``k > 0``, the
slot is the earliest thing pending (lower levels are empty). If the whole slot
is due, its timers fire at once after a stable sort by deadline; otherwise its
due timers fire (sorted) and the rest move down to the level that the new
``now`` gives them, in their order. A level-0 slot is one tick wide, so its
timers share a deadline and fire in insertion order. Together: timers fire by
deadline, ties in insertion order (a `TimerWheel.reschedule` counts as a
fresh insertion): all pending timers with one deadline always share one slot,
in insertion order. Each timer moves at most once per level, so a driver that
sleeps until `TimerWheel.next_deadline` wakes at most ``levels`` times per
timer, and never late.

Cancellation is O(1) without storing a position in the timer: between calls,
a pending timer always sits in the slot that its deadline and the wheel's
``now`` name (a slot is emptied exactly when ``now`` enters it), so `cancel`
recomputes that slot and deletes the timer from it; moving a timer down never
writes to the timer. A slot is an insertion-ordered ``dict`` of timer ->
value, which makes that delete O(1), keeps memory at the live timers, and lets
a level-0 slot fire with one ``list.extend(slot.values())``.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Generic, TypeVar, final

import attrs

__all__ = ["Timer", "TimerWheel"]

T = TypeVar("T")

#: Slots per level is ``2**SLOT_BITS``.
SLOT_BITS = 6
SLOTS_PER_LEVEL = 1 << SLOT_BITS
_SLOT_MASK = SLOTS_PER_LEVEL - 1

_MISSING = object()

#: `TimerWheel.next_deadline` looks inside a higher-level slot this small.
_SCAN_LIMIT = 8


@final
@attrs.define(eq=False, weakref_slot=False, repr=False)
class Timer(Generic[T]):
    """A handle on one timer in a `TimerWheel`: what `TimerWheel.insert` returns.

    Hashes by identity. Only the wheel creates and moves timers; ``deadline``
    is the tick it fires at (a deadline in the past was clamped to the
    wheel's ``now`` when it was inserted).
    """

    _deadline: int
    _value: T
    _wheel: TimerWheel[T]

    @property
    def deadline(self) -> int:
        """The tick at which this timer fires (or fired, or would have)."""
        return self._deadline

    @property
    def value(self) -> T:
        """What `TimerWheel.advance` returns when this timer fires."""
        return self._value

    @property
    def pending(self) -> bool:
        """Whether the timer is still waiting to fire (not fired, not cancelled)."""
        return self._wheel._holds(self)

    def __repr__(self) -> str:
        state = "pending" if self.pending else "done"
        return f"Timer(deadline={self._deadline}, value={self._value!r}, {state})"


_deadline_of = attrgetter("_deadline")


@final
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.NO_OP)
class TimerWheel(Generic[T]):
    """Timers keyed by integer tick deadlines; see the module docstring.

    ``now`` is the starting tick (non-negative). ``levels`` is how many
    levels of 64 slots the wheel has; ``64**levels`` ticks ahead of ``now``
    is the span the wheel holds directly (the default 8 levels span
    ``2**48`` ticks), anything later waits in the overflow bucket.
    """

    _now: int = attrs.field(
        default=0,
        kw_only=True,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)],
    )
    _levels: int = attrs.field(
        default=8,
        kw_only=True,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)],
    )
    #: ``_slots[level][index]``: timer -> value, in insertion (firing) order.
    _slots: list[list[dict[Timer[T], T]]] = attrs.field(init=False)
    #: Per level, bit ``index`` is set when ``_slots[level][index]`` is non-empty.
    _occupied: list[int] = attrs.field(init=False)
    #: Bit ``level`` is set when ``_occupied[level]`` is non-zero.
    _occupied_levels: int = attrs.field(init=False, default=0)
    #: Timers whose deadline lies beyond the top level's window.
    _overflow: dict[Timer[T], T] = attrs.field(init=False, factory=dict)
    #: A tick <= every overflow deadline (exact after each re-examination,
    #: possibly low after a cancel); None when the overflow is empty.
    _overflow_min: int | None = attrs.field(init=False, default=None)
    _len: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._slots = [[{} for _ in range(SLOTS_PER_LEVEL)] for _ in range(self._levels)]
        self._occupied = [0] * self._levels

    @property
    def now(self) -> int:
        """The tick the wheel has been advanced to."""
        return self._now

    @property
    def levels(self) -> int:
        """How many levels of 64 slots the wheel has."""
        return self._levels

    def __len__(self) -> int:
        """How many timers are pending."""
        return self._len

    def __repr__(self) -> str:
        return f"TimerWheel(now={self._now}, levels={self._levels}, pending={self._len})"

    def insert(self, deadline: int, value: T) -> Timer[T]:
        """Arm a timer that fires ``value`` at tick ``deadline``; O(1).

        A deadline at or before `now` is due at the next `advance`, after
        the timers already due and before anything later.
        """
        now = self._now
        if deadline <= now:
            if not isinstance(deadline, int):
                raise TypeError(f"deadline must be an int tick, got {deadline!r}")
            deadline = now
        # Inlined _place(): insert is the hottest path of the scheduler.
        try:
            level = (((now ^ deadline) | _SLOT_MASK).bit_length() - 1) // SLOT_BITS
        except TypeError:
            raise TypeError(f"deadline must be an int tick, got {deadline!r}") from None
        timer = Timer(deadline, value, self)
        if level < self._levels:
            index = (deadline >> level * SLOT_BITS) & _SLOT_MASK
            slot = self._slots[level][index]
            if not slot:
                self._occupied[level] |= 1 << index
                self._occupied_levels |= 1 << level
            slot[timer] = value
        else:
            self._place(timer, deadline, value, now)
        self._len += 1
        return timer

    def cancel(self, timer: Timer[T]) -> bool:
        """Disarm ``timer``; O(1). False when it was not pending (fired or cancelled)."""
        if timer._wheel is not self:
            raise ValueError(f"{timer!r} belongs to another wheel")
        deadline = timer._deadline
        now = self._now
        if deadline < now:
            return False  # every timer due before now has fired
        level = (((now ^ deadline) | _SLOT_MASK).bit_length() - 1) // SLOT_BITS
        if level >= self._levels:
            overflow = self._overflow
            if overflow.pop(timer, _MISSING) is _MISSING:
                return False
            if not overflow:
                self._overflow_min = None
        else:
            index = (deadline >> level * SLOT_BITS) & _SLOT_MASK
            slot = self._slots[level][index]
            try:
                del slot[timer]
            except KeyError:
                return False
            if not slot:
                bitmap = self._occupied[level] ^ (1 << index)
                self._occupied[level] = bitmap
                if not bitmap:
                    self._occupied_levels ^= 1 << level
        self._len -= 1
        return True

    def reschedule(self, timer: Timer[T], deadline: int) -> None:
        """Move ``timer`` to ``deadline``; O(1). Re-arms a fired or cancelled timer.

        For the tie order the timer counts as freshly inserted.
        """
        if not isinstance(deadline, int):
            raise TypeError(f"deadline must be an int tick, got {deadline!r}")
        self.cancel(timer)
        deadline = max(deadline, self._now)
        timer._deadline = deadline
        self._place(timer, deadline, timer._value, self._now)
        self._len += 1

    def next_deadline(self) -> int | None:
        """A tick at or before the earliest pending deadline; None when empty.

        Exact when the earliest timer sits in level 0 (its deadline is in the
        current 64-tick window), and when the earliest occupied slot of a
        higher level holds at most 8 timers (they are looked at). Otherwise
        it is the start of that slot, or a lower bound of the overflow's
        deadlines: advancing to it cascades the slot (or re-examines the
        overflow), after which `next_deadline` is sharper. Never later than
        the true earliest deadline, so a driver that sleeps until it never
        fires late. O(1): bit arithmetic on the occupied bitmaps.
        """
        occupied_levels = self._occupied_levels
        if occupied_levels & 1:
            bitmap = self._occupied[0]
            return (self._now >> SLOT_BITS << SLOT_BITS) | ((bitmap & -bitmap).bit_length() - 1)
        if not occupied_levels:
            return self._overflow_min
        level = (occupied_levels & -occupied_levels).bit_length() - 1
        bitmap = self._occupied[level]
        index = (bitmap & -bitmap).bit_length() - 1
        slot = self._slots[level][index]
        if len(slot) <= _SCAN_LIMIT:
            return min(timer._deadline for timer in slot)
        shift = level * SLOT_BITS
        window = shift + SLOT_BITS
        return (self._now >> window << window) | (index << shift)

    def advance(self, now: int) -> list[T]:
        """Move time to tick ``now`` and return the values of every timer due by then.

        Values come in deadline order, ties in insertion order. Costs
        O(occupied slots passed + timers fired or moved down), however far
        ``now`` jumps. ``now`` before `now` is a ValueError.
        """
        cur = self._now
        if not isinstance(now, int):
            raise TypeError(f"now must be an int tick, got {now!r}")
        if now < cur:
            raise ValueError(f"cannot advance the wheel backwards from {cur} to {now}")
        self._now = now
        slots = self._slots
        occupied = self._occupied
        if now >> SLOT_BITS == cur >> SLOT_BITS:
            # Fast path: ``now`` stays in the current 64-tick window, where
            # every higher-level slot starts later: only level 0 can be due.
            bitmap = occupied[0]
            due = bitmap & ((2 << (now & _SLOT_MASK)) - 1)
            if not due:
                return []
            bitmap ^= due
            occupied[0] = bitmap
            if not bitmap:
                self._occupied_levels ^= 1
            level_slots = slots[0]
            if due & (due - 1):
                fired: list[T] = []
                while due:
                    low_bit = due & -due
                    index = low_bit.bit_length() - 1
                    fired.extend(level_slots[index].values())
                    level_slots[index] = {}
                    due ^= low_bit
            else:
                index = due.bit_length() - 1
                fired = list(level_slots[index].values())
                level_slots[index] = {}
            self._len -= len(fired)
            return fired

        fired = []
        if not self._len:
            return fired
        extend = fired.extend
        occupied_levels = self._occupied_levels
        while True:
            if not occupied_levels:
                # Only the overflow may hold timers: re-examine it once time
                # reaches the top-level window of its earliest deadline.
                low = self._overflow_min
                if low is None:
                    break
                top = self._levels * SLOT_BITS
                window_start = low >> top << top
                if window_start > now:
                    break
                cur = max(cur, window_start)
                self._occupied_levels = occupied_levels
                self._readmit_overflow(cur)
                occupied_levels = self._occupied_levels
                continue
            level_bit = occupied_levels & -occupied_levels
            level = level_bit.bit_length() - 1
            bitmap = occupied[level]
            level_slots = slots[level]
            if level == 0:
                # Fire the due slots of the current 64-tick window in order.
                if now >> SLOT_BITS == cur >> SLOT_BITS:
                    due = bitmap & ((2 << (now & _SLOT_MASK)) - 1)
                    if not due:
                        break
                else:
                    due = bitmap
                bitmap ^= due
                occupied[0] = bitmap
                if not bitmap:
                    occupied_levels ^= 1
                while due:
                    low_bit = due & -due
                    index = low_bit.bit_length() - 1
                    extend(level_slots[index].values())
                    level_slots[index] = {}
                    due ^= low_bit
                continue
            low_bit = bitmap & -bitmap
            index = low_bit.bit_length() - 1
            shift = level * SLOT_BITS
            window = shift + SLOT_BITS
            start = (cur >> window << window) | (index << shift)
            if start > now:
                break
            cur = start
            bitmap ^= low_bit
            occupied[level] = bitmap
            if not bitmap:
                occupied_levels ^= level_bit
            slot = level_slots[index]
            level_slots[index] = {}
            if start + (1 << shift) - 1 <= now:
                # The whole slot is due and nothing earlier is pending:
                # fire it sorted (stable, so ties keep insertion order).
                if len(slot) == 1:
                    extend(slot.values())
                else:
                    extend(map(slot.__getitem__, sorted(slot, key=_deadline_of)))
                continue
            # The slot straddles ``now``, and nothing else can be due: lower
            # levels are empty, every other slot starts after ``now``. Fire
            # its due timers sorted; move the rest down to the level that
            # ``now`` gives them, keeping their order.
            due_timers: list[Timer[T]] = []
            keep = due_timers.append
            for timer, value in slot.items():
                deadline = timer._deadline
                if deadline <= now:
                    keep(timer)
                    continue
                lower = (((now ^ deadline) | _SLOT_MASK).bit_length() - 1) // SLOT_BITS
                lower_index = (deadline >> lower * SLOT_BITS) & _SLOT_MASK
                lower_slot = slots[lower][lower_index]
                if not lower_slot:
                    occupied[lower] |= 1 << lower_index
                    occupied_levels |= 1 << lower
                lower_slot[timer] = value
            if due_timers:
                due_timers.sort(key=_deadline_of)
                extend(map(slot.__getitem__, due_timers))
            break
        self._occupied_levels = occupied_levels
        self._len -= len(fired)
        return fired

    # -- internals ---------------------------------------------------------

    def _place(self, timer: Timer[T], deadline: int, value: T, now: int) -> None:
        """Put ``timer`` (due at ``deadline >= now``) where ``now`` says it belongs."""
        level = (((now ^ deadline) | _SLOT_MASK).bit_length() - 1) // SLOT_BITS
        if level < self._levels:
            index = (deadline >> level * SLOT_BITS) & _SLOT_MASK
            slot = self._slots[level][index]
            if not slot:
                self._occupied[level] |= 1 << index
                self._occupied_levels |= 1 << level
            slot[timer] = value
        else:
            self._overflow[timer] = value
            if self._overflow_min is None or deadline < self._overflow_min:
                self._overflow_min = deadline

    def _readmit_overflow(self, now: int) -> None:
        """Re-place every overflow timer relative to ``now`` (some fit in the wheel now)."""
        overflow = self._overflow
        self._overflow = {}
        self._overflow_min = None
        for timer, value in overflow.items():
            self._place(timer, timer._deadline, value, now)

    def _holds(self, timer: Timer[T]) -> bool:
        """Whether ``timer`` is pending: it is in the slot its deadline names."""
        deadline = timer._deadline
        now = self._now
        if deadline < now:
            return False
        level = (((now ^ deadline) | _SLOT_MASK).bit_length() - 1) // SLOT_BITS
        if level >= self._levels:
            return timer in self._overflow
        return timer in self._slots[level][(deadline >> level * SLOT_BITS) & _SLOT_MASK]
