"""kernel.time.cron against two independent implementations, cronsim and croniter.

Hypothesis writes 5-field expressions from the syntax all three share and
start instants in 2000-2040 (often within hours of a DST change) in UTC and
three DST zones. Where cronsim and croniter agree with each other, we must
agree with both; where they disagree there is no oracle and the case is
skipped. The deliberate differences (docs/cron.md) are all of the second
kind, so none is excused here.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from cronsim import CronSim, CronSimError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kernel.errors import CronSyntaxError
from kernel.time.cron import CronExpression

ZONES = [
    UTC,
    ZoneInfo("Europe/Berlin"),
    ZoneInfo("America/New_York"),
    ZoneInfo("Australia/Lord_Howe"),
]
STEPS = 4


@functools.cache
def transitions() -> tuple[datetime, ...]:
    """UTC instants of every offset change of the DST zones in 2000-2040, to aim starts at."""
    found = []
    for zone in ZONES[1:]:
        moment = datetime(2000, 1, 1, tzinfo=UTC)
        offset = moment.astimezone(zone).utcoffset()
        while moment.year < 2041:
            later = moment + timedelta(days=1)
            if later.astimezone(zone).utcoffset() != offset:
                low, high = moment, later
                while high - low > timedelta(minutes=1):
                    middle = low + (high - low) / 2
                    if middle.astimezone(zone).utcoffset() == offset:
                        low = middle
                    else:
                        high = middle
                found.append(high)
                offset = later.astimezone(zone).utcoffset()
            moment = later
    return tuple(found)


def values(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    step = st.integers(1, high - low + 1)
    # A range of one value ('5-5', '0-0/1') is left out: cronsim reads 'a-a/n' as 'a/n' and
    # croniter reads 'a-a' as '*', so where they agree they are both wrong (docs/cron.md).
    pair = st.integers(low, high - 1).flatmap(
        lambda a: st.tuples(st.just(a), st.integers(a + 1, high))
    )
    return st.one_of(
        number.map(str),
        step.map(lambda n: f"*/{n}"),
        pair.map(lambda p: f"{p[0]}-{p[1]}"),
        st.tuples(pair, step).map(lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
    )


def field(low: int, high: int, star: int = 3) -> st.SearchStrategy[str]:
    listed = st.lists(values(low, high), min_size=1, max_size=3).map(",".join)
    return st.one_of(*[st.just("*")] * star, listed)


expressions = st.tuples(
    field(0, 59, star=1),
    field(0, 23, star=2),
    field(1, 31) | st.just("L"),
    field(1, 12),
    field(0, 6) | st.tuples(st.integers(0, 6), st.integers(1, 5)).map(lambda t: f"{t[0]}#{t[1]}"),
).map(" ".join)


@st.composite
def starts(draw: st.DrawFn) -> datetime:
    zone = draw(st.sampled_from(ZONES))
    if zone is not UTC and draw(st.booleans()):
        near = draw(st.sampled_from(transitions()))
        moment = near + timedelta(seconds=draw(st.integers(-4 * 3600, 4 * 3600)))
        moment = moment.replace(second=draw(st.sampled_from([0, moment.second])))
        return moment.astimezone(zone)
    naive = draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 12, 31)))
    return naive.replace(tzinfo=UTC).astimezone(zone)


def cronsim_fires(expression: str, start: datetime) -> list[datetime] | None:
    try:
        iterator = CronSim(expression, start)
        return [next(iterator) for _ in range(STEPS)]
    except (CronSimError, StopIteration):
        return None


def croniter_fires(expression: str, start: datetime) -> list[datetime] | None:
    try:
        iterator = croniter(expression, start)
        return [iterator.get_next(datetime) for _ in range(STEPS)]
    except Exception:  # croniter has many error types; any of them means "no oracle"
        return None


def agreed_prefix(first: list[datetime], second: list[datetime]) -> list[datetime]:
    """The leading fire times on which both oracles agree, as instants and as wall times."""
    agreed = []
    for a, b in zip(first, second, strict=True):
        if a != b or a.utcoffset() != b.utcoffset():
            break
        agreed.append(a)
    return agreed


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(expression=expressions, start=starts())
def test_agrees_with_cronsim_and_croniter_where_they_agree(
    expression: str, start: datetime
) -> None:
    by_cronsim = cronsim_fires(expression, start)
    by_croniter = croniter_fires(expression, start)
    assume(by_cronsim is not None and by_croniter is not None)
    assert by_cronsim is not None
    assert by_croniter is not None
    agreed = agreed_prefix(by_cronsim, by_croniter)
    assume(agreed)
    try:
        cron = CronExpression.parse(expression)
    except CronSyntaxError as error:
        raise AssertionError(f"both oracles accept {expression!r}: {error}") from None
    ours = []
    moment = start
    for _ in agreed:
        moment = cron.next_after(moment)
        ours.append(moment)
    assert [m.isoformat() for m in ours] == [m.isoformat() for m in agreed], (
        expression,
        start.isoformat(),
    )
