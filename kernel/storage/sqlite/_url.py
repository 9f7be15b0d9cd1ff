"""``sqlite://`` URLs: where the file is and how it is opened (private)."""

from __future__ import annotations

import math
import urllib.parse
from typing import Final, Literal, cast

import attrs

from kernel.errors import (
    InvalidAdapterURL,
)
from kernel.urls import redact_url, url_options

Synchronous = Literal["normal", "full", "extra"]

MEMORY: Final = ":memory:"
"""The path of an in-memory database."""


@attrs.frozen
class SQLiteOptions:
    """What a ``sqlite://`` URL asks for."""

    path: str
    """A file path (relative to the working directory, or absolute) or `MEMORY`."""
    synchronous: Synchronous = "normal"
    busy_timeout: float = 5.0
    """Seconds a write waits for another process's transaction to end."""


def parse_sqlite_url(url: str) -> SQLiteOptions:
    """The `SQLiteOptions` of ``url``, else `InvalidAdapterURL`.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` (percent-encoded
    as needed), ``sqlite://:memory:`` (or SQLAlchemy's
    ``sqlite:///:memory:``); options ``synchronous`` (``normal``, ``full``,
    ``extra``) and ``busy_timeout`` (seconds).
    """
    options = url_options(url, allowed=("synchronous", "busy_timeout"), location=True)
    shown = redact_url(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise InvalidAdapterURL(shown, "is not a sqlite:// URL")
    if parts.netloc == MEMORY and not parts.path:
        path = MEMORY
    elif parts.netloc:
        raise InvalidAdapterURL(
            shown,
            "SQLite takes no host: write sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite://:memory:",
        )
    else:
        path = urllib.parse.unquote(parts.path)[1:]
        if not path or path.endswith("/"):
            raise InvalidAdapterURL(
                shown,
                "names no database file: write sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or sqlite://:memory:",
            )
        if "\x00" in path:
            raise InvalidAdapterURL(shown, "the path contains NUL")
    synchronous = options.get("synchronous", "normal").lower()
    if synchronous not in ("normal", "full", "extra"):
        raise InvalidAdapterURL(
            shown, f"synchronous={options['synchronous']!r}: expected normal, full or extra"
        )
    busy_timeout = 5.0
    if "busy_timeout" in options:
        try:
            busy_timeout = float(options["busy_timeout"])
        except ValueError:
            busy_timeout = math.nan
        if not math.isfinite(busy_timeout) or busy_timeout < 0:
            raise InvalidAdapterURL(
                shown,
                f"busy_timeout={options['busy_timeout']!r}: expected seconds, a number >= 0",
            )
    return SQLiteOptions(path, cast(Synchronous, synchronous), busy_timeout)
