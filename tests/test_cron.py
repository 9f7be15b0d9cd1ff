"""Unit and property tests of kernel.time.cron: syntax, day rules, DST policy, errors."""

from __future__ import annotations

import calendar
import itertools
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.errors import CronSyntaxError
from kernel.time.cron import CronExpression, parse_cron

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday


def fires(expression: str, after: datetime = START, count: int = 5) -> list[str]:
    cron = CronExpression.parse(expression)
    times = itertools.islice(cron.iter_after(after), count)
    return [moment.isoformat() for moment in times]


def days(expression: str, after: datetime = START, count: int = 5) -> list[str]:
    return [text[:10] for text in fires(expression, after, count)]


class TestSyntax:
    def test_every_minute(self) -> None:
        assert fires("* * * * *", count=3) == [
            "2024-01-01T00:01:00+00:00",
            "2024-01-01T00:02:00+00:00",
            "2024-01-01T00:03:00+00:00",
        ]

    def test_list_range_and_steps(self) -> None:
        minutes = [text[14:16] for text in fires("1,10-12,*/20,50-59/4 0 * * *", count=12)]
        assert minutes == ["01", "10", "11", "12", "20", "40", "50", "54", "58", "00", "01", "10"]

    def test_value_slash_step_runs_to_the_field_maximum(self) -> None:
        hours = [text[11:13] for text in fires("0 17/3 * * *", count=3)]
        assert hours == ["17", "20", "23"]

    def test_single_value_range_with_step_is_that_value(self) -> None:
        # cronsim reads '5-5/10' as '5/10' and croniter reads '5-5' as '*'; Vixie reads {5}.
        assert [text[14:16] for text in fires("5-5/10 * * * *", count=2)] == ["05", "05"]

    def test_month_and_weekday_names_are_case_insensitive(self) -> None:
        assert days("0 0 1 jan-Mar,DEC *", count=4) == [
            "2024-02-01",
            "2024-03-01",
            "2024-12-01",
            "2025-01-01",
        ]
        assert days("0 0 * * mon,Wed") == days("0 0 * * 1,3")

    def test_zero_and_seven_are_sunday(self) -> None:
        sundays = ["2024-01-07", "2024-01-14", "2024-01-21"]
        assert days("0 0 * * 0", count=3) == sundays
        assert days("0 0 * * 7", count=3) == sundays
        assert days("0 0 * * SUN", count=3) == sundays
        assert days("0 0 * * 5-7", count=3) == ["2024-01-05", "2024-01-06", "2024-01-07"]

    def test_weekday_step_over_zero_to_seven(self) -> None:
        # 1/2 runs 1,3,5,7 as in Vixie cron and cronsim: Monday, Wednesday, Friday, Sunday.
        assert days("0 0 * * 1/2", count=4) == [
            "2024-01-03",
            "2024-01-05",
            "2024-01-07",
            "2024-01-08",
        ]

    @pytest.mark.parametrize(
        ("alias", "equivalent"),
        [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
            ("@HOURLY", "0 * * * *"),
        ],
    )
    def test_aliases(self, alias: str, equivalent: str) -> None:
        cron = CronExpression.parse(alias)
        assert cron.expression == alias
        assert fires(alias) == fires(equivalent)

    def test_question_mark_is_an_unrestricted_day_field(self) -> None:
        assert days("0 0 ? * MON") == days("0 0 * * MON")
        assert days("0 0 15 * ?") == days("0 0 15 * *")

    def test_seconds_field_comes_first(self) -> None:
        cron = CronExpression.parse("*/20 30 9 * * *")
        assert cron.has_seconds
        assert not CronExpression.parse("30 9 * * *").has_seconds
        assert fires("*/20 30 9 * * *", count=4) == [
            "2024-01-01T09:30:00+00:00",
            "2024-01-01T09:30:20+00:00",
            "2024-01-01T09:30:40+00:00",
            "2024-01-02T09:30:00+00:00",
        ]

    def test_parse_cron_alias_and_str(self) -> None:
        cron = parse_cron("  */5 * * * *\t")
        assert cron == CronExpression.parse("*/5 * * * *")
        assert str(cron) == "*/5 * * * *"
        assert "*/5 * * * *" in repr(cron)


