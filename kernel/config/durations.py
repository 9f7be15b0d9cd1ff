"""Durations as config files spell them: ``"90s"``, ``"5m"``, ``"1h30m"``,
``"2d"``, ``"250ms"``, or a number of seconds."""

from __future__ import annotations

import datetime
import math
import re
from decimal import Decimal, InvalidOperation

from kernel.config._messages import SCALAR_NAMES, BadValue, format_duration

__all__ = ["describe_duration", "format_duration", "parse_duration"]

# ---------------------------------------------------------------------------
# Durations
# ---------------------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(
    rf"\s*(?:{_NUMBER}d)?\s*(?:{_NUMBER}h)?\s*(?:{_NUMBER}m(?!s))?\s*"
    rf"(?:{_NUMBER}s)?\s*(?:{_NUMBER}ms)?\s*"
)
_UNIT_MICROSECONDS = (86_400_000_000, 3_600_000_000, 60_000_000, 1_000_000, 1_000)
_DURATION_EXPECTED = "a duration like '90s', '5m', '1h30m', '2d' or '250ms'"
_DESCRIBE_DURATION = SCALAR_NAMES[datetime.timedelta]


def parse_duration(value: object) -> datetime.timedelta:
    """The `datetime.timedelta` a config value spells.

    A number is seconds (``90``, ``0.5``); a string is components in
    descending order, each at most once, with optional spaces between:
    ``d`` days, ``h`` hours, ``m`` minutes, ``s`` seconds, ``ms``
    milliseconds (``"1h30m"``, ``"2d 12h"``, ``"1.5s"``, ``"250ms"``), the
    syntax of Go's ``time.ParseDuration`` and systemd, minus the signs.
    Sub-microsecond remainders are rounded to the nearest microsecond.
    Negative, non-finite and out-of-range values raise `ValueError`.
    """
    if isinstance(value, datetime.timedelta):
        if value < datetime.timedelta(0):
            raise BadValue("a duration that is not negative", value)
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise BadValue("a number of seconds that is not negative", value)
        try:
            return datetime.timedelta(seconds=value)
        except OverflowError:
            raise BadValue("a duration of at most 999999999 days", value) from None
    if not isinstance(value, str):
        raise BadValue(_DESCRIBE_DURATION, value)
    match = _DURATION.fullmatch(value)
    if match is None or not any(match.groups()):
        raise BadValue(_DURATION_EXPECTED, value)
    try:
        micros = sum(
            (
                Decimal(number) * unit
                for number, unit in zip(match.groups(), _UNIT_MICROSECONDS, strict=True)
                if number is not None
            ),
            Decimal(0),
        )
        return datetime.timedelta(microseconds=int(micros.to_integral_value()))
    except (OverflowError, InvalidOperation):
        raise BadValue("a duration of at most 999999999 days", value) from None


def describe_duration(value: datetime.timedelta | float) -> str:
    """``value`` (a timedelta or seconds) for people to read, in the syntax
    `parse_duration` reads: three significant figures below a minute
    (``"0.42ms"``, ``"12ms"``, ``"1.5s"``, ``"2s"``), then whole seconds,
    minutes or hours in the two largest units (``"1m"``, ``"1m30s"``,
    ``"2h5m"``, ``"3d4h"``). Used by every human view (``kernel status``,
    the log), so a duration reads the same everywhere; `format_duration` is
    the exact spelling for config files."""
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r}")
    if seconds == 0:
        return "0s"
    if seconds < 1:
        milliseconds = float(f"{seconds * 1000:.3g}")
        if milliseconds < 1000:
            return f"{milliseconds:g}ms"
        seconds = 1.0
    if seconds < 60:
        shown = float(f"{seconds:.3g}")
        if shown < 60:
            return f"{shown:g}s"
    units = ((86_400, "d", 3_600, "h"), (3_600, "h", 60, "m"), (60, "m", 1, "s"))
    for size, name, smaller, smaller_name in units:  # pragma: no branch - seconds >= 59.95
        rounded = round(seconds / smaller) * smaller
        if rounded >= size:
            first, rest = divmod(rounded, size)
            return f"{first}{name}" + (f"{rest // smaller}{smaller_name}" if rest else "")
    raise AssertionError("unreachable")  # pragma: no cover
