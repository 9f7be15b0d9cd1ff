"""What a notification is about: the plugin, the topic and the host, carried
beside the title and message without changing the `Notifier` port.

The kernel sets the context where a notification starts (a plugin's
``ctx.notify``, the supervisor disabling a plugin, a health transition) in a
`contextvars.ContextVar`, the way structlog's ``contextvars`` module binds
request data: every notifier called below sees it through
`current_notification_context`, routing uses it (`NotifyRoute.covers`), and
the durable outbox stores it with the job and sets it again when the
delivery runs, perhaps in another process after a restart. Adapters may
show it (the Apprise adapter adds a footer).

Topics the kernel uses: ``plugin`` (a plugin's own notification),
``plugin.failed`` (a plugin disabled past its restart budget), ``health``
(a health transition), ``digest`` (what noise control held back), and
``kernel`` for anything else.
"""

from __future__ import annotations

import contextvars
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs

from kernel.bus.topics import validate_topic

__all__ = [
    "NotificationContext",
    "current_notification_context",
    "notification_context",
    "use_notification_context",
]

_HOST = socket.gethostname()


def _topic(_instance: object, _attribute: object, value: object) -> None:
    validate_topic(value)


@attrs.frozen
class NotificationContext:
    """Where a notification comes from: its ``topic`` (dot-separated, as bus
    topics), the ``plugin`` it is about (None for the kernel itself) and the
    ``host`` it was raised on."""

    topic: str = attrs.field(default="kernel", validator=_topic)
    plugin: str | None = None
    host: str = _HOST

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "plugin": self.plugin, "host": self.host}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NotificationContext:
        """The context `to_json` wrote (missing keys take their defaults)."""
        plugin = data.get("plugin")
        return cls(
            topic=str(data.get("topic", "kernel")),
            plugin=None if plugin is None else str(plugin),
            host=str(data.get("host", _HOST)),
        )


_DEFAULT = NotificationContext()
_CURRENT: contextvars.ContextVar[NotificationContext] = contextvars.ContextVar(
    "kernel_notification_context", default=_DEFAULT
)


def current_notification_context() -> NotificationContext:
    """The context of the notification being sent in this task (topic
    ``kernel`` and no plugin when nothing set one)."""
    return _CURRENT.get()


@contextmanager
def use_notification_context(context: NotificationContext) -> Iterator[NotificationContext]:
    """Make ``context`` current inside the ``with`` block."""
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)


@contextmanager
def notification_context(topic: str, *, plugin: str | None = None) -> Iterator[NotificationContext]:
    """Notifications sent inside the ``with`` block are about ``topic`` (and
    ``plugin``), on this host."""
    with use_notification_context(NotificationContext(topic=topic, plugin=plugin)) as context:
        yield context
