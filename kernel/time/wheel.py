"""The hierarchical timer wheel: the kernel's only notion of future time.

A pure data structure over integer ticks (the scheduler uses 1 tick = 1 ms;
the wheel itself is unit-agnostic): no trio, no datetime, no floats. Prior
art: Varghese & Lauck, "Hashed and Hierarchical Timing Wheels" (SOSP 1987);
tokio's time wheel (``tokio/src/runtime/time/wheel/``); the Linux timer
wheel (``kernel/time/timer.c``); the bitmap-per-node radix tree of the Linux
kernel's IDR and of Judy arrays.

Shape. Level ``k`` has 64 slots, each ``64**k`` ticks wide, so it covers a
window of ``64**(k+1)`` ticks aligned on that size. A timer belongs to the
lowest level whose window holds both ``now`` and its deadline, i.e. the level
of the highest 6-bit group in which ``now`` and the deadline differ (tokio's
rule). With the default 8 levels that is ``2**48`` ticks, about 8,900 years
at 1 ms. Each level keeps an occupied-slot bitmap (a Python int). Every
occupied slot of level ``k`` starts after every occupied slot of the levels
below it, so the earliest occupied slot is the lowest set bit of the lowest
non-empty level, found by bit arithmetic, never by scanning or ticking.

Storage: a radix tree of 64-bit bitmaps over the deadlines; timers stay
where they were put. Timers that share a deadline share a *leaf*: the timer
alone, or an insertion-ordered dict timer -> value when there are several.
A level-1 slot (64 ticks) that time has not entered is
``_level1[deadline >> 6]``: its lone timer (the usual case when deadlines
are sparse: no leaf, no bitmap), or the bitmap of its occupied ticks, their
leaves in ``_leaves[deadline]``. A slot of level ``k >= 2`` that time has
not entered is ``_children[k][deadline >> 6k]``: the bitmap of its occupied
children (level ``k-1`` slots). The slots of the current window of each level are the
bits of that level's occupied bitmap; level 0's are ticks, with their leaves
still in ``_leaves`` or, for a lone timer and later insertions, in the small
``_window`` (`advance` only removes from ``_leaves``, so it never pays for
that dict to grow). A pending deadline is thus a path: a bit of its level's
occupied bitmap, one child bit per level below, its tick.

Cascading costs O(1) per slot, whatever the number of timers beneath. When
`advance` reaches the start of an occupied slot of level ``k > 0`` it is the
earliest thing pending, so every lower level is empty: the slot's bitmap
*becomes* the occupied bitmap of level ``k-1`` (one dict pop; a lone timer's
tick becomes the only bit of level 0), and `advance` goes on into level
``k-1``, entering slots while they start at or before the new ``now``, down
to level 0, whose due ticks fire lowest first, each leaf in insertion order.
No timer is moved or sorted: each is touched when inserted, cancelled or
fired (a lone timer also when a second one joins its level-1 slot, or its
slot is entered). So one `advance` does O(levels per slot entered + timers
fired) work, where a classic cascade re-inserts every timer of the slot it
enters (about 0.3 µs a timer in CPython: 30 ms for 100,000 timers in one
crowded slot, with every due timer late meanwhile). A partially due slot
needs no special case: entering it only exposes its children, of which the
due ones are entered in turn and the rest stay where the new ``now`` puts
them.

Insertion appends to the deadline's leaf when it exists: O(1), and ties fire
in insertion order (a `TimerWheel.reschedule` counts as a fresh insertion),
since all pending timers with one deadline are in one leaf. A new deadline
sets its bit in its level-1 slot; a level-1 slot that was empty is linked
upward: its bit is set in its parent's bitmap, stopping at the first parent
that already held a bit, else at the slot of the timer's level; at most
``levels`` dict updates. That is the price of cheap cascades: a timer with a
deadline of its own costs two or three dict updates where a classic wheel
makes one (bench/wheel.py measures both sides). Cancellation finds the timer
from its deadline (no position is stored in the timer) and, when a leaf or
slot empties, clears bits upward until a bitmap stays non-empty; empty
slots and bitmaps are deleted, so memory follows the pending timers.
`TimerWheel.next_deadline` is exact: the lowest bits name the path from the
earliest slot down to the earliest tick, O(levels).

Overflow: a deadline beyond the top level's window is grouped the same way
one level up: ``_children[levels]`` (``_level1`` with one level) holds a
slot per top-level window number, ``deadline >> 6 * levels``, and a min-heap
holds those numbers (numbers whose slot a cancel emptied are dropped when
seen, so opening a window costs O(log windows)). When time reaches such a
window the wheel is empty, and the window's bitmap becomes the top level's
occupied bitmap: again O(1), however many timers wait there.
"""

