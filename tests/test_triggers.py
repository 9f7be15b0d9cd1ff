from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.errors import CronSyntaxError
from kernel.time.policies import (
    AllowOverlap,
    CancelRunning,
    CatchUp,
    OverlapAction,
    QueueOne,
    RunOnce,
    SkipIfRunning,
    SkipMissed,
    decide_overlap,
    plan_misfire,
)
from kernel.time.triggers import AllOf, AnyOf, At, Cron, Every

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")

aware = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
)
intervals = st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=400))


class TestEvery:
    def test_fires_on_anchor_multiples(self) -> None:
        every = Every(minutes=5, anchor=T0)
        assert every.next_fire_after(T0) == T0 + timedelta(minutes=5)
        assert every.next_fire_after(T0 + timedelta(minutes=7)) == T0 + timedelta(minutes=10)
        assert every.next_fire_after(T0 + timedelta(minutes=10)) == T0 + timedelta(minutes=15)

    def test_before_anchor_fires_at_anchor(self) -> None:
        assert Every(hours=1, anchor=T0).next_fire_after(T0 - timedelta(days=3)) == T0

    def test_unanchored_aligns_to_epoch(self) -> None:
        after = datetime(2026, 5, 5, 10, 7, 30, tzinfo=UTC)
        assert Every(minutes=15).next_fire_after(after) == datetime(2026, 5, 5, 10, 15, tzinfo=UTC)

    def test_anchored_keeps_existing_anchor(self) -> None:
        every = Every(seconds=1, anchor=T0)
        assert every.anchored(T0 + timedelta(days=1)).anchor == T0
        assert Every(seconds=1).anchored(T0).anchor == T0

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({}, "positive interval"),
            ({"seconds": -1}, "positive interval"),
            ({"interval": timedelta(seconds=1), "seconds": 2}, "not both"),
            ({"seconds": 1, "anchor": datetime(2026, 1, 1)}, "aware"),
            ({"seconds": 1, "jitter": timedelta(seconds=-1)}, "jitter"),
        ],
    )
    def test_rejects_bad_arguments(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            Every(**kwargs)  # type: ignore[arg-type]

    def test_naive_after_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="aware"):
            Every(seconds=1).next_fire_after(datetime(2026, 1, 1))

    @given(anchor=aware, interval=intervals, after=aware)
    def test_next_is_the_first_anchor_multiple_after(
        self, anchor: datetime, interval: timedelta, after: datetime
    ) -> None:
        fire = Every(interval, anchor=anchor).next_fire_after(after)
        assert fire is not None
        assert fire > after
        assert (fire - anchor) % interval == timedelta(0)
        assert fire == anchor or fire - interval <= after

    def test_a_hundred_thousand_steps_do_not_drift(self) -> None:
        every = Every(seconds=1, anchor=T0)
        fire = T0
        for _ in range(100_000):
            nxt = every.next_fire_after(fire)
            assert nxt is not None
            fire = nxt
        assert fire == T0 + timedelta(seconds=100_000)


class TestCronTrigger:
    def test_reads_the_expression_in_its_zone(self) -> None:
        cron = Cron("0 2 * * *", tz="Europe/Berlin")
        fire = cron.next_fire_after(datetime(2026, 6, 30, 12, tzinfo=UTC))
        assert fire is not None
        assert fire.astimezone(BERLIN).replace(tzinfo=None) == datetime(2026, 7, 1, 2, 0)
        assert fire.astimezone(UTC) == datetime(2026, 7, 1, 0, 0, tzinfo=UTC)

    def test_bad_zone_is_a_clear_error(self) -> None:
        with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
            Cron("* * * * *", tz="Mars/Olympus")

    def test_bad_expression_raises_cron_syntax_error(self) -> None:
        with pytest.raises(CronSyntaxError):
            Cron("61 * * * *")


class TestAt:
    def test_fires_once(self) -> None:
        at = At(T0)
        assert at.next_fire_after(T0 - timedelta(seconds=1)) == T0
        assert at.next_fire_after(T0) is None

    def test_naive_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="aware"):
            At(datetime(2026, 1, 1))


