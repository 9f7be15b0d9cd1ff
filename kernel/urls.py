"""Adapter URLs: the scheme that picks an adapter, its options, and how a
URL is shown without its secrets.

Every adapter is chosen by the scheme of a URL (``sqlite:///state.db``,
``postgresql://app@db/jobs``) and opened by a factory that takes the whole
URL; these helpers parse it the same way for every adapter. Adapters import
them through `kernel.ports`.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Collection

from kernel.errors import InvalidAdapterURL

__all__ = ["redact_url", "url_options", "url_scheme"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_PASSWORD = re.compile(r"^([^:/?#]+://[^/?#@:]*):[^/?#@]*@")


def redact_url(url: str) -> str:
    """``url`` with the password of its user-info replaced by ``***``, for
    error messages and logs (``postgresql://app:***@db/jobs``)."""
    return _PASSWORD.sub(r"\1:***@", url)


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
