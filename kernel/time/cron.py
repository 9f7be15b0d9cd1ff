"""Cron expressions, parsed once into bitsets.

A `CronExpression` holds one integer bitmask per field (bit *n* set when
value *n* is allowed) plus, for the day fields, the 28 day-of-month masks a
month can need: a month's matching days depend only on its length (28-31)
and the weekday of its 1st, so every L / W / # rule and Vixie's day-of-month
OR day-of-week rule is folded into those masks at parse time. `next_after`
then walks naive wall-clock fields as plain ints ("next set bit >= x" is
``(mask >> x) & -(mask >> x)``), jumping whole months, days and hours at a
time, and builds a `datetime` only for the answer. Prior art: Vixie cron's
bit_set arrays, cronsim (the reference for semantics here), croniter.

Syntax: five fields ``minute hour day-of-month month day-of-week``, or six
with a leading ``second`` field (Quartz and APScheduler put seconds first;
croniter puts them last, and we do not follow croniter there).

DST policy (the time zone is a `zoneinfo.ZoneInfo` or any PEP 495 tzinfo):

* A *fixed-time* schedule, one whose minute and hour fields both do not start
  with ``*`` (``30 2 * * *``, ``0 9 * * 1-5``), follows the wall clock like
  Vixie cron: a wall time skipped by spring-forward fires once, at the first
  valid instant after it (``30 2 * * *`` in Europe/Berlin fires at 03:00 on
  the spring-forward day; several skipped slots coalesce into one fire); a
  wall time repeated by fall-back fires once, at its first occurrence.
* An *interval* schedule, one whose minute or hour field starts with ``*``
  (``*/15 * * * *``, ``0 * * * *``), follows elapsed time like cronsim: it
  fires at every real instant whose local wall time matches, so during a
  repeated hour it fires in both passes, and skipped wall times simply do not
  occur.

cronsim applies the wall-clock rule to 5-field expressions only; here the
seconds field plays no part in choosing the rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo

import attrs

from kernel.errors import CronSyntaxError

__all__ = ["CronExpression", "parse_cron"]

_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()
_MAX_YEAR = 9999
_DAYS_BEFORE_MONTH = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
_MONTH_LENGTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Bits 1, 8, 15, 22, 29, 36: one weekday's days in a month whose 1st is that weekday.
_WEEKLY = sum(1 << (1 + 7 * k) for k in range(6))

_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        start=1,
    )
}
_DAY_NAMES = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
}

_ALIASES = {
    "@YEARLY": "0 0 1 1 *",
    "@ANNUALLY": "0 0 1 1 *",
    "@MONTHLY": "0 0 1 * *",
    "@WEEKLY": "0 0 * * 0",
    "@DAILY": "0 0 * * *",
    "@MIDNIGHT": "0 0 * * *",
    "@HOURLY": "0 * * * *",
}

_TOKEN = re.compile(r"\S+")
_LAST_MINUS = re.compile(r"L-([0-9]+)")


@attrs.frozen
class _Field:
    """One field's name, value range and symbolic names (for error messages too)."""

    name: str
    low: int
    high: int
    names: dict[str, int] = attrs.field(factory=dict)

    def expected(self) -> str:
        if self.names:
            first, *_, last = self.names
            return f"{first}-{last} or {self.low}-{self.high}"
        return f"{self.low}-{self.high}"


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY_OF_MONTH = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTH_NAMES)
_DAY_OF_WEEK = _Field("day-of-week", 0, 7, _DAY_NAMES)


