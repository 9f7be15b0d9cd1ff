"""Configuration: TOML tables turned into attrs classes through cattrs.

`kernel.config.files` reads the kernel's own file (``[kernel]``,
``[plugins.NAME]``), `kernel.config.structure` turns any table into an
attrs class with one clear `ConfigError` naming the file, the key path and
what was expected, `kernel.config.durations` reads ``"90s"`` or ``"1h30m"``;
the strict cattrs hooks (``_strict``) and how errors describe values
(``_messages``) are private.
"""
