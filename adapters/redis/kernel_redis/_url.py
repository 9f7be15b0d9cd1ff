"""``redis://`` and ``rediss://`` URLs: where the server is, and the kernel's options.

The URL is the one every Redis client reads (``redis://[user:password@]host
[:port][/db]``; ``rediss://`` for TLS), plus a few options of the kernel's
own. Unlike libpq, coredis does not check query options, so every option
is checked here and an unknown one is an error rather than ignored.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Collection
from typing import Any, Final, Literal

import attrs

from kernel.errors import InvalidAdapterURL
from kernel.ports import option_flag, option_int, option_seconds, redact_url

__all__ = [
    "BUS_OPTIONS",
    "STORAGE_OPTIONS",
    "RedisOptions",
    "parse_redis_url",
    "shown_url",
]

SCHEMES: Final = ("redis", "rediss")

_COMMON: Final = frozenset(
    {
        "prefix",
        "pool_size",
        "pool_timeout",
        "connect_timeout",
        "client_name",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_check_hostname",
    }
)
STORAGE_OPTIONS: Final = _COMMON
BUS_OPTIONS: Final = _COMMON | {"buffer"}
_KERNEL_OPTIONS: Final = STORAGE_OPTIONS | BUS_OPTIONS

DEFAULT_PREFIX: Final = "kernel:"
DEFAULT_POOL_SIZE: Final = 10
DEFAULT_POOL_TIMEOUT: Final = 10.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_CLIENT_NAME: Final = "trio-kernel"
DEFAULT_BUFFER: Final = 1024

_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_CLIENT_NAME = re.compile(r"[!-~]{1,100}")  # printable ASCII, no spaces (CLIENT SETNAME)
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")
_CERT_REQS: Final = ("required", "optional", "none")


def shown_url(url: str) -> str:
    """``url`` safe to print: the password of the user-info (and of a
    ``password=`` option, should one be given) replaced by ``***``."""
    return _QUERY_PASSWORD.sub(r"\1***", redact_url(url))


@attrs.frozen
class RedisOptions:
    """What a ``redis://`` URL asks for."""

    host: str
    port: int
    db: int
    location: str
    """The server and database, password redacted: what messages name."""
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    """Never shown: see `location`."""
    ssl: bool = False
    prefix: str = DEFAULT_PREFIX
    """Every key and channel of this kernel starts with it (several kernels,
    or environments, on one Redis)."""
    pool_size: int = DEFAULT_POOL_SIZE
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    """Seconds a call waits for a free connection before failing."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    client_name: str = DEFAULT_CLIENT_NAME
    """What ``CLIENT LIST`` shows for this kernel's connections."""
    ssl_cert_reqs: Literal["required", "optional", "none"] | None = None
    ssl_ca_certs: str | None = None
    ssl_check_hostname: bool | None = None
    buffer: int = DEFAULT_BUFFER
    """Bus: messages that may wait for one subscriber."""

    @property
    def where(self) -> str:
        """`location` and the key prefix, for messages about the kernel's keys."""
        return f"{self.location} (prefix {self.prefix!r})"


def _options(shown: str, query: str, allowed: Collection[str]) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as error:
        raise InvalidAdapterURL(shown, f"cannot be parsed: {error}") from None
    ours: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            reason = "does not apply here" if name in _KERNEL_OPTIONS else "is unknown"
            known = ", ".join(sorted(allowed))
            raise InvalidAdapterURL(shown, f"option {name!r} {reason} (known: {known})")
        if name in ours:
            raise InvalidAdapterURL(shown, f"option {name!r} is given twice")
        ours[name] = value
    return ours


def parse_redis_url(url: str, *, allowed: Collection[str] = STORAGE_OPTIONS) -> RedisOptions:
    """The `RedisOptions` of ``url``, else `InvalidAdapterURL` (password redacted).

    ``redis://[user:password@]host[:port][/db]`` (port 6379, db 0 by
    default; ``rediss://`` for TLS), with the options ``prefix`` (the start
    of every key, ``kernel:`` by default: letters, digits and ``_.:-``),
    ``pool_size`` (connections, default 10), ``pool_timeout`` and
    ``connect_timeout`` (seconds, default 10 and 5), ``client_name`` (shown
    by ``CLIENT LIST``, default ``trio-kernel``), ``buffer`` (bus), and for
    ``rediss://`` ``ssl_cert_reqs`` (required, optional, none),
    ``ssl_ca_certs`` (a file) and ``ssl_check_hostname``.
    """
    if not isinstance(url, str):
        raise InvalidAdapterURL(repr(url), f"must be a str, not {type(url).__name__}")
    shown = shown_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 6379
    except ValueError as error:
        raise InvalidAdapterURL(shown, f"cannot be parsed: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidAdapterURL(shown, "is not a redis:// or rediss:// URL")
    if parts.fragment:
        raise InvalidAdapterURL(shown, "a #fragment means nothing here")
    if not parts.hostname:
        raise InvalidAdapterURL(shown, "names no host (redis://host:6379/0)")
    path = parts.path.strip("/")
    db = option_int(shown, "the database (path)", path, low=0, high=10_000) if path else 0
    ours = _options(shown, parts.query, allowed)
    location = shown_url(urllib.parse.urlunsplit((scheme, parts.netloc, f"/{db}", "", "")))
    changes: dict[str, Any] = {}
    prefix = ours.get("prefix", DEFAULT_PREFIX)
    if _PREFIX.fullmatch(prefix) is None:
        raise InvalidAdapterURL(
            shown,
            f"prefix={prefix!r}: expected 1 to 100 letters, digits or _ . : - "
            "(no glob characters, so the kernel's keys can be listed by prefix)",
        )
    changes["prefix"] = prefix
    if "pool_size" in ours:
        changes["pool_size"] = option_int(shown, "pool_size", ours["pool_size"], low=1, high=1000)
    for name in ("pool_timeout", "connect_timeout"):
        if name in ours:
            changes[name] = option_seconds(shown, name, ours[name])
    if "client_name" in ours:
        name = ours["client_name"]
        if _CLIENT_NAME.fullmatch(name) is None:
            raise InvalidAdapterURL(
                shown,
                f"client_name={name!r}: expected 1 to 100 printable ASCII characters, no spaces",
            )
        changes["client_name"] = name
    if "buffer" in ours:
        changes["buffer"] = option_int(shown, "buffer", ours["buffer"], low=1, high=10**9)
    tls_options = {"ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname"} & ours.keys()
    if tls_options and scheme != "rediss":
        raise InvalidAdapterURL(
            shown, f"{', '.join(sorted(tls_options))}: TLS options need a rediss:// URL"
        )
    if "ssl_cert_reqs" in ours:
        reqs = ours["ssl_cert_reqs"]
        if reqs not in _CERT_REQS:
            raise InvalidAdapterURL(
                shown, f"ssl_cert_reqs={reqs!r}: expected one of {', '.join(_CERT_REQS)}"
            )
        changes["ssl_cert_reqs"] = reqs
    if "ssl_ca_certs" in ours:
        changes["ssl_ca_certs"] = ours["ssl_ca_certs"]
    if "ssl_check_hostname" in ours:
        changes["ssl_check_hostname"] = option_flag(
            shown, "ssl_check_hostname", ours["ssl_check_hostname"]
        )
    return RedisOptions(
        host=parts.hostname,
        port=port,
        db=db,
        location=location,
        username=urllib.parse.unquote(parts.username) if parts.username else None,
        password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
        ssl=scheme == "rediss",
        **changes,
    )