class TestVixieDayRule:
    def test_both_restricted_means_either(self) -> None:
        # the 13th, or any Friday
        assert days("0 0 13 * 5", count=4) == [
            "2024-01-05",
            "2024-01-12",
            "2024-01-13",
            "2024-01-19",
        ]

    def test_star_day_of_month_means_weekday_only(self) -> None:
        assert days("0 0 * * 5", count=2) == ["2024-01-05", "2024-01-12"]

    def test_star_weekday_means_day_of_month_only(self) -> None:
        assert days("0 0 13 * *", count=2) == ["2024-01-13", "2024-02-13"]

    def test_a_field_starting_with_star_counts_as_unrestricted(self) -> None:
        # '*/2' starts with '*', so both must match: odd days that are Fridays.
        assert days("0 0 */2 * 5", count=3) == ["2024-01-05", "2024-01-19", "2024-02-09"]

    def test_full_range_is_still_restricted(self) -> None:
        # '1-31' does not start with '*': either matches, so every day fires.
        assert days("0 0 1-31 * 5", count=3) == ["2024-01-02", "2024-01-03", "2024-01-04"]


class TestLastWeekdayNth:
    def test_last_day_of_month(self) -> None:
        assert days("0 0 L * *", count=3) == ["2024-01-31", "2024-02-29", "2024-03-31"]

    def test_last_day_minus_n(self) -> None:
        assert days("0 0 L-2 * *", count=3) == ["2024-01-29", "2024-02-27", "2024-03-29"]

    def test_last_weekday(self) -> None:
        # 2024-03-31 is a Sunday, 2024-08-31 a Saturday
        assert days("0 0 LW 3,8 *", count=2) == ["2024-03-29", "2024-08-30"]

    def test_nearest_weekday(self) -> None:
        # 2024-06-15 is a Saturday -> Friday 14th; 2024-09-15 a Sunday -> Monday 16th
        assert days("0 0 15W 6,9 *", count=2) == ["2024-06-14", "2024-09-16"]

    def test_nearest_weekday_does_not_leave_the_month(self) -> None:
        # 2024-06-01 is a Saturday -> Monday 3rd; 2024-03-31 a Sunday -> Friday 29th
        assert days("0 0 1W 6 *", count=1) == ["2024-06-03"]
        assert days("0 0 31W 3 *", count=1) == ["2024-03-29"]

    def test_nearest_weekday_skips_months_without_that_day(self) -> None:
        assert days("0 0 31W * *", count=3) == ["2024-01-31", "2024-03-29", "2024-05-31"]

    def test_last_weekday_of_month(self) -> None:
        assert days("0 0 * * 5L", count=3) == ["2024-01-26", "2024-02-23", "2024-03-29"]
        assert days("0 0 * * FRIL", count=3) == days("0 0 * * 5L", count=3)
        assert days("0 0 * * 7L", count=2) == ["2024-01-28", "2024-02-25"]

    def test_nth_weekday(self) -> None:
        assert days("0 0 * * 1#2", count=3) == ["2024-01-08", "2024-02-12", "2024-03-11"]
        assert days("0 0 * * MON#2", count=3) == days("0 0 * * 1#2", count=3)

    def test_fifth_weekday_only_in_months_that_have_one(self) -> None:
        assert days("0 0 * * 1#5", count=3) == ["2024-01-29", "2024-04-29", "2024-07-29"]

    def test_specials_mix_with_plain_items(self) -> None:
        assert days("0 0 1,L * *", count=3) == ["2024-01-31", "2024-02-01", "2024-02-29"]
        assert days("0 0 * * 1#1,5L", count=3) == ["2024-01-26", "2024-02-05", "2024-02-23"]

    def test_specials_follow_the_vixie_rule(self) -> None:
        # last day of the month OR any Sunday
        assert days("0 0 L * 0", count=3) == ["2024-01-07", "2024-01-14", "2024-01-21"]


