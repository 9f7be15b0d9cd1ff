"""Structuring config tables into attrs classes, with one clear error.

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

from collections.abc import Mapping
from typing import Any, TypeVar

from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
    StructureHandlerNotFoundError,
)

from kernel.config._messages import BadValue, join_key_path, known_keys, note_of, unknown_key_reason
from kernel.config._strict import converter  # the converter with the strict hooks registered
from kernel.errors import ConfigError

__all__ = ["key_path", "structure_config"]

T = TypeVar("T")

# ---------------------------------------------------------------------------
# From cattrs' exception groups to ConfigError
# ---------------------------------------------------------------------------

_CONVERTIBLE = (ValueError, TypeError, LookupError)


def key_path(*segments: str | int) -> str:
    """A key path as TOML writes it and errors show it, for a ``prefix``:
    ``key_path("plugins", name, "config")`` is ``plugins.sync.config``, or
    ``plugins."eu.sync".config`` for a name with a dot."""
    return join_key_path("", segments)


def _problems(
    error: BaseException, segments: tuple[str | int, ...], source: str, prefix: str
) -> list[ConfigError]:
    """Every leaf of cattrs' exception tree as a `ConfigError`, in document
    order. A leaf that is neither a value problem nor a missing key (a bug in
    a hook or validator) is re-raised with the key path added as a note."""
    if isinstance(error, StructureHandlerNotFoundError):
        raise error  # a class the converter cannot structure: a programming error
    path = join_key_path(prefix, segments)
    if isinstance(error, ClassValidationError):
        found: list[ConfigError] = []
        for sub in error.exceptions:
            note = note_of(sub, AttributeValidationNote)
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
            index_note = note_of(sub, IterableValidationNote)
            where = segments if index_note is None else (*segments, index_note.index)
            found += _problems(sub, where, source, prefix)
        return found
    if isinstance(error, ForbiddenExtraKeysError):
        known = known_keys(error.cl)
        return [
            ConfigError(
                source, join_key_path(prefix, (*segments, key)), unknown_key_reason(key, known)
            )
            for key in sorted(error.extra_fields)
        ]
    if isinstance(error, BaseExceptionGroup):
        return [
            problem
            for sub in error.exceptions
            for problem in _problems(sub, segments, source, prefix)
        ]
    if isinstance(error, BadValue):
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
