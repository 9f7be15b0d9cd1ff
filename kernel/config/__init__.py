"""Configuration: TOML tables turned into attrs classes through cattrs.

A config file is read with the stdlib `tomllib` and structured by one
cattrs converter into frozen attrs classes, the way pydantic-settings or
Dynaconf validate settings, but with the kernel's own dependencies only.
The converter is strict where TOML is typed: a string is not an integer
(``"10"`` for ``int`` is an error, not a coercion), a number is not a
string, a string is not an array of characters, and a table with a key the
class does not know is an error that suggests the nearest known key.

Every failure, from a missing file to a validator deep inside a plugin's
config, is one `ConfigError` that names the source (a file path or
``"plugin 'sync'"``), the dotted key path as TOML would write it
(``plugins.sync.config.interval``, ``retention.rules[2].days``) and what was
expected. cattrs reports structuring failures as exception groups
(`cattrs.ClassValidationError`, `cattrs.IterableValidationError`) whose
members carry notes naming the attribute or index; `structure_config` walks
them into that one error, the way `cattrs.transform_error` does, but with
TOML key paths and sentences instead of ``$.a.b`` and type reprs.

Durations are written ``"90s"``, ``"5m"``, ``"1h30m"``, ``"2d"``,
``"250ms"`` or as a number of seconds (see `parse_duration`).
"""

from __future__ import annotations

import collections.abc
import datetime
import difflib
import enum
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar

import attrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
    StructureHandlerNotFoundError,
)

from kernel.errors import ConfigError
from kernel.serialization import converter

__all__ = [
    "KernelConfig",
    "KernelSettings",
    "LogLevel",
    "PluginEntry",
    "converter",
    "format_duration",
    "key_path",
    "load_config",
    "parse_config",
    "parse_duration",
    "structure_config",
]

T = TypeVar("T")

# ---------------------------------------------------------------------------
# Describing values and types in messages
# ---------------------------------------------------------------------------

_MAX_SHOWN = 60


class _BadValue(ValueError):
    """A value that is not what a hook or validator expected.

    Raised inside the converter; `structure_config` turns it into a
    `ConfigError` problem with ``expected`` set. As a `ValueError` it is also
    what a user constructing a kernel class in Python sees.
    """

    def __init__(self, expected: str, value: object) -> None:
        self.expected = expected
        self.value = value
        super().__init__(f"expected {expected}, got {_show(value)}")


def _show(value: object) -> str:
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
    if len(shown) > _MAX_SHOWN:
        shown = shown[: _MAX_SHOWN - 3] + "..."
    return shown