class TestLeapYears:
    def test_february_29th(self) -> None:
        assert days("0 0 29 2 *", datetime(2024, 3, 1, tzinfo=UTC), count=3) == [
            "2028-02-29",
            "2032-02-29",
            "2036-02-29",
        ]

    def test_century_rule(self) -> None:
        assert days("0 0 29 2 *", datetime(2096, 3, 1, tzinfo=UTC), count=2) == [
            "2104-02-29",
            "2108-02-29",
        ]
        assert days("0 0 29 2 *", datetime(1996, 3, 1, tzinfo=UTC), count=1) == ["2000-02-29"]

    def test_fifth_monday_of_february_is_decades_apart(self) -> None:
        assert days("0 0 * 2 MON#5", count=2) == ["2044-02-29", "2072-02-29"]

    def test_last_day_of_february(self) -> None:
        assert days("0 0 L 2 *", count=3) == ["2024-02-29", "2025-02-28", "2026-02-28"]


class TestNextAfter:
    def test_strictly_after(self) -> None:
        cron = CronExpression.parse("0 * * * *")
        on_the_hour = datetime(2024, 5, 1, 10, tzinfo=UTC)
        assert cron.next_after(on_the_hour) == datetime(2024, 5, 1, 11, tzinfo=UTC)
        just_before = on_the_hour - timedelta(microseconds=1)
        assert cron.next_after(just_before) == on_the_hour

    def test_microseconds_after_a_fire_time(self) -> None:
        cron = CronExpression.parse("* * * * * *")
        moment = datetime(2024, 5, 1, 10, 0, 0, 500_000, tzinfo=UTC)
        assert cron.next_after(moment) == datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)

    def test_result_is_aware_in_the_requested_zone(self) -> None:
        cron = CronExpression.parse("0 9 * * *")
        result = cron.next_after(datetime(2024, 7, 1, 12, tzinfo=UTC), BERLIN)
        assert result.tzinfo is BERLIN
        assert result.isoformat() == "2024-07-02T09:00:00+02:00"

    def test_zone_defaults_to_that_of_after(self) -> None:
        cron = CronExpression.parse("0 9 * * *")
        result = cron.next_after(datetime(2024, 7, 1, 12, tzinfo=NEW_YORK))
        assert result.isoformat() == "2024-07-02T09:00:00-04:00"
        fixed = timezone(timedelta(hours=5, minutes=30))
        result = cron.next_after(datetime(2024, 7, 1, 12, tzinfo=fixed))
        assert result.isoformat() == "2024-07-02T09:00:00+05:30"

    def test_naive_after_is_a_wall_time_in_tz(self) -> None:
        cron = CronExpression.parse("0 9 * * *")
        result = cron.next_after(datetime(2024, 7, 1, 8, 59), BERLIN)
        assert result.isoformat() == "2024-07-01T09:00:00+02:00"

    def test_naive_after_without_tz_is_refused(self) -> None:
        with pytest.raises(ValueError, match="aware"):
            CronExpression.parse("0 9 * * *").next_after(datetime(2024, 7, 1))

    def test_no_fire_before_year_10000_is_a_value_error(self) -> None:
        cron = CronExpression.parse("0 0 29 2 *")
        with pytest.raises(ValueError, match="10000"):
            cron.next_after(datetime(9997, 1, 1, tzinfo=UTC))

    def test_iter_after_is_next_after_repeated(self) -> None:
        cron = CronExpression.parse("15 */6 * * *")
        moments = list(itertools.islice(cron.iter_after(START), 4))
        assert moments[0] == cron.next_after(START)
        assert all(b == cron.next_after(a) for a, b in itertools.pairwise(moments))


