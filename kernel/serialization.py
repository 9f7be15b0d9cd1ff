"""JSON values, the one cattrs converter, and job arguments through it.

Everything a port stores or sends is plain JSON (`JSON`), checked and
copied by `copy_json` at the boundary: no NaN, no sets, no bytes, str keys
only, no cycles, nothing deeper than `MAX_JSON_DEPTH`; never pickle, since a
shared store must not execute what it reads.

Configuration tables and job payloads go through the same converter, so a
type that a config file can spell (a duration, a date-time, an enum, an
attrs class) can also be a job argument, and reads back the same way.
`kernel.config` registers its strict structuring hooks on it (a string is
not an int, durations like ``"1h30m"``, enums by value); this module adds
the JSON side of unstructuring: date-times, dates and times as ISO 8601
text, paths as text (durations are spelled as in config files, ``"5m"``).

A job's arguments are unstructured at enqueue (`dump_arguments`) and then
checked as JSON, so what cannot be stored is refused there, naming the bad
part (`kernel.errors.NotJSONSerializable`). When the task runs, each
argument whose parameter is annotated is structured back to that type
(`load_arguments`): ``async def send(mail: Mail)`` receives a ``Mail``.
Unannotated parameters get the JSON as stored.

Arguments are capped in size (`DEFAULT_MAX_PAYLOAD`, 1 MiB as JSON): a job
row is read and written whole on every claim, retry and listing, so a large
payload slows every worker sharing the store. Keep large data elsewhere and
pass its name.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import json
import math
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, Final, TypeAlias, cast

import cattrs

from kernel.errors import InvalidJob, NotJSONSerializable, PayloadError

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "JSON",
    "MAX_JSON_DEPTH",
    "JSONLike",
    "PayloadError",
    "converter",
    "copy_json",
    "dump_arguments",
    "load_arguments",
]

# ---------------------------------------------------------------------------
# JSON values
# ---------------------------------------------------------------------------

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None
"""A plain JSON value, as `json.loads` returns it: what every port hands back."""

JSONLike: TypeAlias = (
    bool | int | float | str | Sequence["JSONLike"] | Mapping[str, "JSONLike"] | None
)
"""What a port accepts: JSON typed covariantly, so that a ``dict[str, int]``
type-checks where a value is expected (``dict[str, JSON]`` is invariant and
would not). At run time `copy_json` decides: dicts, lists and tuples (read
back as lists) pass; other mappings and sequences do not."""

MAX_JSON_DEPTH = 256
"""Containers nested deeper than this are refused: such a value is a bug (or
an attack) long before it is data, and refusing it keeps every adapter's
encoder and decoder far from the recursion limit."""

_SURROGATE = re.compile(r"[\ud800-\udfff]")


class _NotJSON(Exception):
    """Raised inside `_copy`; each frame it crosses adds its index, so the
    path is only built when a value is refused (zero cost otherwise)."""

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        self.reason = reason
        self.parts: list[str] = []


_HINTS: dict[str, str] = {
    "set": "use a list",
    "frozenset": "use a list",
    "bytes": "decode it, or encode it as base64 text",
    "bytearray": "decode it, or encode it as base64 text",
    "datetime": "use an ISO 8601 string",
    "date": "use an ISO 8601 string",
    "Decimal": "use a str, or a float if precision allows",
}


def _refuse_type(value: object) -> _NotJSON:
    name = type(value).__name__
    hint = _HINTS.get(name)
    return _NotJSON(value, f"{name} is not JSON" + (f" ({hint})" if hint else ""))


def _copy_str(value: str) -> str:
    if not value.isascii() and _SURROGATE.search(value):
        raise _NotJSON(value, "str with a lone surrogate is not JSON (it has no UTF-8 encoding)")
    return value if type(value) is str else str.__str__(value)


def _copy(value: object, depth: int, active: set[int]) -> JSON:
    if value is None:
        return None
    if isinstance(value, str):
        return _copy_str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if type(value) is int else int(value)  # IntEnum -> int
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJSON(value, f"float {value!r} is not JSON (JSON has no NaN or Infinity)")
        return value if type(value) is float else float(value)
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_JSON_DEPTH:
            raise _NotJSON(value, f"nested deeper than {MAX_JSON_DEPTH} levels")
        if id(value) in active:
            raise _NotJSON(value, "circular reference")
        active.add(id(value))
        try:
            if isinstance(value, dict):
                return _copy_dict(value, depth, active)
            copied: list[JSON] = []
            for index, item in enumerate(value):
                try:
                    copied.append(_copy(item, depth + 1, active))
                except _NotJSON as error:
                    error.parts.append(f"[{index}]")
                    raise
            return copied
        finally:
            active.discard(id(value))
    raise _refuse_type(value)


def _copy_dict(value: dict[object, object], depth: int, active: set[int]) -> dict[str, JSON]:
    copied: dict[str, JSON] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _NotJSON(
                value, f"key {key!r} is {type(key).__name__}, not str (JSON object keys are text)"
            )
        if not key.isascii() and _SURROGATE.search(key):
            raise _NotJSON(value, f"key {key!r} has a lone surrogate (it has no UTF-8 encoding)")
        try:
            copied[key if type(key) is str else str.__str__(key)] = _copy(item, depth + 1, active)
        except _NotJSON as error:
            error.parts.append(f"[{key!r}]")
            raise
    return copied


def copy_json(value: object, *, path: str = "value") -> JSON:
    """Return a plain-JSON deep copy of ``value``, or raise `NotJSONSerializable`.

    Accepts None, bool, int, finite float, str, and dicts with str keys, lists
    and tuples of those (subclasses such as `enum.IntEnum` or
    `collections.OrderedDict` are converted to the plain type; tuples become
    lists, as they would through any JSON codec). Refuses NaN and infinities
    (not JSON, and NaN breaks "you get back what you stored"), non-str keys
    (`json.dumps` would silently turn ``1`` into ``"1"``), strings with lone
    surrogates (no UTF-8 encoding, so no backend can store them), cycles and
    nesting deeper than `MAX_JSON_DEPTH`. The error names the offending part
    from ``path``: ``value['a'][2]: set is not JSON (use a list)``.

    Because the result shares nothing with ``value``, later changes to the
    caller's object cannot reach what was stored or published.
    """
    try:
        return _copy(value, 0, set())
    except _NotJSON as error:
        where = path + "".join(reversed(error.parts))
        raise NotJSONSerializable(where, error.value, error.reason) from None


# ---------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------


converter = cattrs.Converter(forbid_extra_keys=True)
"""Every config table and every job argument goes through this converter."""

converter.register_unstructure_hook(datetime.datetime, lambda value: value.isoformat())
converter.register_unstructure_hook(datetime.date, lambda value: value.isoformat())
converter.register_unstructure_hook(datetime.time, lambda value: value.isoformat())
converter.register_unstructure_hook(PurePath, str)


DEFAULT_MAX_PAYLOAD: Final = 1 << 20
"""The default cap on a job's arguments, in bytes of JSON (UTF-8)."""