_SCALAR_NAMES: dict[object, str] = {
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


def _describe(tp: Any) -> str:
    """What a value of type ``tp`` looks like in TOML, for "expected ..."."""
    if tp in _SCALAR_NAMES:
        return _SCALAR_NAMES[tp]
    if tp is Any or tp is object:
        return "any value"
    if _is_union(tp):
        described: list[str] = []
        for member in typing.get_args(tp):
            if member is type(None):
                continue
            text = _describe(member)
            if text not in described:
                described.append(text)
        return " or ".join(described)
    if _is_literal(tp):
        return _one_of([_literal_value(arg) for arg in typing.get_args(tp)])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _one_of([member.value for member in tp])
    if _is_array_type(tp):
        return "an array"
    if _is_table_type(tp) or attrs.has(tp):
        return "a table"
    name = getattr(tp, "__name__", None) or repr(tp)
    return f"a {name}"


def _one_of(values: list[object]) -> str:
    if len(values) == 1:
        return _show(values[0])
    return "one of " + ", ".join(_show(value) for value in values)


def _literal_value(arg: object) -> object:
    return arg.value if isinstance(arg, enum.Enum) else arg


def _is_literal(tp: Any) -> bool:
    origin: object = typing.get_origin(tp)
    return origin is Literal


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


_ARRAY_ORIGINS: frozenset[object] = frozenset(
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
_TABLE_ORIGINS: frozenset[object] = frozenset(
    {dict, collections.abc.Mapping, collections.abc.MutableMapping}
)


def _is_array_type(tp: Any) -> bool:
    return (typing.get_origin(tp) or tp) in _ARRAY_ORIGINS


def _is_table_type(tp: Any) -> bool:
    return (typing.get_origin(tp) or tp) in _TABLE_ORIGINS


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
_DESCRIBE_DURATION = _SCALAR_NAMES[datetime.timedelta]


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
            raise _BadValue("a duration that is not negative", value)
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise _BadValue("a number of seconds that is not negative", value)
        try:
            return datetime.timedelta(seconds=value)
        except OverflowError:
            raise _BadValue("a duration of at most 999999999 days", value) from None
    if not isinstance(value, str):
        raise _BadValue(_DESCRIBE_DURATION, value)
    match = _DURATION.fullmatch(value)
    if match is None or not any(match.groups()):
        raise _BadValue(_DURATION_EXPECTED, value)
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
        raise _BadValue("a duration of at most 999999999 days", value) from None


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


# ---------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------

# The one converter (`kernel.serialization`); the hooks below make it strict
# for config tables and job arguments alike: strict scalars, durations,
# paths, enums by value, literals, unions tried in order, tables and arrays
# with per-key and per-index error notes.


def _structure_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _BadValue(_describe(int), value)


def _structure_float(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _BadValue(_describe(float), value)


def _structure_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise _BadValue(_describe(str), value)


def _structure_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise _BadValue(_describe(bool), value)


def _structure_path(value: object) -> Path:
    if isinstance(value, PurePath):
        return Path(value)
    if isinstance(value, str) and value:
        return Path(value)
    raise _BadValue("a non-empty path" if value == "" else _describe(Path), value)


def _structure_datetime(value: object) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value)
        except ValueError:
            pass
    raise _BadValue("a date-time like 1979-05-27T07:32:00Z", value)


def _structure_date(value: object) -> datetime.date:
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    raise _BadValue("a date like 1979-05-27", value)


def _structure_time(value: object) -> datetime.time:
    if isinstance(value, datetime.time):
        return value
    if isinstance(value, str):
        try:
            return datetime.time.fromisoformat(value)
        except ValueError:
            pass
    raise _BadValue("a time of day like 07:32:00", value)


_STRICT_SCALARS: dict[type, Callable[[object], object]] = {
    bool: _structure_bool,
    int: _structure_int,
    float: _structure_float,
    str: _structure_str,
    Path: _structure_path,
    datetime.timedelta: parse_duration,
    datetime.datetime: _structure_datetime,
    datetime.date: _structure_date,
    datetime.time: _structure_time,
}


def _structure_enum(value: object, cls: type[enum.Enum]) -> enum.Enum:
    if isinstance(value, cls):
        return value
    for member in cls:
        if type(member.value) is type(value) and member.value == value:
            return member
    raise _BadValue(_describe(cls), value)


def _structure_scalar(value: object, cls: Any) -> object:
    """Strict scalars. cattrs dispatches subclasses of ``int`` and ``str``
    (``bool``, `enum.IntEnum`, `enum.StrEnum`) through the hook of the
    base class, so this one hook sorts them out by the exact class."""
    if issubclass(cls, enum.Enum):
        return _structure_enum(value, cls)
    for base in cls.__mro__:
        strict = _STRICT_SCALARS.get(base)
        if strict is not None:
            checked = strict(value)
            return checked if base is cls else cls(checked)
    return cls(value)


for _scalar in _STRICT_SCALARS:
    converter.register_structure_hook(_scalar, _structure_scalar)


def _structure_literal(value: object, tp: Any) -> object:
    for arg in typing.get_args(tp):
        expected = _literal_value(arg)
        if type(expected) is type(value) and expected == value:
            return arg
    raise _BadValue(_describe(tp), value)


def _kind_of_type(tp: Any) -> str:
    if _is_table_type(tp) or attrs.has(tp):
        return "table"
    if _is_array_type(tp):
        return "array"
    return "scalar"


def _kind_of_value(value: object) -> str:
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, list | tuple):
        return "array"
    return "scalar"


def _make_union_hook(tp: Any) -> Callable[[object, Any], object]:
    """Unions are tried member by member, in the order written. When every
    member fails and only one of them is of the value's kind (a table for an
    attrs class, an array for a list), its detailed error is the one
    reported; otherwise the error lists what each member would accept."""
    members = typing.get_args(tp)
    optional = type(None) in members
    candidates = [member for member in members if member is not type(None)]

    def structure_union(value: object, _: Any) -> object:
        if value is None and optional:
            return None
        failures: list[tuple[Any, Exception]] = []
        for member in candidates:
            try:
                return converter.structure(value, member)
            except StructureHandlerNotFoundError:
                raise
            except Exception as error:
                failures.append((member, error))
        same_kind = [
            err for member, err in failures if _kind_of_type(member) == _kind_of_value(value)
        ]
        if len(same_kind) == 1:
            raise same_kind[0]
        raise _BadValue(_describe(tp), value)

    return structure_union


def _note_index(error: Exception, index: int | str, tp: Any, what: str) -> Exception:
    error.add_note(IterableValidationNote(f"Structuring {what} @ {index!r}", index, tp))
    return error


def _make_array_hook(tp: Any) -> Callable[[object, Any], object]:
    """Arrays accept TOML arrays only (never a string, which Python would
    happily iterate), with one note per failing index, as cattrs' own
    sequence hooks add them."""
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    fixed: tuple[Any, ...] | None = None
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        fixed = args
    item_type: Any = args[0] if args else Any
    if origin in (set, collections.abc.MutableSet):
        build: Callable[[list[Any]], object] = set
    elif origin in (frozenset, collections.abc.Set):
        build = frozenset
    elif origin is tuple:
        build = tuple
    else:
        build = list

    def structure_array(value: object, _: Any) -> object:
        if not isinstance(value, list | tuple):
            raise _BadValue(_describe(tp), value)
        if fixed is not None and len(value) != len(fixed):
            raise _BadValue(f"an array of {len(fixed)} items", value)
        items: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            item_tp = fixed[index] if fixed is not None else item_type
            try:
                items.append(converter.structure(item, item_tp))
            except StructureHandlerNotFoundError:
                raise
            except Exception as error:
                errors.append(_note_index(error, index, item_tp, "array item"))
        if errors:
            raise IterableValidationError(f"While structuring {tp!r}", errors, origin)
        return build(items)

    return structure_array


def _make_table_hook(tp: Any) -> Callable[[object, Any], object]:
    """Tables (``dict[str, X]``, ``Mapping[str, X]``) accept TOML tables only,
    with one note per failing key."""
    args = typing.get_args(tp)
    key_type, value_type = args if len(args) == 2 else (Any, Any)

    def structure_table(value: object, _: Any) -> object:
        if not isinstance(value, Mapping):
            raise _BadValue("a table", value)
        result: dict[Any, Any] = {}
        errors: list[Exception] = []
        for key, item in value.items():
            try:
                result[converter.structure(key, key_type)] = converter.structure(item, value_type)
            except StructureHandlerNotFoundError:
                raise
            except Exception as error:
                errors.append(_note_index(error, key, value_type, "table key"))
        if errors:
            raise IterableValidationError(f"While structuring {tp!r}", errors, dict)
        return result

    return structure_table


def _key_of(field: attrs.Attribute[Any]) -> str:
    """The config key of an attrs field, as cattrs' generated code reads it."""
    return field.alias if converter.use_alias and field.alias else field.name


def _blame_field(
    cls: type, data: Mapping[str, Any]
) -> tuple[attrs.Attribute[Any], Exception] | None:
    """The field whose converter or validator rejects its value, when
    constructing ``cls`` from ``data`` failed.

    cattrs structures every field, then calls ``cls(**fields)``; an attrs
    validator raising there reaches us without a field name. To point at the
    key, the fields are structured again into an instance made without
    ``__init__`` and each validator present in ``data`` is run on it alone;
    the first to raise is the culprit. A check spanning several fields in
    ``__attrs_post_init__`` stays on the table itself (``None``).
    """
    fields = attrs.fields(cls)
    values: dict[str, Any] = {}
    for field in fields:
        key = _key_of(field)
        try:
            if key in data:
                value = (
                    data[key] if field.type is None else converter.structure(data[key], field.type)
                )
                if field.converter is not None and not isinstance(field.converter, attrs.Converter):
                    try:
                        value = field.converter(value)
                    except (ValueError, TypeError) as rejected:
                        return field, rejected
            elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                if field.default.takes_self:
                    continue
                value = field.default.factory()
            elif field.default is not attrs.NOTHING:
                value = field.default
            else:
                continue
        except Exception:
            return None
        values[field.name] = value
    shell: Any = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(shell, name, value)
    for field in fields:
        if field.validator is None or _key_of(field) not in data or field.name not in values:
            continue
        try:
            field.validator(shell, field, values[field.name])
        except (ValueError, TypeError) as rejected:
            return field, rejected
        except Exception:
            continue
    return None


def _make_attrs_hook(cls: Any) -> Callable[[object, Any], object]:
    """attrs classes go through cattrs' generated code (detailed validation,
    extra keys forbidden); this wrapper first insists on a table, and
    afterwards pins a validator's error on its key (see `_blame_field`)."""
    generated = converter.gen_structure_attrs_fromdict(cls)
    plain_cls = typing.get_origin(cls) or cls

    def structure_attrs(value: object, _: Any) -> object:
        if not isinstance(value, Mapping):
            raise _BadValue("a table", value)
        try:
            return generated(value, cls)
        except ClassValidationError as group:
            errors: list[Exception] = []
            for error in group.exceptions:
                blamed = None
                if _note_of(error, AttributeValidationNote) is None and isinstance(
                    error, ValueError | TypeError
                ):
                    blamed = _blame_field(plain_cls, value)
                if blamed is None:
                    errors.append(error)
                    continue
                field, rejected = blamed
                rejected.add_note(
                    AttributeValidationNote(
                        f"Validating class {plain_cls.__qualname__} @ attribute {field.name}",
                        _key_of(field),
                        field.type,
                    )
                )
                errors.append(rejected)
            raise group.derive(errors) from None

    return structure_attrs


converter.register_structure_hook_func(
    lambda tp: isinstance(tp, type) and issubclass(tp, enum.Enum), _structure_enum
)
converter.register_structure_hook_func(_is_literal, _structure_literal)
converter.register_structure_hook_factory(_is_array_type, _make_array_hook)
converter.register_structure_hook_factory(_is_table_type, _make_table_hook)
converter.register_structure_hook_factory(_is_union, _make_union_hook)
converter.register_structure_hook_factory(attrs.has, _make_attrs_hook)
converter.register_unstructure_hook(datetime.timedelta, format_duration)
converter.register_unstructure_hook(Path, str)


# ---------------------------------------------------------------------------
# From cattrs' exception groups to ConfigError
# ---------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_CONVERTIBLE = (ValueError, TypeError, LookupError)


def _key_path(prefix: str, segments: tuple[str | int, ...]) -> str:
    """Segments joined as TOML writes a key path: ``a.b``, ``a."x.y"``,
    ``rules[2].days``."""
    path = prefix
    for segment in segments:
        if isinstance(segment, int):
            path += f"[{segment}]"
            continue
        key = segment if _BARE_KEY.fullmatch(segment) else _quote(segment)
        path = f"{path}.{key}" if path else key
    return path


def key_path(*segments: str | int) -> str:
    """A key path as TOML writes it and errors show it, for a ``prefix``:
    ``key_path("plugins", name, "config")`` is ``plugins.sync.config``, or
    ``plugins."eu.sync".config`` for a name with a dot."""
    return _key_path("", segments)


def _quote(key: str) -> str:
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'"{escaped}"'


_N = TypeVar("_N", AttributeValidationNote, IterableValidationNote)


def _note_of(error: BaseException, kind: type[_N]) -> _N | None:
    """The last note of ``kind``: the one the innermost enclosing hook added."""
    found = None
    for note in getattr(error, "__notes__", ()):
        if isinstance(note, kind):
            found = note
    return found


def _known_keys(cls: type) -> list[str]:
    if not attrs.has(cls):
        return []
    return [_key_of(field) for field in attrs.fields(typing.get_origin(cls) or cls) if field.init]


def _unknown_key_reason(key: str, known: list[str]) -> str:
    """``unknown key 'intervl'; did you mean 'interval'?`` (difflib's close
    matches, as Python's own NameError suggestions) or the known keys."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    if known:
        return f"unknown key {key!r}; known keys: {', '.join(map(repr, known))}"
    return f"unknown key {key!r}"


def _problems(
    error: BaseException, segments: tuple[str | int, ...], source: str, prefix: str
) -> list[ConfigError]:
    """Every leaf of cattrs' exception tree as a `ConfigError`, in document
    order. A leaf that is neither a value problem nor a missing key (a bug in
    a hook or validator) is re-raised with the key path added as a note."""
    if isinstance(error, StructureHandlerNotFoundError):
        raise error  # a class the converter cannot structure: a programming error
    path = _key_path(prefix, segments)
    if isinstance(error, ClassValidationError):
        found: list[ConfigError] = []
        for sub in error.exceptions:
            note = _note_of(sub, AttributeValidationNote)
            if note is None:
                found += _problems(sub, segments, source, prefix)
            elif isinstance(sub, KeyError) and sub.args == (note.name,):
                found.append(ConfigError(source, path, f"missing required key {note.name!r}"))
            else:
                found += _problems(sub, (*segments, note.name), source, prefix)
        return found
    if isinstance(error, IterableValidationError):
        found = []
        for sub in error.exceptions:
            index_note = _note_of(sub, IterableValidationNote)
            where = segments if index_note is None else (*segments, index_note.index)
            found += _problems(sub, where, source, prefix)
        return found
    if isinstance(error, ForbiddenExtraKeysError):
        known = _known_keys(error.cl)
        return [
            ConfigError(
                source, _key_path(prefix, (*segments, key)), _unknown_key_reason(key, known)
            )
            for key in sorted(error.extra_fields)
        ]
    if isinstance(error, BaseExceptionGroup):
        return [
            problem
            for sub in error.exceptions
            for problem in _problems(sub, segments, source, prefix)
        ]
    if isinstance(error, _BadValue):
        return [ConfigError(source, path, str(error), expected=error.expected)]
    if isinstance(error, _CONVERTIBLE):
        return [ConfigError(source, path, str(error) or type(error).__name__)]
    error.add_note(f"while structuring {source} at {path or 'the top level'}")
    raise error


def structure_config(data: Mapping[str, Any], cls: type[T], *, source: str, prefix: str = "") -> T:
    """``data`` (a TOML table) as an instance of the attrs class ``cls``.

    ``source`` names where the table came from (``"kernel.toml"``,
    ``"plugin 'sync'"``); ``prefix`` is the key path of the table inside it
    (``"plugins.sync.config"``), so errors name the key as the author wrote
    it. Raises `ConfigError` for every value problem at once (the first one
    in the message, all in ``problems``): wrong types, unknown keys (with a
    suggestion when one is close), missing required keys, and `ValueError`
    or `TypeError` from the class's validators. Anything else a validator
    raises is a bug and propagates, with the key path as a note.
    """
    try:
        return converter.structure(data, cls)
    except StructureHandlerNotFoundError:
        raise
    except Exception as error:
        problems = _problems(error, (), source, prefix)
        if not problems:  # pragma: no cover - every leaf yields a problem or raises
            raise
        raise ConfigError.from_problems(problems) from None


# ---------------------------------------------------------------------------
# The kernel's own schema
# ---------------------------------------------------------------------------

LogLevel = Literal["debug", "info", "warning", "error"]
"""The levels ``kernel.log_level`` accepts (the `logging` names, lower case)."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_PLUGIN_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_PLUGIN_NAME_RULE = "1-63 characters of a-z, 0-9, '_', '.', '-' starting with a letter or digit"


def _adapter_url(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise _BadValue("a URL string", value)
    if not _URL.match(value) or value != value.strip():
        raise _BadValue("a URL like 'scheme://...' (e.g. 'memory://', 'sqlite:///state.db')", value)


def _positive_duration(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, datetime.timedelta) or value <= datetime.timedelta(0):
        raise _BadValue("a positive duration", value)


def _plugin_reference(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value or value != value.strip() or value.count(":") > 1:
        raise _BadValue("an entry-point name or 'package.module:attribute'", value)


def _plugin_name_problem(name: object) -> str | None:
    if isinstance(name, str) and _PLUGIN_NAME.fullmatch(name):
        return None
    return f"invalid plugin name {name!r}: expected {_PLUGIN_NAME_RULE}"


def _plugin_names(_: object, attribute: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    for name in value:
        problem = _plugin_name_problem(name)
        if problem is not None:
            raise ValueError(problem)


@attrs.frozen
class KernelSettings:
    """The ``[kernel]`` table: which adapters to open and how the kernel
    paces itself. Adapter URLs are only checked for a ``scheme://`` shape
    here; `kernel.runtime.discovery` finds (or fails to find) the adapter."""

    #: The runner's durable default: jobs, schedules and plugin states in a
    #: SQLite file in the working directory (embedding defaults to memory).
    storage: str = attrs.field(default="sqlite:///kernel.db", validator=_adapter_url)
    bus: str = attrs.field(default="local://", validator=_adapter_url)
    notifier: str = attrs.field(default="log://", validator=_adapter_url)
    #: How long each plugin may take to stop before it is cancelled.
    shutdown_grace: datetime.timedelta = attrs.field(
        default=datetime.timedelta(seconds=10), validator=_positive_duration
    )
    #: How often health checks run.
    health_interval: datetime.timedelta = attrs.field(
        default=datetime.timedelta(seconds=30), validator=_positive_duration
    )
    #: The Unix socket `kernel status` talks to; ``None`` (the default) opens none.
    status_socket: Path | None = None
    log_level: LogLevel = "info"


@attrs.frozen
class PluginEntry:
    """One ``[plugins.NAME]`` table: which plugin to load, whether to enable
    it, and its own config, kept raw until the runtime knows the plugin's
    config class (``structure_config(entry.config, manifest.config,
    source=..., prefix="plugins.NAME.config")``)."""

    use: str = attrs.field(validator=_plugin_reference)
    enabled: bool = True
    config: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class KernelConfig:
    """A whole config file: kernel settings, plugin instances by name (in
    file order), and the ``source`` errors name."""

    kernel: KernelSettings = KernelSettings()
    plugins: dict[str, PluginEntry] = attrs.field(factory=dict, validator=_plugin_names)
    source: str = "<defaults>"


_TOP_LEVEL_KEYS = ["kernel", "plugins"]
_TOML_POSITION = re.compile(r"(.*) \((at line \d+, column \d+|at end of document)\)", re.DOTALL)


def _toml_reason(error: ValueError) -> str:
    message = str(error)
    if message.startswith("Exceeds the limit"):  # Python's guard against huge integers
        return f"invalid TOML: an integer with too many digits ({message.split(';')[0]})"
    match = _TOML_POSITION.fullmatch(message)
    if match is None:
        return f"invalid TOML: {message}"
    text, where = match.groups()
    return f"invalid TOML {where}: {text[:1].lower()}{text[1:]}"


def _kernel_config(document: Mapping[str, Any], source: str) -> KernelConfig:
    problems: list[ConfigError] = []
    for key in document:
        if key not in _TOP_LEVEL_KEYS:
            problems.append(
                ConfigError(
                    source, _key_path("", (key,)), _unknown_key_reason(key, _TOP_LEVEL_KEYS)
                )
            )
    settings = KernelSettings()
    try:
        settings = structure_config(
            document.get("kernel", {}), KernelSettings, source=source, prefix="kernel"
        )
    except ConfigError as error:
        problems += error.problems
    plugins: dict[str, PluginEntry] = {}
    table = document.get("plugins", {})
    if not isinstance(table, Mapping):
        problems.append(
            ConfigError(source, "plugins", str(_BadValue("a table", table)), expected="a table")
        )
        table = {}
    for name, entry in table.items():
        path = key_path("plugins", name)
        name_problem = _plugin_name_problem(name)
        if name_problem is not None:
            problems.append(ConfigError(source, path, name_problem, expected=_PLUGIN_NAME_RULE))
        try:
            plugins[name] = structure_config(entry, PluginEntry, source=source, prefix=path)
        except ConfigError as error:
            problems += error.problems
    if problems:
        raise ConfigError.from_problems(problems)
    return KernelConfig(kernel=settings, plugins=plugins, source=source)


def parse_config(text: str, *, source: str) -> KernelConfig:
    """The `KernelConfig` in TOML ``text``; ``source`` names it in errors.

    Raises `ConfigError`: invalid TOML (with tomllib's line and column),
    unknown keys, wrong types, invalid plugin names, malformed adapter URLs,
    durations that are not positive. All problems are reported at once.
    """
    try:
        document = tomllib.loads(text)
    except ValueError as error:  # TOMLDecodeError, or an integer past Python's digit limit
        raise ConfigError(source, "", _toml_reason(error)) from None
    except RecursionError:
        raise ConfigError(source, "", "invalid TOML: nested too deeply") from None
    return _kernel_config(document, source)


def load_config(path: str | Path) -> KernelConfig:
    """The `KernelConfig` in the TOML file at ``path`` (UTF-8, a leading
    byte-order mark tolerated); errors name the file as ``path`` was given.

    Raises `ConfigError` for a missing or unreadable file as for a bad one.
    """
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(source, "", "is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(source, "", "permission denied") from None
    except OSError as error:
        raise ConfigError(source, "", f"cannot read: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise ConfigError(
            source, "", f"not UTF-8 text (invalid byte at line {line}, column {column})"
        ) from None
    return parse_config(text, source=source)