class TestDstPolicy:
    """Wall-clock rule for fixed times; elapsed-time rule (as cronsim) for '*' minute/hour."""

    def test_berlin_spring_forward_fires_at_the_end_of_the_gap(self) -> None:
        after = datetime(2024, 3, 30, 12, tzinfo=BERLIN)
        assert fires("30 2 * * *", after, 3) == [
            "2024-03-31T03:00:00+02:00",
            "2024-04-01T02:30:00+02:00",
            "2024-04-02T02:30:00+02:00",
        ]

    def test_berlin_skipped_slots_coalesce_into_one_fire(self) -> None:
        after = datetime(2024, 3, 31, 1, 0, tzinfo=BERLIN)
        assert fires("0,20,40 2,3 * * *", after, 4) == [
            "2024-03-31T03:00:00+02:00",
            "2024-03-31T03:20:00+02:00",
            "2024-03-31T03:40:00+02:00",
            "2024-04-01T02:00:00+02:00",
        ]

    def test_berlin_repeated_time_fires_once_at_its_first_pass(self) -> None:
        after = datetime(2024, 10, 26, 12, tzinfo=BERLIN)
        assert fires("30 2 * * *", after, 2) == [
            "2024-10-27T02:30:00+02:00",
            "2024-10-28T02:30:00+01:00",
        ]

    def test_berlin_after_inside_the_second_pass_skips_the_repeat(self) -> None:
        second_pass = datetime(2024, 10, 27, 1, 15, tzinfo=UTC).astimezone(BERLIN)
        assert second_pass.fold == 1
        assert fires("30 2 * * *", second_pass, 1) == ["2024-10-28T02:30:00+01:00"]

    def test_berlin_interval_fires_in_both_passes_of_the_repeated_hour(self) -> None:
        after = datetime(2024, 10, 27, 1, 50, tzinfo=BERLIN)
        assert fires("*/15 * * * *", after, 9) == [
            "2024-10-27T02:00:00+02:00",
            "2024-10-27T02:15:00+02:00",
            "2024-10-27T02:30:00+02:00",
            "2024-10-27T02:45:00+02:00",
            "2024-10-27T02:00:00+01:00",
            "2024-10-27T02:15:00+01:00",
            "2024-10-27T02:30:00+01:00",
            "2024-10-27T02:45:00+01:00",
            "2024-10-27T03:00:00+01:00",
        ]

    def test_berlin_interval_from_inside_the_first_pass(self) -> None:
        first_pass = datetime(2024, 10, 27, 2, 50, tzinfo=BERLIN)
        assert first_pass.utcoffset() == timedelta(hours=2)
        assert fires("*/15 * * * *", first_pass, 2) == [
            "2024-10-27T02:00:00+01:00",
            "2024-10-27T02:15:00+01:00",
        ]
        assert fires("40 * * * *", first_pass, 2) == [
            "2024-10-27T02:40:00+01:00",
            "2024-10-27T03:40:00+01:00",
        ]

    def test_berlin_interval_skips_wall_times_that_do_not_exist(self) -> None:
        after = datetime(2024, 3, 31, 0, 30, tzinfo=BERLIN)
        assert fires("30 * * * *", after, 3) == [
            "2024-03-31T01:30:00+01:00",
            "2024-03-31T03:30:00+02:00",
            "2024-03-31T04:30:00+02:00",
        ]

    def test_seconds_field_does_not_change_the_rule(self) -> None:
        after = datetime(2024, 3, 30, 12, tzinfo=BERLIN)
        assert fires("0 30 2 * * *", after, 2) == [
            "2024-03-31T03:00:00+02:00",
            "2024-04-01T02:30:00+02:00",
        ]
        assert fires("*/20 30 2 * * *", after, 2) == [
            "2024-03-31T03:00:00+02:00",
            "2024-04-01T02:30:00+02:00",
        ]

    def test_new_york_spring_forward_and_fall_back(self) -> None:
        assert fires("30 2 * * *", datetime(2024, 3, 9, 12, tzinfo=NEW_YORK), 2) == [
            "2024-03-10T03:00:00-04:00",
            "2024-03-11T02:30:00-04:00",
        ]
        assert fires("30 1 * * *", datetime(2024, 11, 2, 12, tzinfo=NEW_YORK), 2) == [
            "2024-11-03T01:30:00-04:00",
            "2024-11-04T01:30:00-05:00",
        ]
        assert fires("0 * * * *", datetime(2024, 11, 3, 0, 30, tzinfo=NEW_YORK), 3) == [
            "2024-11-03T01:00:00-04:00",
            "2024-11-03T01:00:00-05:00",
            "2024-11-03T02:00:00-05:00",
        ]

    def test_lord_howe_half_hour_shift(self) -> None:
        # Spring forward 2024-10-06: 02:00 +10:30 -> 02:30 +11:00.
        assert fires("15 2 * * *", datetime(2024, 10, 5, 12, tzinfo=LORD_HOWE), 2) == [
            "2024-10-06T02:30:00+11:00",
            "2024-10-07T02:15:00+11:00",
        ]
        # Fall back 2024-04-07: 02:00 +11:00 -> 01:30 +10:30; 01:45 happens twice.
        assert fires("45 1 * * *", datetime(2024, 4, 6, 12, tzinfo=LORD_HOWE), 2) == [
            "2024-04-07T01:45:00+11:00",
            "2024-04-08T01:45:00+10:30",
        ]
        assert fires("*/15 * * * *", datetime(2024, 4, 7, 1, 20, tzinfo=LORD_HOWE), 5) == [
            "2024-04-07T01:30:00+11:00",
            "2024-04-07T01:45:00+11:00",
            "2024-04-07T01:30:00+10:30",
            "2024-04-07T01:45:00+10:30",
            "2024-04-07T02:00:00+10:30",
        ]

    def test_after_in_another_zone_or_in_a_gap(self) -> None:
        cron = CronExpression.parse("0 4 * * *")
        assert cron.next_after(START, BERLIN).isoformat() == "2024-01-01T04:00:00+01:00"
        in_gap = datetime(2024, 3, 31, 2, 30, tzinfo=BERLIN)  # does not exist: read as 03:30
        assert cron.next_after(in_gap).isoformat() == "2024-03-31T04:00:00+02:00"

    @settings(max_examples=60, deadline=None)
    @given(
        zone=st.sampled_from([BERLIN, NEW_YORK, LORD_HOWE]),
        expression=st.sampled_from(["*/15 * * * *", "0 * * * *", "30 2 * * *", "*/7 1-3 * * *"]),
        start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)),
    )
    def test_fire_times_increase_and_are_real(
        self, zone: ZoneInfo, expression: str, start: datetime
    ) -> None:
        after = start.replace(tzinfo=UTC)
        previous = after
        for moment in itertools.islice(CronExpression.parse(expression).iter_after(after, zone), 8):
            assert moment > previous
            assert moment.astimezone(UTC).astimezone(zone) == moment  # not in a gap
            previous = moment


