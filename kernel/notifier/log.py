"""The ``log://`` notifier: notifications as stdlib `logging` records.

The default notifier, so a kernel with nothing installed still tells
someone (whoever reads its logs) when a plugin is disabled. Records go to
the logger ``kernel.notify`` (or the one named by ``log://?logger=name``) at
the `logging` level matching the `kernel.ports.Level`, formatted as
``"title: message"``; the parts are also on the record as ``notify_title``,
``notify_message`` and ``notify_level`` for structured handlers.

Logging is synchronous, as everywhere in Python: a handler that blocks
(a slow network handler) blocks the trio thread, so point such handlers at
a `logging.handlers.QueueHandler`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import trio

from kernel._exports import fixup_module_metadata
from kernel.errors import InvalidAdapterURL, NotifierClosed
from kernel.ports import Level, Notifier, validate_notification
from kernel.urls import redact_url, url_options

__all__ = ["DEFAULT_LOGGER", "LogNotifier", "open_log_notifier"]

DEFAULT_LOGGER = "kernel.notify"


def _to_logger(value: logging.Logger | str) -> logging.Logger:
    return value if isinstance(value, logging.Logger) else logging.getLogger(value)


@attrs.define(eq=False)
class LogNotifier:
    """A `kernel.ports.Notifier` writing to a `logging.Logger` (or its name)."""

    logger: logging.Logger = attrs.field(
        factory=lambda: logging.getLogger(DEFAULT_LOGGER), converter=_to_logger
    )
    _closed: bool = attrs.field(default=False, init=False)

    async def notify(self, title: str, message: str, level: Level = Level.info) -> None:
        """Log ``"title: message"`` (just the title if the message is empty)
        at ``level``; raises `InvalidNotification` or `NotifierClosed`."""
        validate_notification(title, message, level)
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise NotifierClosed("the log notifier is closed")
        extra = {"notify_title": title, "notify_message": message, "notify_level": level.value}
        if message:
            self.logger.log(level.logging_level, "%s: %s", title, message, extra=extra)
        else:
            self.logger.log(level.logging_level, "%s", title, extra=extra)

    async def aclose(self) -> None:
        """Later `notify` calls raise `NotifierClosed`. Idempotent."""
        self._closed = True
        await trio.lowlevel.checkpoint()


def open_log_notifier(url: str) -> LogNotifier:
    """The factory for ``log://`` and ``log://?logger=name``."""
    options = url_options(url, allowed=("logger",))
    name = options.get("logger", DEFAULT_LOGGER)
    if not name or name != name.strip():
        raise InvalidAdapterURL(redact_url(url), f"logger must be a logger name, not {name!r}")
    return LogNotifier(name)


if TYPE_CHECKING:

    def _keeps_the_port(notifier: LogNotifier) -> Notifier:
        return notifier  # mypy proves LogNotifier satisfies the Notifier protocol


fixup_module_metadata(__name__, globals())