from __future__ import annotations

from collections.abc import Mapping
from heapq import heapify, heappop, heappush
from typing import Generic, TypeVar, final

import attrs

__all__ = ["Timer", "TimerWheel"]

T = TypeVar("T")

#: Slots per level is ``2**SLOT_BITS``.
SLOT_BITS = 6
SLOTS_PER_LEVEL = 1 << SLOT_BITS
_SLOT_MASK = SLOTS_PER_LEVEL - 1

_MISSING = object()


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


#: The timers due at one tick: one timer alone (the common case, and the
#: smallest), or timer -> value in insertion (firing) order. Never empty, so
#: always true (``leaves.pop(tick, None) or window.pop(tick)`` relies on it).
_Leaf = Timer[T] | dict[Timer[T], T]


@final
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.NO_OP)
class TimerWheel(Generic[T]):
    """Timers keyed by integer tick deadlines; see the module docstring.

    ``now`` is the starting tick (non-negative). ``levels`` is how many
    levels of 64 slots the wheel has; ``64**levels`` ticks ahead of ``now``
    is the span the wheel holds directly (the default 8 levels span
    ``2**48`` ticks), anything later waits in the overflow.
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
    #: deadline -> its pending timers, for the deadlines of the level-1 slots
    #: that ``_level1`` gives a bitmap; they stay here when time enters their
    #: slot. `advance` only removes from it, so never waits for it to grow.
    _leaves: dict[int, _Leaf[T]] = attrs.field(init=False, factory=dict)
    #: The other leaves of the current 64-tick window (at most 64): a lone
    #: timer whose level-1 slot time entered, and later insertions.
    _window: dict[int, _Leaf[T]] = attrs.field(init=False, factory=dict)
    #: ``_level1[deadline >> 6]``, for each level-1 slot (64 ticks) that time
    #: has not entered and that holds timers: its only timer (kept here, not
    #: in ``_leaves``), or the bitmap of its occupied ticks (their leaves in
    #: ``_leaves``). With one level these slots are the overflow windows.
    _level1: dict[int, int | Timer[T]] = attrs.field(init=False, factory=dict)
    #: ``_children[k][deadline >> 6k]`` (``2 <= k <= levels``): for a level-k
    #: slot that time has not entered, bit ``i`` is set when its child slot
    #: ``i`` of level ``k-1`` holds a timer. Indexes 0 and 1 are unused.
    _children: list[dict[int, int]] = attrs.field(init=False)
    #: Per level, bit ``i`` is set when slot ``i`` of the current window holds a timer.
    _occupied: list[int] = attrs.field(init=False)
    #: Bit ``level`` is set when ``_occupied[level]`` is non-zero.
    _occupied_levels: int = attrs.field(init=False, default=0)
    #: Min-heap of the overflow's window numbers (``deadline >> 6 * levels``),
    #: possibly with stale numbers whose windows a cancel emptied.
    _overflow_windows: list[int] = attrs.field(init=False, factory=list)
    _len: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._children = [{} for _ in range(self._levels + 1)]
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
        try:
            number = deadline >> SLOT_BITS  # also the type check: floats have no >>
        except TypeError:
            raise TypeError(f"deadline must be an int tick, got {deadline!r}") from None
        if deadline < now:
            deadline = now
            number = now >> SLOT_BITS
        timer = Timer(deadline, value, self)
        # Inlined _place(): insert is the hottest path of the scheduler.
        if number != now >> SLOT_BITS:
            slots = self._level1
            slot = slots.setdefault(number, timer)
            if slot is timer:
                # The slot's first timer. Inlined _hook(number, 1), its first
                # step: with sparse deadlines this is the usual case.
                parent = number >> SLOT_BITS
                if parent == now >> 2 * SLOT_BITS or self._levels < 3:
                    self._hook(number, 1)
                else:
                    group = self._children[2]
                    old = group.get(parent, 0)
                    group[parent] = old | (1 << (number & _SLOT_MASK))
                    if not old:
                        self._hook(parent, 2)
            elif isinstance(slot, int):
                leaves = self._leaves
                leaf = leaves.setdefault(deadline, timer)
                if leaf is timer:
                    slots[number] = slot | (1 << (deadline & _SLOT_MASK))
                elif isinstance(leaf, dict):
                    leaf[timer] = value
                else:
                    leaves[deadline] = {leaf: leaf._value, timer: value}
            else:
                self._split(number, slot, timer)
        else:
            self._place_in_window(timer, deadline)
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
        number = deadline >> SLOT_BITS
        if number != now >> SLOT_BITS:
            slots = self._level1
            slot = slots.get(number)
            if slot is timer:
                del slots[number]
                self._len -= 1
                self._unhook(number, 1)
                return True
            if not isinstance(slot, int):
                return False
            emptied = _discard(self._leaves, deadline, timer)
            if emptied is None:
                return False
            self._len -= 1
            if emptied:
                rest = slot ^ (1 << (deadline & _SLOT_MASK))
                if rest:
                    slots[number] = rest
                else:
                    del slots[number]
                    self._unhook(number, 1)
            return True
        emptied = _discard(self._leaves, deadline, timer)
        if emptied is None:
            emptied = _discard(self._window, deadline, timer)
            if emptied is None:
                return False
        self._len -= 1
        if emptied:
            bitmap = self._occupied[0] ^ (1 << (deadline & _SLOT_MASK))
            self._occupied[0] = bitmap
            if not bitmap:
                self._occupied_levels ^= 1
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
        self._place(timer, deadline)
        self._len += 1

    def next_deadline(self) -> int | None:
        """The earliest pending deadline; None when the wheel is empty.

        Exact, so a driver that sleeps until it wakes once per distinct
        deadline and never late. O(levels): the lowest set bit of the lowest
        non-empty level names the earliest slot, and the lowest bit of each
        children bitmap below it the earliest child, down to the tick.
        """
        occupied_levels = self._occupied_levels
        if occupied_levels & 1:
            bitmap = self._occupied[0]
            return (self._now >> SLOT_BITS << SLOT_BITS) | ((bitmap & -bitmap).bit_length() - 1)
        if occupied_levels:
            level = (occupied_levels & -occupied_levels).bit_length() - 1
            bitmap = self._occupied[level]
            index = (bitmap & -bitmap).bit_length() - 1
            number = (self._now >> (level + 1) * SLOT_BITS << SLOT_BITS) | index
        else:
            overflow = self._earliest_overflow_window()
            if overflow is None:
                return None
            level, number = self._levels, overflow
        children = self._children
        while level > 1:
            bitmap = children[level][number]
            number = (number << SLOT_BITS) | ((bitmap & -bitmap).bit_length() - 1)
            level -= 1
        slot = self._level1[number]
        if isinstance(slot, int):
            return (number << SLOT_BITS) | ((slot & -slot).bit_length() - 1)
        return slot._deadline

    def advance(self, now: int) -> list[T]:
        """Move time to tick ``now`` and return the values of every timer due by then.

        Values come in deadline order, ties in insertion order. Costs
        O(levels per occupied slot entered + timers fired), however far
        ``now`` jumps and however many timers wait in the slots it enters.
        ``now`` before `now` is a ValueError.
        """
        cur = self._now
        try:
            now_window = now >> SLOT_BITS  # also the type check: floats have no >>
        except TypeError:
            raise TypeError(f"now must be an int tick, got {now!r}") from None
        if now < cur:
            raise ValueError(f"cannot advance the wheel backwards from {cur} to {now}")
        self._now = now
        occupied = self._occupied
        window = self._window
        pop_leaf = self._leaves.pop
        pop_window_leaf = window.pop
        fired: list[T]
        if now_window == cur >> SLOT_BITS:
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
            base = now_window << SLOT_BITS
            if due & (due - 1):
                fired = []
                extend = fired.extend
                append = fired.append
                while due:
                    low_bit = due & -due
                    deadline = base | (low_bit.bit_length() - 1)
                    leaf = pop_leaf(deadline, None) or pop_window_leaf(deadline)
                    if isinstance(leaf, dict):
                        extend(leaf.values())
                    else:
                        append(leaf._value)
                    due ^= low_bit
                self._len -= len(fired)
                return fired
            # One due tick: what a driver that sleeps until next_deadline sees.
            deadline = base | (due.bit_length() - 1)
            leaf = pop_leaf(deadline, None) or pop_window_leaf(deadline)
            if isinstance(leaf, dict):
                fired = list(leaf.values())
                self._len -= len(fired)
                return fired
            self._len -= 1
            return [leaf._value]

        fired = []
        if not self._len:
            return fired
        extend = fired.extend
        append = fired.append
        children = self._children
        occupied_levels = self._occupied_levels
        while True:
            if occupied_levels:
                level_bit = occupied_levels & -occupied_levels
                level = level_bit.bit_length() - 1
                bitmap = occupied[level]
                if level == 0:
                    # Fire the due leaves of the 64-tick window of ``cur`` in order.
                    in_now_window = now_window == cur >> SLOT_BITS
                    due = bitmap & ((2 << (now & _SLOT_MASK)) - 1) if in_now_window else bitmap
                    bitmap ^= due
                    occupied[0] = bitmap
                    if not bitmap:
                        occupied_levels ^= 1
                    base = cur >> SLOT_BITS << SLOT_BITS
                    while due:
                        low_bit = due & -due
                        deadline = base | (low_bit.bit_length() - 1)
                        leaf = pop_leaf(deadline, None) or pop_window_leaf(deadline)
                        if isinstance(leaf, dict):
                            extend(leaf.values())
                        else:
                            append(leaf._value)
                        due ^= low_bit
                    if in_now_window:
                        break  # every slot left starts after the window of ``now``
                    continue
                # The earliest slot of the lowest non-empty level: enter it
                # if time has reached it (every lower level is empty).
                low_bit = bitmap & -bitmap
                shift = level * SLOT_BITS
                span = shift + SLOT_BITS
                start = (cur >> span << span) | ((low_bit.bit_length() - 1) << shift)
                if start > now:
                    break
                bitmap ^= low_bit
                occupied[level] = bitmap
                if not bitmap:
                    occupied_levels ^= level_bit
            else:
                # Only the overflow may hold timers: enter its earliest window
                # once time reaches it (the whole wheel is empty by now).
                number = self._earliest_overflow_window()
                if number is None:
                    break
                level = self._levels
                shift = level * SLOT_BITS
                start = number << shift
                if start > now:
                    break
                heappop(self._overflow_windows)
            cur = start
            if level > 1:
                # The slot's children bitmap becomes the occupied bitmap of
                # the level below: O(1), however many timers wait beneath.
                occupied[level - 1] = children[level].pop(start >> shift)
                occupied_levels |= 1 << (level - 1)
                continue
            # A level-1 slot: its ticks become the current window's (their
            # leaves stay in _leaves; a lone timer goes to the window).
            slot = self._level1.pop(start >> SLOT_BITS)
            if isinstance(slot, int):
                occupied[0] = slot
            else:
                window[slot._deadline] = slot
                occupied[0] = 1 << (slot._deadline & _SLOT_MASK)
            occupied_levels |= 1
        self._occupied_levels = occupied_levels
        self._len -= len(fired)
        return fired

    # -- internals ---------------------------------------------------------

    def _place(self, timer: Timer[T], deadline: int) -> None:
        """Put ``timer`` (due at ``deadline >= now``) where ``now`` says it belongs."""
        number = deadline >> SLOT_BITS
        if number == self._now >> SLOT_BITS:
            self._place_in_window(timer, deadline)
            return
        slots = self._level1
        slot = slots.setdefault(number, timer)
        if slot is timer:
            self._hook(number, 1)
        elif isinstance(slot, int):
            if _add(self._leaves, deadline, timer):
                slots[number] = slot | (1 << (deadline & _SLOT_MASK))
        else:
            self._split(number, slot, timer)

    def _place_in_window(self, timer: Timer[T], deadline: int) -> None:
        """Put ``timer`` into the leaf of ``deadline`` in the current window."""
        leaves = self._leaves
        if deadline in leaves:
            _add(leaves, deadline, timer)  # not new: never grows _leaves
        elif _add(self._window, deadline, timer):
            self._occupied[0] |= 1 << (deadline & _SLOT_MASK)
            self._occupied_levels |= 1

    def _split(self, number: int, first: Timer[T], timer: Timer[T]) -> None:
        """Level-1 slot ``number`` gets its second timer: from a lone timer
        to a bitmap of ticks, the two timers into ``_leaves``."""
        leaves = self._leaves
        one, two = first._deadline, timer._deadline
        if one == two:
            leaves[one] = {first: first._value, timer: timer._value}
        else:
            leaves[one] = first
            leaves[two] = timer
        self._level1[number] = (1 << (one & _SLOT_MASK)) | (1 << (two & _SLOT_MASK))

    def _hook(self, number: int, level: int) -> None:
        """Hook slot ``number`` of ``level`` (>= 1), just made non-empty, into the tree.

        If it is a slot of the current window of its level, its occupied bit
        is set; otherwise its bit is set in its parent's children bitmap, and
        when that parent was empty too, the parent is hooked in turn; a slot
        of the top level's parent is an overflow window.
        """
        now = self._now
        levels = self._levels
        children = self._children
        while level < levels:
            if number >> SLOT_BITS == now >> (level + 1) * SLOT_BITS:
                self._occupied[level] |= 1 << (number & _SLOT_MASK)
                self._occupied_levels |= 1 << level
                return
            bit = 1 << (number & _SLOT_MASK)
            number >>= SLOT_BITS
            level += 1
            group = children[level]
            old = group.get(number, 0)
            group[number] = old | bit
            if old:
                return
        windows = self._overflow_windows
        heappush(windows, number)
        live = self._windows()
        if len(windows) > 2 * len(live) + 16:
            # Cancels left stale numbers behind: keep the heap to the live ones.
            windows[:] = live
            heapify(windows)

    def _unhook(self, number: int, level: int) -> None:
        """Unhook slot ``number`` of ``level`` (>= 1), just emptied: the reverse of `_hook`.

        An emptied overflow window stays in the heap until it is seen.
        """
        now = self._now
        levels = self._levels
        children = self._children
        while level < levels:
            if number >> SLOT_BITS == now >> (level + 1) * SLOT_BITS:
                bitmap = self._occupied[level] ^ (1 << (number & _SLOT_MASK))
                self._occupied[level] = bitmap
                if not bitmap:
                    self._occupied_levels ^= 1 << level
                return
            bit = 1 << (number & _SLOT_MASK)
            number >>= SLOT_BITS
            level += 1
            group = children[level]
            rest = group[number] ^ bit
            if rest:
                group[number] = rest
                return
            del group[number]

    def _windows(self) -> Mapping[int, object]:
        """The overflow windows that hold timers, by number."""
        return self._level1 if self._levels == 1 else self._children[self._levels]

    def _earliest_overflow_window(self) -> int | None:
        """The earliest overflow window number, dropping stale ones; None when empty."""
        windows = self._overflow_windows
        live = self._windows()
        while windows and windows[0] not in live:
            heappop(windows)
        return windows[0] if windows else None

    def _holds(self, timer: Timer[T]) -> bool:
        """Whether ``timer`` is pending: it is where its deadline says."""
        deadline = timer._deadline
        now = self._now
        if deadline < now:
            return False  # every timer due before now has fired
        number = deadline >> SLOT_BITS
        if number == now >> SLOT_BITS:
            leaf = self._leaves.get(deadline) or self._window.get(deadline)
        else:
            slot = self._level1.get(number)
            if not isinstance(slot, int):
                return slot is timer
            leaf = self._leaves.get(deadline)
        return leaf is timer or (isinstance(leaf, dict) and timer in leaf)


def _add(leaves: dict[int, _Leaf[T]], deadline: int, timer: Timer[T]) -> bool:
    """Append ``timer`` to the leaf of ``deadline``; True when that leaf is new."""
    leaf = leaves.setdefault(deadline, timer)
    if leaf is timer:
        return True
    if isinstance(leaf, dict):
        leaf[timer] = timer._value
    else:
        leaves[deadline] = {leaf: leaf._value, timer: timer._value}
    return False


def _discard(leaves: dict[int, _Leaf[T]], deadline: int, timer: Timer[T]) -> bool | None:
    """Remove ``timer`` from the leaf of ``deadline``: None when it is not
    there, else whether the leaf emptied (and was deleted)."""
    leaf = leaves.get(deadline)
    if leaf is timer:
        del leaves[deadline]
        return True
    if not isinstance(leaf, dict) or leaf.pop(timer, _MISSING) is _MISSING:
        return None
    if leaf:
        return False
    del leaves[deadline]
    return True