@attrs.frozen
class _DayRules:
    """What the two day fields ask for, before it is folded into month masks.

    ``dom_mask`` / ``dow_mask`` are the plain values (bit 0 of ``dow_mask`` is
    Sunday); the tuples hold L / W / # items; the ``*_restricted`` flags decide
    Vixie's OR (both restricted) versus AND.
    """

    dom_mask: int
    dom_last: tuple[int, ...]  # L-n offsets (L is 0)
    dom_nearest_weekday: tuple[int, ...]  # nW days
    dom_last_weekday: bool  # LW
    dom_restricted: bool
    dow_mask: int
    dow_last: tuple[int, ...]  # nL weekdays
    dow_nth: tuple[tuple[int, int], ...]  # n#k as (weekday, k)
    dow_restricted: bool

    def month_mask(self, length: int, first_weekday: int) -> int:
        """Days (bits 1..length) that fire in a month of this shape."""
        all_days = ((1 << length) - 1) << 1
        dom = self.dom_mask & all_days
        for offset in self.dom_last:
            if offset < length:
                dom |= 1 << (length - offset)
        for day in self.dom_nearest_weekday:
            if day <= length:
                dom |= 1 << _nearest_weekday(day, length, first_weekday)
        if self.dom_last_weekday:
            dom |= 1 << _nearest_weekday(length, length, first_weekday)
        dow = 0
        for weekday in range(7):
            if (self.dow_mask >> weekday) & 1:
                dow |= _WEEKLY << ((weekday - first_weekday) % 7)
        last_weekday = (first_weekday + length - 1) % 7
        for weekday in self.dow_last:
            dow |= 1 << (length - (last_weekday - weekday) % 7)
        for weekday, nth in self.dow_nth:
            day = 1 + (weekday - first_weekday) % 7 + 7 * (nth - 1)
            if day <= length:
                dow |= 1 << day
        dow &= all_days
        if self.dom_restricted and self.dow_restricted:
            return dom | dow  # Vixie: either field may match
        return dom & dow


def _nearest_weekday(day: int, length: int, first_weekday: int) -> int:
    """Quartz's ``nW``: the weekday nearest to ``day`` without leaving the month."""
    weekday = (first_weekday + day - 1) % 7
    if weekday == 6:  # Saturday: Friday before, or Monday after the 1st
        return day - 1 if day > 1 else day + 2
    if weekday == 0:  # Sunday: Monday after, or Friday before the last day
        return day + 1 if day < length else day - 2
    return day


def _ordinal(year: int, month: int, day: int) -> int:
    """`date.toordinal` without building a date (0001-01-01 is 1, a Monday)."""
    before = year - 1
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return (
        before * 365
        + before // 4
        - before // 100
        + before // 400
        + _DAYS_BEFORE_MONTH[month]
        + (1 if leap and month > 2 else 0)
        + day
    )