def dump_arguments(
    args: Sequence[object], kwargs: Mapping[str, object], *, max_bytes: int | None = None
) -> tuple[list[JSON], dict[str, JSON]]:
    """``args`` and ``kwargs`` as private JSON, unstructured by `converter`;
    `kernel.errors.NotJSONSerializable` names what cannot be stored, and
    `kernel.errors.InvalidJob` arguments larger than ``max_bytes`` as JSON."""
    if not args and not kwargs:
        return [], {}
    dumped_args = cast(
        "list[JSON]", copy_json([converter.unstructure(value) for value in args], path="args")
    )
    dumped_kwargs = cast(
        "dict[str, JSON]",
        copy_json(
            {key: converter.unstructure(value) for key, value in kwargs.items()}, path="kwargs"
        ),
    )
    if max_bytes is not None:
        _check_size(dumped_args, dumped_kwargs, max_bytes)
    return dumped_args, dumped_kwargs


def _check_size(args: list[JSON], kwargs: dict[str, JSON], max_bytes: int) -> None:
    text = json.dumps([args, kwargs], ensure_ascii=False, separators=(",", ":"))
    if len(text) * 4 <= max_bytes:  # no character takes more than 4 bytes
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidJob(
            "arguments",
            f"{_mib(size)} as JSON",
            f"more than the limit of {_mib(max_bytes)} (max_payload_bytes);"
            " keep large data elsewhere (a file, an object store) and pass its name",
        )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.3g} MiB" if size >= 1 << 20 else f"{size:,} bytes"


@functools.cache
def _annotated(func: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any]] | None:
    """The signature and parameter annotations of ``func``, or None when it
    has none (or they cannot be resolved): its arguments pass as JSON."""
    try:
        signature = inspect.signature(func)
        hints = typing.get_type_hints(func)
    except (TypeError, ValueError, NameError):
        return None
    hints.pop("return", None)
    plain = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    typed = {
        name: hint
        for name, hint in hints.items()
        if hint is not Any
        and name in signature.parameters
        and signature.parameters[name].kind not in plain
    }
    return (signature, typed) if typed else None


def load_arguments(
    func: Callable[..., Any], args: list[JSON], kwargs: dict[str, JSON]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments to call ``func`` with: each one whose parameter is
    annotated structured to that type; `PayloadError` if one does not fit."""
    annotated = _annotated(func)
    if annotated is None:
        return tuple(args), kwargs
    signature, hints = annotated
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise PayloadError(
            f"the stored arguments do not fit {func.__qualname__}: {error}"
        ) from None
    for name, value in bound.arguments.items():
        hint = hints.get(name)
        if hint is None:
            continue
        try:
            bound.arguments[name] = converter.structure(value, hint)
        except Exception as error:
            messages = (
                "; ".join(cattrs.transform_error(error))
                if isinstance(error, cattrs.BaseValidationError)
                else str(error)
            )
            raise PayloadError(
                f"argument {name!r} of {func.__qualname__} is not a {_describe(hint)}: {messages}"
            ) from None
    return bound.args, bound.kwargs


def _describe(hint: object) -> str:
    return getattr(hint, "__name__", None) or str(hint)
