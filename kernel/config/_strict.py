"""The strict structuring hooks, registered on the one cattrs converter
(`kernel.serialization.converter`) when this module is imported: a string
is not an int, a number is not a string, a table with an unknown key is an
error naming the nearest known key (private to `kernel.config`)."""

from __future__ import annotations

import collections.abc
import datetime
import enum
import typing
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any, TypeVar

import attrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
    StructureHandlerNotFoundError,
)

from kernel.config._messages import (
    BadValue,
    describe,
    format_duration,
    is_array_type,
    is_literal,
    is_table_type,
    is_union,
    key_of,
    literal_value,
    note_of,
)
from kernel.config.durations import parse_duration
from kernel.serialization import converter

__all__ = ["converter"]

T = TypeVar("T")

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
    raise BadValue(describe(int), value)


def _structure_float(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise BadValue(describe(float), value)


def _structure_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise BadValue(describe(str), value)


def _structure_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise BadValue(describe(bool), value)


def _structure_path(value: object) -> Path:
    if isinstance(value, PurePath):
        return Path(value)
    if isinstance(value, str) and value:
        return Path(value)
    raise BadValue("a non-empty path" if value == "" else describe(Path), value)


def _structure_datetime(value: object) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value)
        except ValueError:
            pass
    raise BadValue("a date-time like 1979-05-27T07:32:00Z", value)


def _structure_date(value: object) -> datetime.date:
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    raise BadValue("a date like 1979-05-27", value)


def _structure_time(value: object) -> datetime.time:
    if isinstance(value, datetime.time):
        return value
    if isinstance(value, str):
        try:
            return datetime.time.fromisoformat(value)
        except ValueError:
            pass
    raise BadValue("a time of day like 07:32:00", value)


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
    raise BadValue(describe(cls), value)


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
        expected = literal_value(arg)
        if type(expected) is type(value) and expected == value:
            return arg
    raise BadValue(describe(tp), value)


def _kind_of_type(tp: Any) -> str:
    if is_table_type(tp) or attrs.has(tp):
        return "table"
    if is_array_type(tp):
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
        raise BadValue(describe(tp), value)

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
            raise BadValue(describe(tp), value)
        if fixed is not None and len(value) != len(fixed):
            raise BadValue(f"an array of {len(fixed)} items", value)
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
            raise BadValue("a table", value)
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
        key = key_of(field)
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
        if field.validator is None or key_of(field) not in data or field.name not in values:
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
            raise BadValue("a table", value)
        try:
            return generated(value, cls)
        except ClassValidationError as group:
            errors: list[Exception] = []
            for error in group.exceptions:
                blamed = None
                if note_of(error, AttributeValidationNote) is None and isinstance(
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
                        key_of(field),
                        field.type,
                    )
                )
                errors.append(rejected)
            raise group.derive(errors) from None

    return structure_attrs


converter.register_structure_hook_func(
    lambda tp: isinstance(tp, type) and issubclass(tp, enum.Enum), _structure_enum
)
converter.register_structure_hook_func(is_literal, _structure_literal)
converter.register_structure_hook_factory(is_array_type, _make_array_hook)
converter.register_structure_hook_factory(is_table_type, _make_table_hook)
converter.register_structure_hook_factory(is_union, _make_union_hook)
converter.register_structure_hook_factory(attrs.has, _make_attrs_hook)
converter.register_unstructure_hook(datetime.timedelta, format_duration)
converter.register_unstructure_hook(Path, str)
