"""The one cattrs converter, and job arguments through it.

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
"""

from __future__ import annotations

import datetime
import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, cast

import cattrs

from kernel.ports import JSON, copy_json

__all__ = ["PayloadError", "converter", "dump_arguments", "load_arguments"]

converter = cattrs.Converter(forbid_extra_keys=True)
"""Every config table and every job argument goes through this converter."""

converter.register_unstructure_hook(datetime.datetime, lambda value: value.isoformat())
converter.register_unstructure_hook(datetime.date, lambda value: value.isoformat())
converter.register_unstructure_hook(datetime.time, lambda value: value.isoformat())
converter.register_unstructure_hook(PurePath, str)


class PayloadError(TypeError):
    """A stored argument does not fit the task's annotated parameter (the
    task changed since the job was enqueued, or the job was written by
    hand). Retrying cannot help: the job goes to the dead letters."""


def dump_arguments(
    args: Sequence[object], kwargs: Mapping[str, object]
) -> tuple[list[JSON], dict[str, JSON]]:
    """``args`` and ``kwargs`` as private JSON, unstructured by `converter`;
    `kernel.errors.NotJSONSerializable` names what cannot be stored."""
    dumped_args = copy_json([converter.unstructure(value) for value in args], path="args")
    dumped_kwargs = copy_json(
        {key: converter.unstructure(value) for key, value in kwargs.items()}, path="kwargs"
    )
    return cast("list[JSON]", dumped_args), cast("dict[str, JSON]", dumped_kwargs)


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
