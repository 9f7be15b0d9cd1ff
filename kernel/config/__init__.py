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

The modules: `files` (the kernel's config file), `structure` (any table into
an attrs class), `durations`, and the private `_strict` hooks and
`_messages`. Durations are written ``"90s"``, ``"5m"``, ``"1h30m"``, ``"2d"``,
``"250ms"`` or as a number of seconds (see `parse_duration`).
"""
