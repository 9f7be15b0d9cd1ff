"""Adapter URLs: the scheme that picks an adapter, its options, and how a
URL is shown without its secrets.

Every adapter is chosen by the scheme of a URL (``sqlite:///state.db``,
``postgresql://app@db/jobs``) and opened by a factory that takes the whole
URL; these helpers parse it the same way for every adapter. Adapters import
them through `kernel.ports`.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Collection

from kernel.errors import InvalidAdapterURL

__all__ = [
    "option_flag",
    "option_int",
    "option_seconds",
    "redact_url",
    "url_options",
    "url_scheme",
]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_USER_PASSWORD = re.compile(r"([^:/?#@]*):(.*)@", re.DOTALL)
_SECRET_OPTION = re.compile(r"pass|pwd|secret|token|key|auth|credential|signature", re.IGNORECASE)
_OPTION_SEPARATORS = re.compile(r"([&;])")
_REDACTED = "***"
"""What `redact_url` writes in place of a secret."""


def redact_url(url: str, *, within: str | None = None) -> str:
    """``url`` with its secrets replaced by ``***``, for anything printed or
    logged: the password of the user-info (``postgresql://app:***@db/jobs``)
    and the value of every option whose name looks like a secret
    (``password``, ``sslpassword``, ``token``, ``api_key``, ``secret``,
    ``auth``...: ``redis://cache/0?password=***``).

    With ``within``, that text instead, with every secret of ``url`` hidden
    the same way: for a client library's message that may quote the URL or
    a part of it (libpq's ``missing "=" after "..."``).

    Made for broken URLs too, since those are the ones an error message
    shows: a password with an unescaped ``/``, ``?`` or ``@`` is hidden up
    to the last ``@`` of the URL, and a string without a scheme is read as
    if it were the part after ``scheme://``. When unsure it hides more, never
    less (``nats://host:4222/a@b`` shows as ``nats://host:***@b``).
    """
    shown, secrets = _redacted(url)
    if within is None:
        return shown
    text = within.replace(url, shown)
    for secret in sorted(secrets, key=len, reverse=True):
        for spelling in {secret, urllib.parse.unquote(secret)}:
            text = text.replace(spelling, _REDACTED)
    return text


def _redacted(url: str) -> tuple[str, list[str]]:
    """``url`` redacted, and the secrets taken out of it."""
    head, separator, rest = url.partition("://")
    if not separator:
        head, rest = "", url
    else:
        head += separator
    rest, secrets = _redact_user_info(rest)
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if query_at >= 0:
        options, hidden = _redact_options(rest[query_at + 1 :])
        rest = rest[: query_at + 1] + options
        secrets += hidden
    return head + rest, [secret for secret in secrets if secret]


def _redact_user_info(rest: str) -> tuple[str, list[str]]:
    """``user:password@host...`` with the password hidden; the ``@`` that
    ends the user-info is the last one before the query, else the last one."""
    query_at = rest.find("?")
    before_query = rest[:query_at] if query_at >= 0 else rest
    end = before_query.rfind("@")
    if end < 0:
        end = rest.rfind("@")
    if end < 0:
        return rest, []
    match = _USER_PASSWORD.fullmatch(rest, 0, end + 1)
    if match is None:
        return rest, []
    return f"{match.group(1)}:{_REDACTED}@{rest[end + 1 :]}", [match.group(2)]


def _redact_options(query: str) -> tuple[str, list[str]]:
    """``a=1&password=x#token=y`` with the values of secret-looking names hidden."""
    pieces = _OPTION_SEPARATORS.split(query.replace("#", "&#"))
    shown, secrets = [], []
    for piece in pieces:
        name, equals, value = piece.partition("=")
        if equals and _SECRET_OPTION.search(urllib.parse.unquote(name)):
            piece = f"{name}={_REDACTED}"
            secrets.append(value)
        shown.append(piece)
    return "".join(shown).replace("&#", "#"), secrets


def url_scheme(url: object) -> str:
    """The lower-cased scheme of ``url``, or `InvalidAdapterURL` if it has none."""
    if not isinstance(url, str):
        raise InvalidAdapterURL(repr(url), f"must be a str, not {type(url).__name__}")
    if url != url.strip():
        raise InvalidAdapterURL(redact_url(url), "has leading or trailing whitespace")
    match = _SCHEME.match(url)
    if match is None:
        raise InvalidAdapterURL(
            redact_url(url),
            "has no scheme; write scheme://..., e.g. memory:// or sqlite:///state.db",
        )
    return match.group(1).lower()


def url_options(url: str, *, allowed: Collection[str], location: bool = False) -> dict[str, str]:
    """The ``?name=value`` options of ``url``, for an adapter factory.

    Raises `InvalidAdapterURL` for an option not in ``allowed``, an option
    given twice, a ``#fragment``, or, unless ``location`` is true, a host or
    path (``memory://`` and ``local://`` name nothing).
    """
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError as error:
        raise InvalidAdapterURL(shown, f"cannot be parsed: {error}") from None
    if parts.fragment:
        raise InvalidAdapterURL(shown, "a #fragment means nothing here")
    if not location and (parts.netloc or parts.path):
        raise InvalidAdapterURL(shown, f"{parts.scheme}:// takes no host or path, only ?options")
    options: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidAdapterURL(shown, f"unknown option {name!r} (known options: {known})")
        if name in options:
            raise InvalidAdapterURL(shown, f"option {name!r} is given twice")
        options[name] = value
    return options


# The value of one option, from the text `url_options` returned; ``shown`` is
# the URL as errors show it (`redact_url`).


def option_int(shown: str, name: str, text: str, *, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high``, or `InvalidAdapterURL`."""
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise InvalidAdapterURL(
            shown, f"{name}={text!r}: expected a whole number from {low} to {high}"
        )
    return int(text)


def option_seconds(shown: str, name: str, text: str) -> float:
    """A number of seconds above zero, or `InvalidAdapterURL`."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InvalidAdapterURL(shown, f"{name}={text!r}: expected seconds, a number > 0")
    return value


def option_flag(shown: str, name: str, text: str) -> bool:
    """true/false (also 1/0, yes/no, on/off, any case), or `InvalidAdapterURL`."""
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidAdapterURL(shown, f"{name}={text!r}: expected true or false")