class TestCombinations:
    def test_any_of_is_the_union(self) -> None:
        trigger = AnyOf(Every(seconds=3, anchor=T0), Every(seconds=5, anchor=T0))
        fires = []
        cursor = T0
        for _ in range(6):
            nxt = trigger.next_fire_after(cursor)
            assert nxt is not None
            fires.append(int((nxt - T0).total_seconds()))
            cursor = nxt
        assert fires == [3, 5, 6, 9, 10, 12]

    def test_all_of_is_the_intersection(self) -> None:
        trigger = AllOf(Every(seconds=4, anchor=T0), Every(seconds=6, anchor=T0))
        assert trigger.next_fire_after(T0) == T0 + timedelta(seconds=12)
        assert trigger.next_fire_after(T0 + timedelta(seconds=12)) == T0 + timedelta(seconds=24)

    def test_all_of_cron_and_every(self) -> None:
        # every three hours, but only on weekdays
        trigger = AllOf(Cron("0 * * * 1-5"), Every(hours=3, anchor=T0))
        fire = trigger.next_fire_after(datetime(2026, 1, 3, tzinfo=UTC))  # a Saturday
        assert fire == datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # Monday 00:00

    def test_all_of_never_coinciding_is_exhausted(self) -> None:
        trigger = AllOf(At(T0), At(T0 + timedelta(seconds=1)))
        assert trigger.next_fire_after(T0 - timedelta(days=1)) is None

    def test_any_of_exhausts_when_all_do(self) -> None:
        assert AnyOf(At(T0), At(T0)).next_fire_after(T0) is None

    def test_need_two_triggers(self) -> None:
        with pytest.raises(ValueError, match="at least two"):
            AnyOf(At(T0))

    @given(
        a=st.integers(1, 50),
        b=st.integers(1, 50),
        offset=st.integers(0, 10_000),
    )
    def test_any_of_is_min_of_parts(self, a: int, b: int, offset: int) -> None:
        first = Every(seconds=a, anchor=T0)
        second = Every(seconds=b, anchor=T0)
        after = T0 + timedelta(seconds=offset)
        expected = min(first.next_fire_after(after), second.next_fire_after(after))  # type: ignore[type-var]
        assert AnyOf(first, second).next_fire_after(after) == expected


SLOTS = [T0 + timedelta(minutes=m) for m in range(5)]  # 00:00 .. 00:04
NOW = T0 + timedelta(minutes=4, seconds=0.5)


class TestMisfire:
    def test_skip_runs_only_an_on_time_slot(self) -> None:
        assert plan_misfire(SkipMissed(), SLOTS, NOW) == [SLOTS[-1]]
        assert plan_misfire(SkipMissed(), SLOTS, NOW + timedelta(seconds=5)) == []

    def test_run_once_coalesces(self) -> None:
        assert plan_misfire(RunOnce(), SLOTS, NOW + timedelta(days=1)) == [SLOTS[-1]]
        assert (
            plan_misfire(RunOnce(grace=timedelta(seconds=10)), SLOTS, NOW + timedelta(hours=1))
            == []
        )

    def test_catch_up_runs_all_in_grace(self) -> None:
        assert plan_misfire(CatchUp(), SLOTS, NOW + timedelta(days=1)) == SLOTS
        within = plan_misfire(CatchUp(grace=timedelta(minutes=2)), SLOTS, NOW)
        assert within == SLOTS[-2:]

    def test_negative_grace_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="grace"):
            CatchUp(grace=timedelta(seconds=-1))

    @given(
        minutes=st.lists(st.integers(0, 10_000), min_size=1, max_size=30, unique=True),
        late=st.integers(0, 100_000),
        grace=st.none() | st.integers(0, 20_000),
    )
    def test_policies_pick_ordered_subsets(
        self, minutes: list[int], late: int, grace: int | None
    ) -> None:
        due = [T0 + timedelta(minutes=m) for m in sorted(minutes)]
        now = due[-1] + timedelta(minutes=late)
        window = None if grace is None else timedelta(minutes=grace)
        in_grace = [slot for slot in due if window is None or now - slot <= window]
        assert plan_misfire(CatchUp(window), due, now) == in_grace
        assert plan_misfire(RunOnce(window), due, now) == in_grace[-1:]
        assert plan_misfire(SkipMissed(window), due, now) == in_grace[-1:]


class TestOverlap:
    @pytest.mark.parametrize(
        ("policy", "running", "queued", "action"),
        [
            (SkipIfRunning(), 0, 0, OverlapAction.START),
            (SkipIfRunning(), 1, 0, OverlapAction.SKIP),
            (QueueOne(), 1, 0, OverlapAction.QUEUE),
            (QueueOne(), 1, 1, OverlapAction.SKIP),
            (AllowOverlap(3), 2, 0, OverlapAction.START),
            (AllowOverlap(3), 3, 0, OverlapAction.SKIP),
            (CancelRunning(), 1, 0, OverlapAction.CANCEL_AND_START),
            (CancelRunning(), 0, 0, OverlapAction.START),
        ],
    )
    def test_decisions(
        self, policy: object, running: int, queued: int, action: OverlapAction
    ) -> None:
        assert decide_overlap(policy, running=running, queued=queued) is action  # type: ignore[arg-type]

    def test_allow_overlap_needs_one(self) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            AllowOverlap(0)
