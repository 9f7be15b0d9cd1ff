"""``postgresql://`` URLs: the kernel's options split from libpq's.

A URL is libpq's own (``postgresql://user:password@host:port/dbname?sslmode=require``)
plus a few options that the kernel reads and removes before libpq sees the
rest; libpq then checks what is left, so a misspelt option fails at start-up
with libpq's own message instead of being ignored.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Collection
from typing import Any, Final

import attrs
from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict

from kernel.errors import InvalidAdapterURL
from kernel.ports import option_flag, option_int, option_seconds, redact_url

__all__ = [
    "BUS_OPTIONS",
    "MIGRATE_OPTIONS",
    "STORAGE_OPTIONS",
    "PostgresOptions",
    "channel_name",
    "parse_postgres_url",
    "quote_identifier",
]

SCHEMES: Final = ("postgresql", "postgres")

STORAGE_OPTIONS: Final = frozenset({"schema", "pool_size", "pool_timeout", "migrate"})
BUS_OPTIONS: Final = frozenset({"schema", "pool_size", "pool_timeout", "buffer", "max_message"})
MIGRATE_OPTIONS: Final = STORAGE_OPTIONS
"""``kernel db upgrade URL`` takes the storage URL as it is (its pool options
mean nothing there and are ignored)."""
_KERNEL_OPTIONS: Final = STORAGE_OPTIONS | BUS_OPTIONS

DEFAULT_POOL_SIZE: Final = 10
DEFAULT_POOL_TIMEOUT: Final = 10.0
DEFAULT_BUFFER: Final = 1024
DEFAULT_MAX_MESSAGE: Final = 1024 * 1024

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_MAX_CHANNEL_BYTES: Final = 63


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def channel_name(prefix: str, schema: str) -> str:
    """The LISTEN/NOTIFY channel of ``prefix`` (``kernel_jobs``, ``kernel_bus``)
    for ``schema``: channels are database-wide, so kernels in different
    schemas of one database must not hear each other. Within PostgreSQL's
    63-byte limit; the trigger in `kernel_postgres.schema` computes the same."""
    name = f"{prefix}:{schema}"
    if len(name.encode()) <= _MAX_CHANNEL_BYTES:
        return name
    return f"{prefix}:{hashlib.md5(schema.encode(), usedforsecurity=False).hexdigest()}"


@attrs.frozen
class PostgresOptions:
    """What a ``postgresql://`` URL asks for."""

    conninfo: str = attrs.field(repr=False)
    """The URL without the kernel's options, for libpq (it may hold a password:
    never show it; show `location`)."""
    location: str
    """The server and database, password redacted: what messages name."""
    schema: str = "public"
    """Where the ``kernel_*`` tables live (several kernels, one database)."""
    pool_size: int = DEFAULT_POOL_SIZE
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    """Seconds a call waits for a free (or reconnected) connection before failing."""
    migrate: bool = False
    """Apply missing migrations when opening (single node, development, tests)."""
    buffer: int = DEFAULT_BUFFER
    """Bus: messages that may wait for one subscriber."""
    max_message: int = DEFAULT_MAX_MESSAGE
    """Bus: the largest message, in UTF-8 bytes of its JSON."""

    @property
    def where(self) -> str:
        """`location` and the schema, for messages about the kernel's tables."""
        return f"{self.location} (schema {self.schema})"


def parse_postgres_url(url: str, *, allowed: Collection[str] = STORAGE_OPTIONS) -> PostgresOptions:
    """The `PostgresOptions` of ``url``, else `InvalidAdapterURL` (password redacted).

    Kernel options (removed before libpq sees the URL): ``schema`` (lower
    case letters, digits and ``_``; default ``public``), ``pool_size``
    (connections, default 10), ``pool_timeout`` (seconds, default 10),
    ``migrate`` (storage: apply missing migrations at open), ``buffer`` and
    ``max_message`` (bus). Everything else is libpq's (``sslmode``,
    ``connect_timeout``, ``application_name``...) and checked by libpq.
    """
    if not isinstance(url, str):
        raise InvalidAdapterURL(repr(url), f"must be a str, not {type(url).__name__}")
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError as error:
        raise InvalidAdapterURL(shown, f"cannot be parsed: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidAdapterURL(shown, "is not a postgresql:// URL")
    if parts.fragment:
        raise InvalidAdapterURL(shown, "a #fragment means nothing here")
    ours: dict[str, str] = {}
    libpq: list[tuple[str, str]] = []
    for name, value in pairs:
        if name not in _KERNEL_OPTIONS:
            libpq.append((name, value))
            continue
        if name not in allowed:
            raise InvalidAdapterURL(
                shown, f"option {name!r} does not apply here (known: {', '.join(sorted(allowed))})"
            )
        if name in ours:
            raise InvalidAdapterURL(shown, f"option {name!r} is given twice")
        ours[name] = value
    conninfo = urllib.parse.urlunsplit(
        (scheme, parts.netloc, parts.path, urllib.parse.urlencode(libpq), "")
    )
    try:
        conninfo_to_dict(conninfo)
    except ProgrammingError as error:
        refusal = redact_url(url, within=redact_url(conninfo, within=str(error)))
        raise InvalidAdapterURL(shown, f"libpq refuses it: {refusal}") from None
    schema = ours.get("schema", "public")
    if _SCHEMA.fullmatch(schema) is None or schema.startswith("pg_"):
        raise InvalidAdapterURL(
            shown,
            f"schema={schema!r}: expected a PostgreSQL name needing no quotes (lower-case "
            "letters, digits and _, not starting with a digit or pg_, at most 63 characters)",
        )
    location = redact_url(urllib.parse.urlunsplit((scheme, parts.netloc, parts.path, "", "")))
    options = PostgresOptions(conninfo=conninfo, location=location, schema=schema)
    changes: dict[str, Any] = {}
    if "pool_size" in ours:
        changes["pool_size"] = option_int(shown, "pool_size", ours["pool_size"], low=1, high=1000)
    if "pool_timeout" in ours:
        changes["pool_timeout"] = option_seconds(shown, "pool_timeout", ours["pool_timeout"])
    if "migrate" in ours:
        changes["migrate"] = option_flag(shown, "migrate", ours["migrate"])
    if "buffer" in ours:
        changes["buffer"] = option_int(shown, "buffer", ours["buffer"], low=1, high=10**9)
    if "max_message" in ours:
        changes["max_message"] = option_int(
            shown, "max_message", ours["max_message"], low=1, high=2**31 - 1
        )
    return attrs.evolve(options, **changes) if changes else options