def _lowest_bit(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def _seconds(offset: timedelta | None) -> int:
    assert offset is not None
    return offset.days * 86_400 + offset.seconds


def _offset_at(timestamp: int, tz: tzinfo) -> int:
    return _seconds(datetime.fromtimestamp(timestamp, tz).utcoffset())


def _transition_after(low: int, high: int, tz: tzinfo, offset_before: int) -> int:
    """The first instant in ``(low, high]`` whose UTC offset is no longer ``offset_before``.

    zoneinfo does not expose its transition table, so bisect; this runs only
    when a fire time lands in a gap or a fold, at most twice a year per zone.
    """
    while high - low > 1:
        middle = (low + high) // 2
        if _offset_at(middle, tz) == offset_before:
            low = middle
        else:
            high = middle
    return high


_Wall = tuple[int, int, int, int, int, int]


def _wall_of(moment: datetime) -> _Wall:
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


def _timestamp(moment: datetime) -> int:
    """Whole seconds since the epoch of an aware datetime, exactly (no float)."""
    return _wall_timestamp(_wall_of(moment)) - _seconds(moment.utcoffset())


def _wall_timestamp(wall: _Wall) -> int:
    """Seconds since 1970-01-01T00:00 of a naive wall time (as if it were UTC)."""
    year, month, day, hour, minute, second = wall
    days = _ordinal(year, month, day) - _EPOCH_ORDINAL
    return days * 86_400 + hour * 3600 + minute * 60 + second


@attrs.frozen
class CronExpression:
    """A parsed cron expression; build it with `CronExpression.parse`.

    ``next_after`` answers "first fire time strictly after this instant" in a
    time zone, with the DST policy of this module's docstring.
    """

    expression: str
    has_seconds: bool
    _seconds: int = attrs.field(repr=False)
    _minutes: int = attrs.field(repr=False)
    _hours: int = attrs.field(repr=False)
    _months: int = attrs.field(repr=False)
    # Indexed by (month length - 28) * 7 + weekday of the 1st (0 = Sunday).
    _day_masks: tuple[int, ...] = attrs.field(repr=False)
    _follows_wall_clock: bool = attrs.field(repr=False)

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse ``text``; raise `CronSyntaxError` naming the field and bad token."""
        return _Parser(text).parse()

    def __str__(self) -> str:
        return self.expression

    def next_after(self, after: datetime, tz: tzinfo | None = None) -> datetime:
        """The first fire time strictly after ``after``, aware in ``tz``.

        ``tz`` defaults to ``after.tzinfo``. A naive ``after`` is read as a wall
        time in ``tz`` (its ``fold`` picks the pass of a repeated hour); naive
        with no ``tz`` is a `ValueError`, since it names no instant.
        """
        if tz is None:
            tz = after.tzinfo
            if tz is None:
                raise ValueError("next_after() needs an aware datetime or a tz")
        if isinstance(tz, timezone):  # a fixed offset: wall time is elapsed time
            local = after.replace(tzinfo=tz) if after.tzinfo is None else after.astimezone(tz)
            wall = self._next_wall(
                local.year, local.month, local.day, local.hour, local.minute, local.second + 1
            )
            return datetime(*wall, tzinfo=tz)
        first_pass: bool | None = None  # is ``local`` in the first pass of a repeated hour?
        if after.tzinfo is tz or after.tzinfo is None:
            local = after if after.tzinfo is tz else after.replace(tzinfo=tz)
            other_fold = datetime(*_wall_of(local), tzinfo=tz, fold=1 - local.fold).utcoffset()
            if other_fold == local.utcoffset():
                first_pass = False
            else:  # in a gap or a fold: let zoneinfo normalise it and set fold
                local = local.astimezone(UTC).astimezone(tz)
        else:
            local = after.astimezone(tz)
        wall = self._next_wall(
            local.year, local.month, local.day, local.hour, local.minute, local.second + 1
        )
        if self._follows_wall_clock:
            return self._resolve_wall_clock(local, wall, tz)
        if first_pass is None:
            first_pass = local.fold == 0 and _seconds(
                datetime(*_wall_of(local), tzinfo=tz, fold=1).utcoffset()
            ) < _seconds(local.utcoffset())
        return self._resolve_elapsed(local, wall, tz, first_pass)

    def iter_after(self, after: datetime, tz: tzinfo | None = None) -> Iterator[datetime]:
        """Fire times strictly after ``after``, in order, without end."""
        moment = after
        while True:
            moment = self.next_after(moment, tz)
            yield moment

    def _resolve_wall_clock(self, local: datetime, wall: _Wall, tz: tzinfo) -> datetime:
        """Fixed-time rule: a skipped wall time fires at the gap's end, a repeated one once."""
        while True:
            first = datetime(*wall, tzinfo=tz)
            offset_first = _seconds(first.utcoffset())
            offset_second = _seconds(datetime(*wall, tzinfo=tz, fold=1).utcoffset())
            if offset_first == offset_second:
                return first
            naive = _wall_timestamp(wall)
            if offset_first < offset_second:  # in a spring-forward gap
                end = _transition_after(
                    naive - offset_second, naive - offset_first, tz, offset_first
                )
                return datetime.fromtimestamp(end, tz)
            # A repeated wall time fires at its first pass, unless that is already past.
            if naive - offset_first > _timestamp(local):
                return first
            year, month, day, hour, minute, second = wall
            wall = self._next_wall(year, month, day, hour, minute, second + 1)

    def _resolve_elapsed(
        self, local: datetime, wall: _Wall, tz: tzinfo, first_pass: bool
    ) -> datetime:
        """Interval rule: every real instant whose wall time matches, in both passes of a fold."""
        if first_pass:  # the rest of this pass, then the second pass, then past the fold
            offset = _seconds(local.utcoffset())
            offset_second = _seconds(datetime(*_wall_of(local), tzinfo=tz, fold=1).utcoffset())
            after_timestamp = _timestamp(local)
            change = _transition_after(
                after_timestamp, after_timestamp + offset - offset_second, tz, offset
            )
            fold_start = _wall_of(datetime.fromtimestamp(change + offset_second, UTC))
            fold_end = _wall_of(datetime.fromtimestamp(change + offset, UTC))
            if wall < fold_end:
                return datetime(*wall, tzinfo=tz)
            wall = self._next_wall(*fold_start)
            if wall < fold_end:
                return datetime(*wall, tzinfo=tz, fold=1)
            wall = self._next_wall(*fold_end)
        while True:
            first = datetime(*wall, tzinfo=tz)
            offset_first = _seconds(first.utcoffset())
            offset_second = _seconds(datetime(*wall, tzinfo=tz, fold=1).utcoffset())
            if offset_first == offset_second:
                return first
            naive = _wall_timestamp(wall)
            if offset_first < offset_second:  # skipped: resume at the gap's end
                end = _transition_after(
                    naive - offset_second, naive - offset_first, tz, offset_first
                )
                wall = self._next_wall(*_wall_of(datetime.fromtimestamp(end, tz)))
                continue
            if naive - offset_first > _timestamp(local):
                return first
            return datetime(*wall, tzinfo=tz, fold=1)

    def _next_wall(
        self, year: int, month: int, day: int, hour: int, minute: int, second: int
    ) -> _Wall:
        """The first matching naive wall time at or after the given fields.

        Fields may overflow by one (``second=60``): the carry falls out of the
        shifts, since no mask has a bit past its field's range.
        """
        months = self._months
        hours = self._hours
        minutes = self._minutes
        seconds = self._seconds
        day_masks = self._day_masks
        mask_year = mask_month = day_mask = 0  # the month whose day mask is at hand
        while True:
            bits = months >> month
            if not bits & 1:
                if bits:
                    month += _lowest_bit(bits)
                else:
                    year += 1
                    month = _lowest_bit(months)
                day, hour, minute, second = 1, 0, 0, 0
            if month != mask_month or year != mask_year:
                if year > _MAX_YEAR:
                    raise ValueError(
                        f"cron expression {self.expression!r} does not fire again before 10000"
                    )
                leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
                length = 29 if leap and month == 2 else _MONTH_LENGTH[month]
                day_mask = day_masks[(length - 28) * 7 + _ordinal(year, month, 1) % 7]
                mask_year, mask_month = year, month
            bits = day_mask >> day
            if not bits:
                month += 1
                day, hour, minute, second = 1, 0, 0, 0
                continue
            if not bits & 1:
                day += _lowest_bit(bits)
                hour, minute, second = 0, 0, 0
            bits = hours >> hour
            if not bits:
                day += 1
                hour, minute, second = 0, 0, 0
                continue
            if not bits & 1:
                hour += _lowest_bit(bits)
                minute, second = 0, 0
            bits = minutes >> minute
            if not bits:
                hour += 1
                minute, second = 0, 0
                continue
            if not bits & 1:
                minute += _lowest_bit(bits)
                second = 0
            bits = seconds >> second
            if not bits:
                minute += 1
                second = 0
                continue
            second += _lowest_bit(bits)
            return (year, month, day, hour, minute, second)


def parse_cron(text: str) -> CronExpression:
    """Alias of `CronExpression.parse`."""
    return CronExpression.parse(text)


def _span(low: int, high: int, step: int) -> int:
    mask = 0
    for value in range(low, high + 1, step):
        mask |= 1 << value
    return mask


class _Parser:
    """Turns text into a `CronExpression`, keeping character positions for errors."""

    def __init__(self, text: str) -> None:
        self.text = text

    def fail(
        self,
        reason: str,
        field: _Field | None = None,
        token: str | None = None,
        position: int | None = None,
    ) -> CronSyntaxError:
        return CronSyntaxError(
            self.text,
            reason,
            field=field.name if field else None,
            token=token,
            position=position,
        )

    def parse(self) -> CronExpression:
        if not isinstance(self.text, str):
            raise TypeError(f"a cron expression is a str, not {type(self.text).__name__}")
        tokens = [(match.group(), match.start()) for match in _TOKEN.finditer(self.text)]
        if not tokens:
            raise self.fail("empty expression", position=0)
        if tokens[0][0].startswith("@"):
            return self.parse_alias(tokens)
        if len(tokens) not in (5, 6):
            extra = tokens[6] if len(tokens) > 6 else None
            raise self.fail(
                "expected 5 fields (minute hour day-of-month month day-of-week) "
                f"or 6 with seconds first, got {len(tokens)}",
                token=extra[0] if extra else None,
                position=extra[1] if extra else len(self.text.rstrip()),
            )
        has_seconds = len(tokens) == 6
        if has_seconds:
            seconds = self.plain_field(_SECOND, *tokens[0])
            tokens = tokens[1:]
        else:
            seconds = 1
        minute_text, minute_position = tokens[0]
        hour_text, hour_position = tokens[1]
        minutes = self.plain_field(_MINUTE, minute_text, minute_position)
        hours = self.plain_field(_HOUR, hour_text, hour_position)
        dom_text, dom_position = tokens[2]
        months = self.plain_field(_MONTH, *tokens[3])
        dow_text, dow_position = tokens[4]
        rules = self.day_rules(dom_text, dom_position, dow_text, dow_position)
        day_masks = tuple(
            rules.month_mask(length, first_weekday)
            for length in range(28, 32)
            for first_weekday in range(7)
        )
        if not self.can_fire(months, day_masks):
            both = " and day-of-week" if dow_text not in ("*", "?") else ""
            raise self.fail(
                f"can never fire: no month allowed by the month field has a day that "
                f"matches day-of-month{both}",
                _DAY_OF_MONTH,
                dom_text,
                dom_position,
            )
        return CronExpression(
            expression=self.text.strip(),
            has_seconds=has_seconds,
            seconds=seconds,
            minutes=minutes,
            hours=hours,
            months=months,
            day_masks=day_masks,
            follows_wall_clock=not (minute_text.startswith("*") or hour_text.startswith("*")),
        )

    def parse_alias(self, tokens: list[tuple[str, int]]) -> CronExpression:
        alias, position = tokens[0]
        upper = alias.upper()
        if upper == "@REBOOT":
            raise self.fail(
                "@reboot is not a schedule: run start-up work from a plugin's start hook",
                token=alias,
                position=position,
            )
        if upper not in _ALIASES:
            known = ", ".join(name.lower() for name in _ALIASES)
            raise self.fail(f"unknown alias (known: {known})", token=alias, position=position)
        if len(tokens) > 1:
            raise self.fail("an @alias stands alone", token=tokens[1][0], position=tokens[1][1])
        parsed = _Parser(_ALIASES[upper]).parse()
        return attrs.evolve(parsed, expression=self.text.strip())

    @staticmethod
    def can_fire(months: int, day_masks: tuple[int, ...]) -> bool:
        """Every (month length, weekday of the 1st) pair recurs within 400 years."""
        for month in range(1, 13):
            if not (months >> month) & 1:
                continue
            lengths = (28, 29) if month == 2 else (_MONTH_LENGTH[month],)
            for length in lengths:
                for first_weekday in range(7):
                    if day_masks[(length - 28) * 7 + first_weekday]:
                        return True
        return False

    def items(self, field: _Field, text: str, position: int) -> Iterator[tuple[str, int]]:
        """The comma-separated items of a field with their positions; no empty ones."""
        offset = 0
        for item in text.split(","):
            if not item:
                raise self.fail("empty list item", field, item, position + offset)
            yield item, position + offset
            offset += len(item) + 1

    def plain_field(self, field: _Field, text: str, position: int) -> int:
        mask = 0
        for item, item_position in self.items(field, text, position):
            self.refuse_specials(field, item, item_position)
            mask |= self.range_item(field, item, item_position)
        return mask

    def refuse_specials(self, field: _Field, item: str, position: int) -> None:
        """Name L, W, # and ? as misplaced instead of as unknown names."""
        upper = item.upper()
        if item == "?":
            where = "stands alone in the day-of-month or day-of-week field"
            raise self.fail(f"'?' {where}", field, item, position)
        if "#" in item and field is not _DAY_OF_WEEK:
            raise self.fail(
                "'#' (n-th weekday) belongs in the day-of-week field", field, item, position
            )
        if field in (_DAY_OF_MONTH, _DAY_OF_WEEK):
            return
        if upper in ("L", "LW") or (len(upper) > 1 and upper[-1] in "LW" and upper[:-1].isdigit()):
            raise self.fail(
                "'L' and 'W' belong in the day-of-month and day-of-week fields",
                field,
                item,
                position,
            )

    def range_item(self, field: _Field, item: str, position: int) -> int:
        """``*``, ``v``, ``a-b``, each optionally ``/step``; ``v/step`` runs to the maximum."""
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()):
                raise self.fail("a step is a positive number, as in */5", field, item, position)
            span = field.high - field.low + 1
            if len(step_text) > 3 or not 1 <= int(step_text) <= span:
                raise self.fail(f"step must be between 1 and {span}", field, item, position)
            step = int(step_text)
        if body == "*":
            low, high = field.low, field.high
        elif "-" in body:
            start_text, _, end_text = body.partition("-")
            if not start_text or not end_text:
                raise self.fail(
                    "a range needs a start and an end, as in 1-5", field, item, position
                )
            low = self.value(field, start_text, position)
            high = self.value(field, end_text, position + len(start_text) + 1)
            if low > high:
                raise self.fail(
                    "range runs backwards (write a wrapping range as two, as in 22-23,0-2)",
                    field,
                    body,
                    position,
                )
        elif not body:
            raise self.fail("missing value before '/'", field, item, position)
        else:
            low = self.value(field, body, position)
            high = field.high if slash else low
        return _span(low, high, step)

    def value(self, field: _Field, text: str, position: int) -> int:
        upper = text.upper()
        if upper in field.names:
            return field.names[upper]
        if not (text.isascii() and text.isdigit()):
            what = "unknown name" if field.names else "not a number"
            raise self.fail(f"{what} (expected {field.expected()})", field, text, position)
        if len(text) > 4 or not field.low <= int(text) <= field.high:
            raise self.fail(f"out of range (expected {field.expected()})", field, text, position)
        return int(text)

    def number(
        self, field: _Field, text: str, position: int, low: int, high: int, what: str
    ) -> int:
        if not (text.isascii() and text.isdigit()) or len(text) > 4:
            raise self.fail(f"{what} must be a number from {low} to {high}", field, text, position)
        number = int(text)
        if not low <= number <= high:
            raise self.fail(f"{what} must be a number from {low} to {high}", field, text, position)
        return number

    def day_rules(
        self, dom_text: str, dom_position: int, dow_text: str, dow_position: int
    ) -> _DayRules:
        dom_mask = 0
        dom_last: list[int] = []
        dom_nearest: list[int] = []
        dom_last_weekday = False
        if dom_text == "?":
            dom_mask = _span(1, 31, 1)
        else:
            for item, position in self.items(_DAY_OF_MONTH, dom_text, dom_position):
                upper = item.upper()
                if upper == "L":
                    dom_last.append(0)
                elif upper == "LW":
                    dom_last_weekday = True
                elif match := _LAST_MINUS.fullmatch(upper):
                    offset_text = match.group(1)
                    dom_last.append(
                        self.number(
                            _DAY_OF_MONTH, offset_text, position + 2, 0, 30, "the offset in L-n"
                        )
                    )
                elif len(upper) > 1 and upper.endswith("W") and "/" not in upper:
                    dom_nearest.append(
                        self.number(_DAY_OF_MONTH, item[:-1], position, 1, 31, "the day in nW")
                    )
                elif len(upper) > 1 and upper.endswith("L") and upper[:-1].isdigit():
                    raise self.fail(
                        "'nL' (last weekday n) belongs in the day-of-week field; "
                        "L alone is the last day of the month",
                        _DAY_OF_MONTH,
                        item,
                        position,
                    )
                else:
                    self.refuse_specials(_DAY_OF_MONTH, item, position)
                    dom_mask |= self.range_item(_DAY_OF_MONTH, item, position)
        dow_mask = 0
        dow_last: list[int] = []
        dow_nth: list[tuple[int, int]] = []
        if dow_text == "?":
            dow_mask = _span(0, 6, 1)
        else:
            for item, position in self.items(_DAY_OF_WEEK, dow_text, dow_position):
                upper = item.upper()
                if "#" in upper:
                    weekday_text, _, nth_text = item.partition("#")
                    weekday = self.value(_DAY_OF_WEEK, weekday_text, position)
                    nth = self.number(
                        _DAY_OF_WEEK,
                        nth_text,
                        position + len(weekday_text) + 1,
                        1,
                        5,
                        "n in weekday#n",
                    )
                    dow_nth.append((weekday % 7, nth))
                elif upper == "L":
                    raise self.fail(
                        "L alone is ambiguous here: write 5L for the last Friday of the month",
                        _DAY_OF_WEEK,
                        item,
                        position,
                    )
                elif upper.endswith("L") and "/" not in upper and "-" not in upper:
                    dow_last.append(self.value(_DAY_OF_WEEK, item[:-1], position) % 7)
                elif upper == "LW" or (upper.endswith("W") and upper[:-1].isdigit()):
                    raise self.fail(
                        "'W' (nearest weekday) belongs in the day-of-month field",
                        _DAY_OF_WEEK,
                        item,
                        position,
                    )
                else:
                    self.refuse_specials(_DAY_OF_WEEK, item, position)
                    dow_mask |= self.range_item(_DAY_OF_WEEK, item, position)
            if dow_mask >> 7:  # 7 is Sunday too
                dow_mask = (dow_mask | 1) & 0x7F
        return _DayRules(
            dom_mask=dom_mask,
            dom_last=tuple(dom_last),
            dom_nearest_weekday=tuple(dom_nearest),
            dom_last_weekday=dom_last_weekday,
            dom_restricted=not dom_text.startswith(("*", "?")),
            dow_mask=dow_mask,
            dow_last=tuple(dow_last),
            dow_nth=tuple(dow_nth),
            dow_restricted=not dow_text.startswith(("*", "?")),
        )
