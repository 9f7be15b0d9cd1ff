"""Tests of the hierarchical timer wheel against a sorted-list model."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from kernel.time.wheel import Timer, TimerWheel

MS_PER_YEAR = 365 * 24 * 3600 * 1000

# -- the model -----------------------------------------------------------------

# A deadline is drawn as a recipe relative to the wheel's current tick, so the
# interesting places (now itself, the past, slot boundaries of every level,
# years ahead, beyond the wheel's span) stay reachable however far time moved.
near = st.tuples(st.just("rel"), st.integers(-70, 140))
spread = st.tuples(st.just("rel"), st.integers(-5_000, 3_000_000))
boundary = st.tuples(st.just("boundary"), st.integers(0, 9), st.integers(0, 3), st.integers(-1, 1))
far = st.tuples(
    st.just("rel"),
    st.sampled_from([MS_PER_YEAR, 10 * MS_PER_YEAR, 2**36, 2**47, 2**48, 2**60]),
)
# Next to a pending deadline: ties, crowded slots, advances that stop inside
# an occupied slot of a higher level.
beside = st.tuples(st.just("beside"), st.integers(0, 10**6), st.integers(-65, 65))
deadline_recipes = st.one_of(near, spread, boundary, boundary, far, beside, beside)


def resolve(now: int, recipe: tuple[Any, ...], pending: list[int]) -> int:
    """The deadline a recipe names at tick ``now`` with ``pending`` deadlines."""
    kind, *numbers = recipe
    if kind == "rel":
        return now + int(numbers[0])
    if kind == "beside":
        pick, offset = map(int, numbers)
        return (pending[pick % len(pending)] if pending else now) + offset
    k, m, e = map(int, numbers)
    size = 1 << (6 * k)
    return (now // size + m) * size + e


class WheelMachine(RuleBasedStateMachine):
    """Random insert / cancel / reschedule / advance against a sorted list.

    The model clamps a deadline to ``now`` at insertion and fires by
    ``(deadline, insertion sequence)``; a reschedule takes a fresh sequence.
    """

    timers = Bundle("timers")

    def __init__(self) -> None:
        super().__init__()
        self.wheel: TimerWheel[int] = TimerWheel()
        self.now = 0
        #: value -> (effective deadline, sequence) of pending timers
        self.pending: dict[int, tuple[int, int]] = {}
        self.handles: list[Timer[int]] = []
        self.seq = 0

    @initialize(
        levels=st.sampled_from([1, 2, 3, 8]),
        start=st.sampled_from([0, 1, 63, 4095, 64**3 - 2, 12_345_678, 2**40 + 17]),
    )
    def start(self, levels: int, start: int) -> None:
        self.wheel = TimerWheel(now=start, levels=levels)
        self.now = start

    def _arm(self, value: int, deadline: int) -> None:
        self.pending[value] = (max(deadline, self.now), self.seq)
        self.seq += 1

    def _resolve(self, recipe: tuple[Any, ...]) -> int:
        return resolve(self.now, recipe, sorted(key[0] for key in self.pending.values()))

    def _insert(self, deadline: int) -> Timer[int]:
        value = len(self.handles)
        timer = self.wheel.insert(deadline, value)
        assert timer.deadline == max(deadline, self.now)
        assert timer.value == value
        self.handles.append(timer)
        self._arm(value, deadline)
        return timer

    @rule(target=timers, recipe=deadline_recipes)
    def insert(self, recipe: tuple[Any, ...]) -> Timer[int]:
        return self._insert(self._resolve(recipe))

    @rule(
        target=timers,
        recipe=deadline_recipes,
        count=st.integers(2, 20),
        step=st.sampled_from([0, 1, 3, 64, 1000]),
    )
    def insert_burst(self, recipe: tuple[Any, ...], count: int, step: int) -> Any:
        """Several timers in one slot or a run of slots (past next_deadline's peek)."""
        start = self._resolve(recipe)
        return multiple(*(self._insert(start + i * step) for i in range(count)))

    @rule(timer=timers)
    def cancel(self, timer: Timer[int]) -> None:
        was_pending = timer.value in self.pending
        assert self.wheel.cancel(timer) is was_pending
        self.pending.pop(timer.value, None)

    @rule(timer=timers, recipe=deadline_recipes)
    def reschedule(self, timer: Timer[int], recipe: tuple[Any, ...]) -> None:
        deadline = self._resolve(recipe)
        self.wheel.reschedule(timer, deadline)
        self._arm(timer.value, deadline)
        assert timer.deadline == max(deadline, self.now)

    def _advance(self, target: int) -> None:
        leaves_before = set(self.wheel._leaves)
        fired = self.wheel.advance(target)
        # advance only removes from the big dict of leaves: never pays to grow it
        assert set(self.wheel._leaves) <= leaves_before
        due = sorted((key, value) for value, key in self.pending.items() if key[0] <= target)
        assert fired == [value for _, value in due]
        for _, value in due:
            del self.pending[value]
        self.now = target

    @rule(recipe=deadline_recipes)
    def advance(self, recipe: tuple[Any, ...]) -> None:
        self._advance(max(self.now, self._resolve(recipe)))

    @precondition(lambda self: self.pending)
    @rule()
    def advance_to_next_deadline(self) -> None:
        """What the scheduler does: sleep until next_deadline(), then advance."""
        deadline = self.wheel.next_deadline()
        assert deadline is not None
        self._advance(deadline)

    @precondition(lambda self: self.now > 0)
    @rule(back=st.integers(1, 2**50))
    def advance_backwards_is_refused(self, back: int) -> None:
        with pytest.raises(ValueError, match="backwards"):
            self.wheel.advance(max(0, self.now - back))
        assert self.wheel.now == self.now

    @invariant()
    def same_count_and_time(self) -> None:
        assert len(self.wheel) == len(self.pending)
        assert self.wheel.now == self.now

    @invariant()
    def next_deadline_is_a_safe_bound(self) -> None:
        deadline = self.wheel.next_deadline()
        if not self.pending:
            assert deadline is None
            return
        earliest = min(key[0] for key in self.pending.values())
        assert deadline is not None
        assert self.now <= deadline <= earliest
        if earliest >> 6 == self.now >> 6:
            # The earliest timer is in level 0: the answer is exact.
            assert deadline == earliest

    @invariant()
    def pending_flags_match(self) -> None:
        for timer in self.handles:
            assert timer.pending is (timer.value in self.pending)

    @invariant()
    def tree_matches_the_leaves(self) -> None:
        assert_tree_is_exact(self.wheel)


def assert_tree_is_exact(wheel: TimerWheel[Any]) -> None:
    """White-box: the structure is exactly what the pending timers imply.

    A level-1 slot (64 ticks) that time has not entered holds its lone timer,
    or a bitmap of ticks whose leaves are in ``_leaves``; the leaves of the
    current window are in ``_leaves`` (if they were there when time entered
    their slot) or in ``_window``. Rebuilt from those alone, the bitmaps hold
    each slot's path at the level that ``now`` gives it, and nothing else (no
    empty slot, leaf or bitmap is kept).
    """
    levels, now = wheel.levels, wheel.now
    occupied = [0] * levels
    ticks: dict[int, int] = {}  # level-1 slot number -> bitmap of its leaves
    pending = 0
    for in_window, leaves in ((True, wheel._window), (False, wheel._leaves)):
        for deadline, leaf in leaves.items():
            assert deadline >= now
            timers = list(leaf) if isinstance(leaf, dict) else [leaf]
            assert timers
            assert all(timer.deadline == deadline for timer in timers)
            if isinstance(leaf, dict):
                assert all(leaf[timer] == timer.value for timer in timers)
            pending += len(timers)
            if deadline >> 6 == now >> 6:
                assert not occupied[0] & 1 << (deadline & 63), "one leaf per deadline"
                occupied[0] |= 1 << (deadline & 63)
            else:
                assert not in_window
                ticks[deadline >> 6] = ticks.get(deadline >> 6, 0) | 1 << (deadline & 63)
    children: list[dict[int, int]] = [{} for _ in range(levels + 1)]
    for number, slot in wheel._level1.items():
        assert number > now >> 6
        if isinstance(slot, int):
            assert slot == ticks.pop(number)
        else:
            assert slot.deadline >> 6 == number
            pending += 1
        level = (((now ^ number << 6) | 63).bit_length() - 1) // 6
        for k in range(2, min(level, levels) + 1):
            child = number >> 6 * (k - 2)  # its level-(k-1) slot, a child of level k
            children[k][child >> 6] = children[k].get(child >> 6, 0) | 1 << (child & 63)
        if level < levels:
            occupied[level] |= 1 << (number >> 6 * (level - 1) & 63)
    assert not ticks, "leaves whose level-1 slot has no bitmap"
    assert wheel._children == children
    assert wheel._occupied == occupied
    assert wheel._occupied_levels == sum(1 << k for k, bits in enumerate(occupied) if bits)
    windows = wheel._level1 if levels == 1 else children[levels]
    assert set(windows) <= set(wheel._overflow_windows)
    assert len(wheel) == pending


WheelMachine.TestCase.settings = settings(max_examples=500, stateful_step_count=50, deadline=None)
TestWheelAgainstModel = WheelMachine.TestCase


# -- targeted tests --------------------------------------------------------------


def wheel_lines(action: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``action`` and count the lines executed inside kernel/wheel.py.

    A count of operations, not of wall time: it says how much work a call did.
    """
    count = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename.endswith("wheel.py"):
            return local
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = action()
    finally:
        sys.settrace(previous)
    return result, count


def drive(wheel: TimerWheel[str]) -> list[tuple[int, list[str]]]:
    """Advance to each next_deadline() until empty, as the scheduler does."""
    wakeups = []
    while (deadline := wheel.next_deadline()) is not None:
        wakeups.append((deadline, wheel.advance(deadline)))
    return wakeups


def test_far_future_deadline_fires_exactly_at_its_tick() -> None:
    wheel: TimerWheel[str] = TimerWheel(now=5)
    deadline = 10 * MS_PER_YEAR + 123
    timer = wheel.insert(deadline, "decade")
    assert wheel.advance(deadline - 1) == []
    assert timer.pending
    assert wheel.next_deadline() == deadline
    assert wheel.advance(deadline) == ["decade"]
    assert not timer.pending
    assert len(wheel) == 0


def test_driver_never_wakes_late_and_wakes_at_most_once_per_level() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    deadline = 10 * MS_PER_YEAR + 123
    wheel.insert(deadline, "decade")
    for i in range(20):  # a crowded slot: next_deadline gives slot starts, not peeks
        wheel.insert(deadline + 1 + i, f"later-{i}")
    wakeups = drive(wheel)
    ticks = [tick for tick, _ in wakeups]
    assert ticks == sorted(ticks)
    first_fire = next(i for i, (_, values) in enumerate(wakeups) if values)
    assert wakeups[first_fire] == (deadline, ["decade"])
    assert first_fire + 1 <= wheel.levels + 1
    assert [value for _, values in wakeups for value in values][1:] == [
        f"later-{i}" for i in range(20)
    ]


def test_deadline_beyond_the_span_waits_in_overflow_and_fires_on_time() -> None:
    wheel: TimerWheel[str] = TimerWheel(levels=2)  # span 4096 ticks
    wheel.insert(10_000_000, "far")
    wheel.insert(9_999_999, "before")
    wheel.insert(4_096, "edge")
    assert wheel.advance(4_095) == []
    assert wheel.advance(4_096) == ["edge"]
    assert wheel.next_deadline() is not None
    assert wheel.next_deadline() <= 9_999_999  # type: ignore[operator]
    assert wheel.advance(9_999_998) == []
    assert wheel.advance(10_000_000) == ["before", "far"]


def test_cancelling_every_overflow_timer_empties_the_wheel() -> None:
    wheel: TimerWheel[str] = TimerWheel(levels=1)  # span 64 ticks
    first = wheel.insert(1_000, "first")
    second = wheel.insert(5_000, "second")
    assert wheel.next_deadline() is not None
    assert wheel.cancel(first)
    assert wheel.next_deadline() is not None
    assert wheel.next_deadline() <= 5_000  # type: ignore[operator]
    assert wheel.cancel(second)
    assert not second.pending
    assert wheel.next_deadline() is None
    assert wheel.advance(10_000) == []


def test_a_huge_idle_jump_costs_work_per_timer_not_per_tick() -> None:
    for levels in (8, 2):
        wheel: TimerWheel[str] = TimerWheel(levels=levels)
        wheel.insert(2**47 - 1, "a")
        wheel.insert(2**47, "b")
        wheel.insert(2**47 + 1, "c")
        fired, lines = wheel_lines(lambda wheel=wheel: wheel.advance(2**47))  # type: ignore[misc]
        assert fired == ["a", "b"]
        assert lines < 400, lines
        assert wheel.now == 2**47
        assert wheel.next_deadline() == 2**47 + 1
        (fired, lines) = wheel_lines(lambda wheel=wheel: wheel.advance(2**60))  # type: ignore[misc]
        assert fired == ["c"]
        assert lines < 400, lines


def test_advance_over_an_empty_wheel_is_constant_work() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    _, lines = wheel_lines(lambda: wheel.advance(2**47))
    assert lines < 20
    assert wheel.now == 2**47
    assert wheel.next_deadline() is None


def test_cancel() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    kept = wheel.insert(100, "kept")
    dropped = wheel.insert(100, "dropped")
    assert wheel.cancel(dropped) is True
    assert not dropped.pending
    assert wheel.cancel(dropped) is False
    assert len(wheel) == 1
    assert wheel.advance(100) == ["kept"]
    assert wheel.cancel(kept) is False  # already fired
    assert len(wheel) == 0


def test_cancelling_the_last_timer_of_a_slot_frees_the_slot() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    first = wheel.insert(5_000, "first")
    wheel.insert(70_000, "second")
    assert wheel.next_deadline() == 5_000
    wheel.cancel(first)
    assert wheel.next_deadline() == 70_000


def test_reschedule_earlier_and_later() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    moved_earlier = wheel.insert(10_000, "earlier")
    moved_later = wheel.insert(20, "later")
    wheel.insert(500, "fixed")
    wheel.reschedule(moved_earlier, 10)
    wheel.reschedule(moved_later, 1_000_000)
    assert moved_earlier.deadline == 10
    assert moved_later.deadline == 1_000_000
    assert wheel.advance(999_999) == ["earlier", "fixed"]
    assert wheel.advance(1_000_000) == ["later"]


def test_reschedule_rearms_a_fired_or_cancelled_timer() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    fired = wheel.insert(3, "fired")
    cancelled = wheel.insert(4, "cancelled")
    wheel.cancel(cancelled)
    assert wheel.advance(10) == ["fired"]
    wheel.reschedule(fired, 20)
    wheel.reschedule(cancelled, 20)
    assert fired.pending
    assert cancelled.pending
    assert len(wheel) == 2
    assert wheel.advance(20) == ["fired", "cancelled"]


def test_reschedule_counts_as_a_fresh_insertion_for_ties() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    first = wheel.insert(300, "first")
    wheel.insert(300, "second")
    wheel.reschedule(first, 300)
    assert wheel.advance(300) == ["second", "first"]


def test_past_deadlines_are_due_at_the_next_advance_in_insertion_order() -> None:
    wheel: TimerWheel[str] = TimerWheel(now=1_000)
    wheel.insert(1_001, "next tick")
    late = wheel.insert(3, "long overdue")
    wheel.insert(1_000, "now")
    wheel.insert(999, "just overdue")
    assert late.deadline == 1_000
    assert wheel.next_deadline() == 1_000
    assert wheel.advance(1_000) == ["long overdue", "now", "just overdue"]
    assert wheel.advance(1_001) == ["next tick"]


def test_ties_fire_in_insertion_order_across_cascades() -> None:
    wheel: TimerWheel[int] = TimerWheel()
    deadline = 64**3 + 64**2 + 5
    for value in range(5):
        wheel.insert(deadline, value)
        wheel.advance(wheel.now + 64**2 // 2)  # later inserts land on lower levels
    assert wheel.advance(deadline) == [0, 1, 2, 3, 4]


def test_advancing_into_the_past_is_a_value_error() -> None:
    wheel: TimerWheel[str] = TimerWheel(now=50)
    with pytest.raises(ValueError, match="backwards"):
        wheel.advance(49)
    assert wheel.now == 50


def test_bad_arguments_are_refused() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    with pytest.raises(TypeError, match="int tick"):
        wheel.insert(1.5, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int tick"):
        wheel.insert(-1.5, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int tick"):
        wheel.advance(2.0)  # type: ignore[arg-type]
    assert len(wheel) == 0
    with pytest.raises(ValueError, match="levels"):
        TimerWheel(levels=0)
    with pytest.raises(ValueError, match="now"):
        TimerWheel(now=-1)


def test_a_timer_of_another_wheel_is_refused() -> None:
    timer = TimerWheel[str]().insert(5, "x")
    other: TimerWheel[str] = TimerWheel()
    with pytest.raises(ValueError, match="another wheel"):
        other.cancel(timer)
    with pytest.raises(ValueError, match="another wheel"):
        other.reschedule(timer, 10)


def test_timers_are_slotted_handles() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    timer = wheel.insert(5, "x")
    assert not hasattr(timer, "__dict__")
    assert "pending" in repr(timer)
    wheel.advance(5)
    assert "done" in repr(timer)
    with pytest.raises(AttributeError):
        timer.deadline = 7  # type: ignore[misc]


# -- cascades: work per advance, memory ----------------------------------------------

LEVEL_2_SLOT = 64**2


def crowded_wheel(count: int) -> tuple[TimerWheel[int], int, list[int]]:
    """``count`` timers over one level-2 slot, its start, and their deadlines.

    One more timer at ``start - 1`` (value -1) makes a driver wake just
    before the slot, as the scheduler does.
    """
    start = 5 * LEVEL_2_SLOT
    wheel: TimerWheel[int] = TimerWheel(now=10)
    rng = random.Random(count)
    deadlines = [start + rng.randrange(1, LEVEL_2_SLOT) for _ in range(count)]
    for value, deadline in enumerate(deadlines):
        wheel.insert(deadline, value)
    wheel.insert(start - 1, -1)
    return wheel, start, deadlines


def firing_order(deadlines: list[int]) -> list[int]:
    """The values in deadline order, ties in insertion order."""
    return sorted(range(len(deadlines)), key=lambda value: (deadlines[value], value))


def test_entering_a_crowded_slot_costs_the_same_for_any_crowd() -> None:
    costs = []
    for count in (500, 5_000, 50_000):
        wheel, start, _ = crowded_wheel(count)
        assert wheel.advance(start - 1) == [-1]
        fired, lines = wheel_lines(lambda wheel=wheel, start=start: wheel.advance(start))  # type: ignore[misc]
        assert fired == []
        costs.append(lines)
    # a classic cascade re-inserts every timer here: ~10 lines a timer
    assert costs[0] == costs[1] == costs[2] < 100, costs


def test_each_advance_costs_a_constant_plus_a_little_per_timer_fired() -> None:
    wheel, start, deadlines = crowded_wheel(3_000)
    assert wheel.advance(start - 1) == [-1]
    fired_in_order: list[int] = []
    while (deadline := wheel.next_deadline()) is not None:
        fired, lines = wheel_lines(lambda deadline=deadline: wheel.advance(deadline))  # type: ignore[misc]
        assert fired
        assert lines <= 80 + 10 * len(fired), (deadline, lines, len(fired))
        fired_in_order += fired
    assert fired_in_order == firing_order(deadlines)


def test_an_advance_into_the_middle_of_a_crowded_slot_fires_its_due_timers_in_order() -> None:
    count = 20_000
    wheel, start, deadlines = crowded_wheel(count)
    order = firing_order(deadlines)
    assert wheel.advance(start - 1) == [-1]
    stop = start + 100  # inside the second level-1 slot: due and not-due timers share it
    fired, lines = wheel_lines(lambda: wheel.advance(stop))
    due = [value for value in order if deadlines[value] <= stop]
    assert fired == due
    assert 0 < len(fired) < count // 20
    assert lines <= 150 + 10 * len(fired)
    assert_tree_is_exact(wheel)
    assert wheel.next_deadline() == min(deadline for deadline in deadlines if deadline > stop)
    assert len(wheel) == count - len(fired)
    assert wheel.advance(start + 2 * LEVEL_2_SLOT) == order[len(fired) :]


def test_cancelling_or_firing_every_timer_leaves_no_bitmap_behind() -> None:
    for levels in (2, 8):
        wheel: TimerWheel[int] = TimerWheel(now=3, levels=levels)
        rng = random.Random(levels)
        timers = [wheel.insert(rng.randrange(1, 64**5), value) for value in range(5_000)]
        rng.shuffle(timers)
        for timer in timers[:2_500]:
            assert wheel.cancel(timer)
        assert_tree_is_exact(wheel)
        wheel.advance(64**4)
        assert_tree_is_exact(wheel)
        for timer in timers[2_500:]:
            wheel.cancel(timer)
        assert len(wheel) == 0
        assert not wheel._window
        assert not wheel._leaves
        assert not wheel._level1
        assert not any(wheel._children)
        assert not any(wheel._occupied)
        assert wheel.next_deadline() is None


def test_overflow_windows_survive_churn_and_fire_in_order() -> None:
    wheel: TimerWheel[int] = TimerWheel(levels=1)  # span 64 ticks: one window each
    kept = [wheel.insert(64 * window + 5, window) for window in range(10, 400, 10)]
    for window in range(1, 2_000):  # arm and disarm a timer in many other windows
        assert wheel.cancel(wheel.insert(64 * window + 7, -window))
        # stale window numbers are dropped once they outnumber the live ones
        assert len(wheel._overflow_windows) <= 2 * len(kept) + 19
    assert_tree_is_exact(wheel)
    assert wheel.next_deadline() == kept[0].deadline
    assert wheel.advance(64 * 2_000) == [timer.value for timer in kept]
