"""Routes: which notifications go to which notifier, and how noisy it may be.

A `NotifyRoute` is one entry of ``[kernel] notifier`` (a URL) or of the
``[[kernel.notify]]`` tables: the notifier's URL, what it covers (a
minimum level, the plugins, the topics as bus-style patterns) and its noise
rules. Pure configuration with a pure `covers` test; `kernel.notifier.fanout`
opens and drives the routes.

A notifier URL may hold secrets anywhere (Slack's and Telegram's tokens sit
in the path), so a route is never shown by its URL: it is shown by its
``name``, else by its scheme and a short digest of the URL
(``apprise+slack:3f2a9c01``), which is also its id in stored jobs. Only
``log://`` URLs, which hold no secrets, are shown as written.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import attrs

from kernel.bus.topics import topic_matches, validate_pattern
from kernel.notifier.context import NotificationContext
from kernel.notifier.noise import DEFAULT_NOISE_RULES, NO_NOISE_RULES, NoiseRules
from kernel.ports import Level

__all__ = ["NotifyRoute", "route_label", "routes_from"]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
#: Schemes delivered at once, in-process, without the outbox: a log line
#: cannot be lost to a network failure, and must not wait for a queue.
IMMEDIATE_SCHEMES = frozenset({"log"})


def route_label(url: str, name: str | None = None) -> str:
    """How a route is shown and stored: its ``name``, a ``log://`` URL as
    written, else ``scheme:`` and 8 hex digits of the URL's SHA-256."""
    if name:
        return name
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else "notifier"
    if scheme in IMMEDIATE_SCHEMES:
        return url
    return f"{scheme}:{hashlib.sha256(url.encode('utf-8', 'replace')).hexdigest()[:8]}"


def _url(_instance: object, _attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"expected a notifier URL string, got a {type(value).__name__}")
    if not _SCHEME.match(value) or value != value.strip():
        if value.strip().lower().startswith("log:") or ":" not in value:
            shown = repr(value)
        else:  # the rest may hold a secret
            shown = repr(value.split(":", 1)[0][:40] + ":…")
        raise ValueError(
            "expected a URL like 'scheme://...' (e.g. 'log://', 'apprise+ntfy://topic'), "
            f"got {shown}"
        )


def _name(_instance: object, _attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (isinstance(value, str) and _NAME.fullmatch(value)):
        raise ValueError(
            f"expected a name of 1-63 characters of A-Z, a-z, 0-9, '_', '.', '-', got {value!r}"
        )


def _names(_instance: object, _attribute: object, value: tuple[object, ...]) -> None:
    for item in value:
        if not isinstance(item, str) or not item:
            raise ValueError(f"expected plugin names, got {item!r}")


def _patterns(_instance: object, _attribute: object, value: tuple[object, ...]) -> None:
    for item in value:
        validate_pattern(item)


def _tuple(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str):
        return (value,)  # one plugin or topic, not a tuple of characters
    return tuple(value)


def _optional_duration(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, timedelta) or value < timedelta(0)):
        raise ValueError(f"expected a duration >= 0, got {value!r}")


def _positive_duration(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
        raise ValueError(f"expected a positive duration, got {value!r}")


def _optional_count(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"expected an integer >= 0, got {value!r}")


def _attempts(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"expected an integer >= 1, got {value!r}")


@attrs.frozen
class NotifyRoute:
    """One notifier and what it covers (a ``[[kernel.notify]]`` table).

    ``min_level``: the least serious level sent. ``plugins``: only
    notifications about these plugins (a plugin's own, its failure, its
    health); empty means all, the kernel's own included. ``topics``: only
    these topics (patterns with ``*`` and ``#``, as on the bus: ``health``,
    ``plugin.*``). Noise rules left out take the defaults of the kind of
    notifier: `kernel.notifier.noise.DEFAULT_NOISE_RULES` for a remote one,
    none for ``log://``, which records everything. ``max_attempts`` and
    ``timeout`` bound each delivery of a remote notifier (through the job
    queue: stored, retried, dead-lettered).
    """

    url: str = attrs.field(validator=_url, repr=lambda url: route_label(url))
    name: str | None = attrs.field(default=None, validator=_name)
    min_level: Level = attrs.field(default=Level.debug, converter=Level)
    plugins: tuple[str, ...] = attrs.field(default=(), converter=_tuple, validator=_names)
    topics: tuple[str, ...] = attrs.field(default=(), converter=_tuple, validator=_patterns)
    dedup_window: timedelta | None = attrs.field(default=None, validator=_optional_duration)
    rate_limit: int | None = attrs.field(default=None, validator=_optional_count)
    rate_period: timedelta | None = attrs.field(default=None, validator=_positive_duration)
    max_attempts: int = attrs.field(default=8, validator=_attempts)
    timeout: timedelta = attrs.field(default=timedelta(seconds=30), validator=_positive_duration)

    @property
    def label(self) -> str:
        """How this route is shown (logs, health, ``kernel jobs``): never the
        secrets of its URL (`route_label`)."""
        return route_label(self.url, self.name)

    @property
    def scheme(self) -> str:
        match = _SCHEME.match(self.url)
        assert match is not None  # the validator checked
        return match.group(1).lower()

    @property
    def durable(self) -> bool:
        """Delivered through the job queue (every scheme but ``log``)."""
        return self.scheme not in IMMEDIATE_SCHEMES

    @property
    def noise_rules(self) -> NoiseRules:
        """The rules in force: those given, the kind's defaults for the rest."""
        base = DEFAULT_NOISE_RULES if self.durable else NO_NOISE_RULES
        return NoiseRules(
            dedup_window=base.dedup_window if self.dedup_window is None else self.dedup_window,
            rate_limit=base.rate_limit if self.rate_limit is None else self.rate_limit,
            rate_period=base.rate_period if self.rate_period is None else self.rate_period,
        )

    def covers(self, level: Level, context: NotificationContext) -> bool:
        """Whether a notification at ``level`` in ``context`` goes here."""
        if level < self.min_level:
            return False
        if self.plugins and context.plugin not in self.plugins:
            return False
        return not self.topics or any(topic_matches(p, context.topic) for p in self.topics)


def routes_from(spec: str | NotifyRoute | Sequence[str | NotifyRoute]) -> list[NotifyRoute]:
    """The routes a ``notifier`` setting means: a URL, a route, or a list of
    either; two routes with one label are a `ValueError` (a stored delivery
    must name one notifier)."""
    items: Sequence[str | NotifyRoute] = [spec] if isinstance(spec, str | NotifyRoute) else spec
    routes = [item if isinstance(item, NotifyRoute) else NotifyRoute(item) for item in items]
    seen: set[str] = set()
    for route in routes:
        if route.label in seen:
            raise ValueError(f"two notifiers are both {route.label!r}: give one a different name")
        seen.add(route.label)
    return routes