# Offset changes in 2024, in UTC: Berlin, New York, Lord Howe (30 minutes), each way.
TRANSITIONS = [
    (BERLIN, datetime(2024, 3, 31, 1, tzinfo=UTC)),
    (BERLIN, datetime(2024, 10, 27, 1, tzinfo=UTC)),
    (NEW_YORK, datetime(2024, 3, 10, 7, tzinfo=UTC)),
    (NEW_YORK, datetime(2024, 11, 3, 6, tzinfo=UTC)),
    (LORD_HOWE, datetime(2024, 4, 6, 15, tzinfo=UTC)),
    (LORD_HOWE, datetime(2024, 10, 5, 15, 30, tzinfo=UTC)),
]


def minute_scan(
    minutes: set[int], hours: set[int], wall_clock: bool, zone: ZoneInfo, after: datetime
) -> list[datetime]:
    """The DST policy, stated minute by minute over real instants (no cleverness)."""
    fired: list[datetime] = []
    moment = after
    previous_wall = moment.astimezone(zone).replace(tzinfo=None)
    while len(fired) < 6 and moment < after + timedelta(days=3):
        moment += timedelta(minutes=1)
        wall = moment.astimezone(zone)
        naive = wall.replace(tzinfo=None)
        matches = wall.minute in minutes and wall.hour in hours
        if wall_clock:
            skipped = previous_wall + timedelta(minutes=1)
            while skipped < naive and not matches:  # wall times jumped over by spring-forward
                matches = skipped.minute in minutes and skipped.hour in hours
                skipped += timedelta(minutes=1)
            matches = matches and wall.fold == 0  # the second pass of a repeated time is silent
        if matches:
            fired.append(wall)
        previous_wall = naive
    return fired


