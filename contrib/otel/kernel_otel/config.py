"""The ``[otel]`` table: where the spans and metrics go, and how many traces to keep.

::

    [otel]
    service_name = "billing-worker"      # the resource's service.name
    exporter = "otlp"                     # "otlp" (needs the [otlp] extra), "console" or "none"
    endpoint = "http://collector:4318"   # OTLP/HTTP base URL (default: OTEL_EXPORTER_OTLP_*)
    headers = { authorization = "Bearer ..." }   # sent with every export; never logged
    sample_ratio = 0.25                   # of new traces; a job follows its enqueuer's decision

The table is structured by the kernel's config loader, so a mistake (an
unknown key, an exporter that does not exist, a ratio above 1) is one
`ConfigError` naming the file and the key. The environment variables the
OpenTelemetry SDK reads (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``...) apply to whatever the table leaves out.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Literal

import attrs

__all__ = ["Exporter", "OtelConfig"]

Exporter = Literal["otlp", "console", "none"]

# RFC 9110's token: what an HTTP header name may be
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_service_name(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError("expected a non-empty name")


def _check_endpoint(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError(f"expected a URL as a string, got {type(value).__name__}")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL such as 'http://127.0.0.1:4318'")
    if parts.username is not None or parts.password is not None:
        raise ValueError("put credentials in headers, not in the URL")


def _check_headers(_: object, attribute: attrs.Attribute[Any], value: dict[str, str]) -> None:
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an HTTP header name")
        if "\n" in text or "\r" in text:
            raise ValueError(f"the value of header {name!r} has a line break")


def _check_ratio(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a ratio from 0 to 1, got {value:g}")


@attrs.frozen
class OtelConfig:
    """The ``[otel]`` table (see the module docstring). ``headers`` are kept
    out of the repr: they usually hold a token."""

    service_name: str | None = attrs.field(default=None, validator=_check_service_name)
    exporter: Exporter = "otlp"
    endpoint: str | None = attrs.field(default=None, validator=_check_endpoint)
    headers: dict[str, str] = attrs.field(factory=dict, repr=False, validator=_check_headers)
    sample_ratio: float = attrs.field(default=1.0, validator=_check_ratio)

    def signal_endpoint(self, signal: Literal["traces", "metrics"]) -> str | None:
        """The OTLP/HTTP URL for ``signal``: ``endpoint`` is a base URL, as
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` is (``/v1/traces`` is appended)."""
        if self.endpoint is None:
            return None
        return f"{self.endpoint.rstrip('/')}/v1/{signal}"
