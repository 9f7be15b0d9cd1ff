"""How config errors describe values and types: ``'10' (a string)``, ``an
integer``, ``one of 'a', 'b'`` (private to `kernel.config`)."""

from __future__ import annotations

import collections.abc
import datetime
import difflib
import enum
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
from cattrs.errors import AttributeValidationNote, IterableValidationNote

from kernel.serialization import converter

T = TypeVar("T")

# ---------------------------------------------------------------------------
# Describing values and types in messages
# ---------------------------------------------------------------------------

MAX_SHOWN = 60


class BadValue(ValueError):
    """A value that is not what a hook or validator expected.

    Raised inside the converter; `structure_config` turns it into a
    `ConfigError` problem with ``expected`` set. As a `ValueError` it is also
    what a user constructing a kernel class in Python sees.
    """

    def __init__(self, expected: str, value: object) -> None:
        self.expected = expected
        self.value = value
        super().__init__(f"expected {expected}, got {show(value)}")


def format_duration(value: datetime.timedelta) -> str:
    """``value`` in the syntax `parse_duration` reads, largest units first
    (``"1d2h3m4.5s"``; zero is ``"0s"``). Negative durations have no
    spelling and raise `ValueError`."""
    if value < datetime.timedelta(0):
        raise ValueError(f"a negative duration has no config spelling: {value!r}")
    seconds = value.seconds
    parts = []
    if value.days:
        parts.append(f"{value.days}d")
    if seconds // 3600:
        parts.append(f"{seconds // 3600}h")
    if seconds % 3600 // 60:
        parts.append(f"{seconds % 3600 // 60}m")
    if seconds % 60 or value.microseconds:
        fraction = f".{value.microseconds:06d}".rstrip("0") if value.microseconds else ""
        parts.append(f"{seconds % 60}{fraction}s")
    return "".join(parts) or "0s"


def show(value: object) -> str:
    """``value`` as a config author would recognise it: TOML spellings for
    booleans, ``a table`` for a mapping, quoted strings, durations as
    ``1h30m``; cut short when long."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, datetime.timedelta) and value >= datetime.timedelta(0):
        return format_duration(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    shown = repr(value)
    if len(shown) > MAX_SHOWN:
        shown = shown[: MAX_SHOWN - 3] + "..."
    return shown


SCALAR_NAMES: dict[object, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "a boolean (true or false)",
    datetime.timedelta: "a duration (a number of seconds or a string like '90s' or '1h30m')",
    Path: "a path",
    datetime.datetime: "a date-time",
    datetime.date: "a date",
    datetime.time: "a time of day",
    type(None): "nothing",
}


def describe(tp: Any) -> str:
    """What a value of type ``tp`` looks like in TOML, for "expected ..."."""
    if tp in SCALAR_NAMES:
        return SCALAR_NAMES[tp]
    if tp is Any or tp is object:
        return "any value"
    if is_union(tp):
        described: list[str] = []
        for member in typing.get_args(tp):
            if member is type(None):
                continue
            text = describe(member)
            if text not in described:
                described.append(text)
        return " or ".join(described)
    if is_literal(tp):
        return one_of([literal_value(arg) for arg in typing.get_args(tp)])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return one_of([member.value for member in tp])
    if is_array_type(tp):
        return "an array"
    if is_table_type(tp) or attrs.has(tp):
        return "a table"
    name = getattr(tp, "__name__", None) or repr(tp)
    return f"a {name}"


def one_of(values: list[object]) -> str:
    if len(values) == 1:
        return show(values[0])
    return "one of " + ", ".join(show(value) for value in values)


def literal_value(arg: object) -> object:
    return arg.value if isinstance(arg, enum.Enum) else arg


def is_literal(tp: Any) -> bool:
    origin: object = typing.get_origin(tp)
    return origin is Literal


def is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


ARRAY_ORIGINS: frozenset[object] = frozenset(
    {
        list,
        tuple,
        set,
        frozenset,
        collections.abc.Sequence,
        collections.abc.MutableSequence,
        collections.abc.Set,
        collections.abc.MutableSet,
        collections.abc.Collection,
        collections.abc.Iterable,
    }
)
TABLE_ORIGINS: frozenset[object] = frozenset(
    {dict, collections.abc.Mapping, collections.abc.MutableMapping}
)


def is_array_type(tp: Any) -> bool:
    return (typing.get_origin(tp) or tp) in ARRAY_ORIGINS


def is_table_type(tp: Any) -> bool:
    return (typing.get_origin(tp) or tp) in TABLE_ORIGINS


# ---------------------------------------------------------------------------
# Key paths and cattrs' notes
# ---------------------------------------------------------------------------

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join_key_path(prefix: str, segments: tuple[str | int, ...]) -> str:
    """Segments joined as TOML writes a key path: ``a.b``, ``a."x.y"``,
    ``rules[2].days``."""
    path = prefix
    for segment in segments:
        if isinstance(segment, int):
            path += f"[{segment}]"
            continue
        key = segment if BARE_KEY.fullmatch(segment) else quote_key(segment)
        path = f"{path}.{key}" if path else key
    return path


def quote_key(key: str) -> str:
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'"{escaped}"'


N = TypeVar("N", AttributeValidationNote, IterableValidationNote)


def note_of(error: BaseException, kind: type[N]) -> N | None:
    """The last note of ``kind``: the one the innermost enclosing hook added."""
    found = None
    for note in getattr(error, "__notes__", ()):
        if isinstance(note, kind):
            found = note
    return found


def known_keys(cls: type) -> list[str]:
    if not attrs.has(cls):
        return []
    return [key_of(field) for field in attrs.fields(typing.get_origin(cls) or cls) if field.init]


def unknown_key_reason(key: str, known: list[str]) -> str:
    """``unknown key 'intervl'; did you mean 'interval'?`` (difflib's close
    matches, as Python's own NameError suggestions) or the known keys."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    if known:
        return f"unknown key {key!r}; known keys: {', '.join(map(repr, known))}"
    return f"unknown key {key!r}"


def key_of(field: attrs.Attribute[Any]) -> str:
    """The config key of an attrs field, as cattrs' generated code reads it."""
    return field.alias if converter.use_alias and field.alias else field.name