class TestDstAgainstMinuteScan:
    @settings(max_examples=120, deadline=None)
    @given(
        transition=st.sampled_from(TRANSITIONS),
        shift=st.integers(-26 * 60, 2 * 60),
        minutes=st.sets(st.integers(0, 59), min_size=1, max_size=4),
        hours=st.sets(st.integers(0, 23), min_size=1, max_size=4) | st.none(),
        star_minute=st.booleans(),
    )
    def test_policy(
        self,
        transition: tuple[ZoneInfo, datetime],
        shift: int,
        minutes: set[int],
        hours: set[int] | None,
        star_minute: bool,
    ) -> None:
        zone, change = transition
        after = change + timedelta(minutes=shift)
        minute_text = ",".join(map(str, sorted(minutes)))
        if star_minute:
            minute_text = "*/15"
            minutes = {0, 15, 30, 45}
        hour_text = "*" if hours is None else ",".join(map(str, sorted(hours)))
        hour_set = set(range(24)) if hours is None else hours
        cron = CronExpression.parse(f"{minute_text} {hour_text} * * *")
        wall_clock = not star_minute and hours is not None
        expected = minute_scan(minutes, hour_set, wall_clock, zone, after)
        got = list(itertools.islice(cron.iter_after(after, zone), len(expected)))
        assert [m.isoformat() for m in got] == [m.isoformat() for m in expected]
        assert [m.fold for m in got] == [m.fold for m in expected]


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "field", "token", "position", "reason"),
        [
            ("60 * * * *", "minute", "60", 0, "out of range"),
            ("* 24 * * *", "hour", "24", 2, "out of range"),
            ("* * 0 * *", "day-of-month", "0", 4, "out of range"),
            ("* * * 13 *", "month", "13", 6, "out of range"),
            ("* * * * 8", "day-of-week", "8", 8, "out of range"),
            ("0 0 * * FOO", "day-of-week", "FOO", 8, "unknown name"),
            ("0 0 * FOO *", "month", "FOO", 6, "unknown name"),
            ("x * * * *", "minute", "x", 0, "not a number"),
            ("*/0 * * * *", "minute", "*/0", 0, "step"),
            ("*/x * * * *", "minute", "*/x", 0, "step"),
            ("*/61 * * * *", "minute", "*/61", 0, "between 1 and 60"),
            ("0 0 * * */9", "day-of-week", "*/9", 8, "between 1 and 8"),
            ("* 5-70 * * *", "hour", "70", 4, "out of range"),
            ("0 9-5 * * *", "hour", "9-5", 2, "backwards"),
            ("0 0 * * FRI-MON", "day-of-week", "FRI-MON", 8, "backwards"),
            ("1,,2 * * * *", "minute", "", 2, "empty list item"),
            ("1, * * * *", "minute", "", 2, "empty list item"),
            ("5- * * * *", "minute", "5-", 0, "start and an end"),
            ("L * * * *", "minute", "L", 0, "belong in the day-of-month"),
            ("0 0 * 5L *", "month", "5L", 6, "belong in the day-of-month"),
            ("0 0 1#2 * *", "day-of-month", "1#2", 4, "day-of-week"),
            ("0 0 * * 15W", "day-of-week", "15W", 8, "day-of-month"),
            ("0 0 * * L", "day-of-week", "L", 8, "last Friday"),
            ("0 0 5L * *", "day-of-month", "5L", 4, "day-of-week"),
            ("0 0 * * 1#6", "day-of-week", "6", 10, "from 1 to 5"),
            ("0 0 32W * *", "day-of-month", "32", 4, "from 1 to 31"),
            ("0 0 L-31 * *", "day-of-month", "31", 6, "from 0 to 30"),
            ("0 ? * * *", "hour", "?", 2, "stands alone"),
            ("0 0 ?,1 * *", "day-of-month", "?", 4, "stands alone"),
            ("0 0 30 2 *", "day-of-month", "30", 4, "never fire"),
            ("0 0 31 4,6,9,11 *", "day-of-month", "31", 4, "never fire"),
            ("0 0 */31 * 1#2", "day-of-month", "*/31", 4, "day-of-week"),
            ("* * * *", None, None, 7, "got 4"),
            ("* * * * * * *", None, "*", 12, "got 7"),
            ("", None, None, 0, "empty"),
            ("@reboot", None, "@reboot", 0, "start hook"),
            ("@fortnightly", None, "@fortnightly", 0, "unknown alias"),
            ("@daily 5", None, "5", 7, "stands alone"),
            ("* * * * ١", "day-of-week", "١", 8, "unknown name"),
            ("99999999999999999999 * * * *", "minute", "99999999999999999999", 0, "range"),
        ],
    )
    def test_error_names_field_token_and_position(
        self, text: str, field: str | None, token: str | None, position: int, reason: str
    ) -> None:
        with pytest.raises(CronSyntaxError) as caught:
            CronExpression.parse(text)
        error = caught.value
        assert (error.field, error.token, error.position) == (field, token, position)
        assert reason in error.reason
        assert error.expression == text
        assert isinstance(error, ValueError)

    def test_message_reads_as_one_line(self) -> None:
        with pytest.raises(CronSyntaxError) as caught:
            CronExpression.parse("0 0 * * FOO")
        assert str(caught.value) == (
            "invalid cron expression '0 0 * * FOO': day-of-week field 'FOO': "
            "unknown name (expected SUN-SAT or 0-7)"
        )


VALID = [
    "*/5 * * * *",
    "0 2 * * *",
    "0 9 * * 1-5",
    "0 0 29 2 *",
    "0 0 L * *",
    "0 0 LW * *",
    "0 0 15W * *",
    "0 0 L-3 * *",
    "0 0 * * 5L",
    "0 0 * * MON#2",
    "*/10 0-30/5 1,2,3 JAN-MAR/2 SUN,WED",
    "@daily",
    "0 0 ? * 1",
]
CRON_CHARACTERS = "0123456789*/,-#?LW@ JANFEBMONSUNlw\t"


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        character = draw(st.sampled_from(CRON_CHARACTERS) | st.characters())
        if kind == "insert":
            text = text[:position] + character + text[position:]
        elif kind == "delete":
            text = text[:position] + text[position + 1 :]
        else:
            text = text[:position] + character + text[position + 1 :]
    return text


class TestFuzz:
    @settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
    @given(text=st.text(max_size=40) | st.text(CRON_CHARACTERS, max_size=40) | mutated())
    def test_parse_raises_only_cron_syntax_error(self, text: str) -> None:
        try:
            cron = CronExpression.parse(text)
        except CronSyntaxError as caught:
            error = caught
        else:
            # Anything that parses fires again, and within 400 years (the Gregorian cycle).
            fire = cron.next_after(START)
            assert START < fire < START.replace(year=2424)
            return
        assert error.expression == text
        assert error.position is None or 0 <= error.position <= len(text)
        if error.token is not None and error.position is not None:
            assert text[error.position : error.position + len(error.token)] == error.token
        assert "\n" not in str(error)


# An independent model of cron, built from the generated pieces, to check against.


def plain_items(low: int, high: int) -> st.SearchStrategy[tuple[str, set[int]]]:
    values = st.integers(low, high)
    steps = st.integers(1, high - low + 1)

    def one(value: int) -> tuple[str, set[int]]:
        return str(value), {value}

    def span(pair: tuple[int, int], step: int) -> tuple[str, set[int]]:
        a, b = sorted(pair)
        return f"{a}-{b}/{step}", set(range(a, b + 1, step))

    return st.one_of(
        st.just(("*", set(range(low, high + 1)))),
        steps.map(lambda n: (f"*/{n}", set(range(low, high + 1, n)))),
        values.map(one),
        st.builds(span, st.tuples(values, values), steps),
        st.builds(lambda a, n: (f"{a}/{n}", set(range(a, high + 1, n))), values, steps),
    )


@st.composite
def field(draw: st.DrawFn, low: int, high: int) -> tuple[str, set[int]]:
    items = draw(st.lists(plain_items(low, high), min_size=1, max_size=3))
    return ",".join(text for text, _ in items), set().union(*(values for _, values in items))


DayTest = Callable[[date], bool]


def last_day(day: date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


def nearest_weekday(day: date, target: int) -> bool:
    length = last_day(day)
    if target > length:
        return False
    wanted = date(day.year, day.month, target)
    if wanted.weekday() == 5:
        wanted += timedelta(days=-1 if target > 1 else 2)
    elif wanted.weekday() == 6:
        wanted += timedelta(days=1 if target < length else -2)
    return day == wanted


def cron_weekday(day: date) -> int:
    return (day.weekday() + 1) % 7


@st.composite
def day_of_month(draw: st.DrawFn) -> tuple[str, DayTest]:
    kind = draw(st.sampled_from(["plain", "L", "L-n", "nW", "LW"]))
    if kind == "plain":
        text, values = draw(field(1, 31))
        return text, lambda day: day.day in values
    if kind == "L":
        return "L", lambda day: day.day == last_day(day)
    if kind == "L-n":
        offset = draw(st.integers(0, 30))
        return f"L-{offset}", lambda day: day.day == last_day(day) - offset
    if kind == "nW":
        target = draw(st.integers(1, 31))
        return f"{target}W", lambda day: nearest_weekday(day, target)
    return "LW", lambda day: nearest_weekday(day, last_day(day))


@st.composite
def day_of_week(draw: st.DrawFn) -> tuple[str, DayTest]:
    kind = draw(st.sampled_from(["plain", "plain", "nL", "n#k"]))
    weekday = draw(st.integers(0, 7))
    if kind == "plain":
        text, values = draw(field(0, 7))
        folded = {value % 7 for value in values}
        return text, lambda day: cron_weekday(day) in folded
    if kind == "nL":
        return (
            f"{weekday}L",
            lambda day: cron_weekday(day) == weekday % 7 and day.day + 7 > last_day(day),
        )
    nth = draw(st.integers(1, 5))
    return (
        f"{weekday}#{nth}",
        lambda day: cron_weekday(day) == weekday % 7 and (day.day - 1) // 7 + 1 == nth,
    )


@attrs.frozen
class Model:
    text: str
    minutes: list[int]
    hours: list[int]
    day_matches: DayTest

    def next_after(self, after: datetime) -> datetime | None:
        day = after.date()
        for _ in range(366 * 400):
            if self.day_matches(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        moment = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
                        if moment > after:
                            return moment
            day += timedelta(days=1)
        return None


@st.composite
def modelled(draw: st.DrawFn) -> Model:
    minute_text, minutes = draw(field(0, 59))
    hour_text, hours = draw(field(0, 23))
    month_text, months = draw(field(1, 12))
    dom_text, dom = draw(day_of_month())
    dow_text, dow = draw(day_of_week())
    both = not dom_text.startswith("*") and not dow_text.startswith("*")

    def day_matches(day: date) -> bool:
        if day.month not in months:
            return False
        return (dom(day) or dow(day)) if both else (dom(day) and dow(day))

    text = f"{minute_text} {hour_text} {dom_text} {month_text} {dow_text}"
    return Model(text, sorted(minutes), sorted(hours), day_matches)


class TestAgainstModel:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        model=modelled(),
        start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)),
    )
    def test_matches_a_brute_force_model(self, model: Model, start: datetime) -> None:
        after = start.replace(tzinfo=UTC)
        expected = model.next_after(after)
        reason: str | None = None
        try:
            cron = CronExpression.parse(model.text)
        except CronSyntaxError as caught:
            reason = caught.reason
        if reason is not None:
            assert "never fire" in reason
            assert expected is None
            return
        moment = after
        for _ in range(3):
            assert expected is not None
            moment = cron.next_after(moment)
            assert moment == expected, model.text
            expected = model.next_after(moment)
