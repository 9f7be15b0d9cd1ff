"""`AppriseNotifier`: one ``apprise+<service>://`` URL as a `kernel.ports.Notifier`.

Apprise (https://github.com/caronc/apprise) knows 100+ services, each by
one URL; this adapter writes no service client of its own. Apprise is
synchronous, so each delivery runs in a trio worker thread (at most four at
once per notifier) under two limits: Apprise's own call ``timeout``, and a
trio deadline a little later that abandons the thread, so the trio loop
never waits on a service that does not answer.

What is sent:

- the **title** as Apprise's title;
- the **level** as Apprise's notify type (debug and info: ``info``;
  warning: ``warning``; error and critical: ``failure``), which services
  show as a colour or an icon;
- the **message** as the body, declared plain text (Apprise escapes it for
  HTML services) or Markdown (``?kernel_format=markdown``, converted where
  the service needs it), followed by a footer with the notification's
  context, ``-- error | plugin backup | host web-1`` (`footer`), unless
  ``?kernel_context=no``. The footer keeps the exact level, which the
  notify type cannot (`split_footer` reads it back).

A delivery Apprise reports as failed raises `NotificationFailed` with the
warnings Apprise logged as the reason; the kernel's outbox retries it.
Apprise does not expose a service's HTTP response, so a ``Retry-After`` is
known only when an Apprise plugin logs it ("retry after N seconds"), and
then set as ``retry_after``. The ``apprise`` logger is kept at INFO or above:
at DEBUG it prints header values and message bodies in clear.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Final

import apprise
import trio

from kernel.errors import InvalidAdapterURL, NotificationFailed, NotifierClosed
from kernel.ports import (
    Level,
    NotificationContext,
    Notifier,
    current_notification_context,
    validate_notification,
)
from kernel_apprise._url import PREFIX, AppriseOptions, parse_apprise_url, scheme_only

__all__ = ["AppriseNotifier", "footer", "open_notifier", "split_footer"]

#: Seconds past Apprise's own timeout before the thread is abandoned.
_GRACE: Final = 5.0
#: Deliveries one notifier runs at once (each in a worker thread).
CONCURRENCY: Final = 4

_NOTIFY_TYPES: Final = {
    Level.debug: apprise.NotifyType.INFO,
    Level.info: apprise.NotifyType.INFO,
    Level.warning: apprise.NotifyType.WARNING,
    Level.error: apprise.NotifyType.FAILURE,
    Level.critical: apprise.NotifyType.FAILURE,
}
_FORMATS: Final = {"text": apprise.NotifyFormat.TEXT, "markdown": apprise.NotifyFormat.MARKDOWN}
_FOOTER = re.compile(
    r"(?:^|\n\n)-- (debug|info|warning|error|critical)(?: \| plugin (\S+))? \| host (\S*)\Z"
)
_RETRY_AFTER = re.compile(r"retry.after\D{0,20}?(\d+(?:\.\d+)?)\s*(ms|milli|s|sec)?", re.I)
_MAX_REASON = 500


def keep_apprise_logger_quiet() -> None:
    """Raise the ``apprise`` logger to INFO if it would log DEBUG (secrets)."""
    logger = logging.getLogger("apprise")
    if logger.getEffectiveLevel() < logging.INFO:
        logger.setLevel(logging.INFO)


def footer(level: Level, context: NotificationContext) -> str:
    """The line the context travels in: ``-- LEVEL | plugin NAME | host HOST``."""
    plugin = f" | plugin {context.plugin}" if context.plugin else ""
    return f"-- {level.value}{plugin} | host {context.host}"


def split_footer(body: str) -> tuple[str, Level | None, str | None, str | None]:
    """``(message, level, plugin, host)`` of a delivered body; the level,
    plugin and host are None when the body has no footer."""
    match = _FOOTER.search(body)
    if match is None:
        return body, None, None, None
    return body[: match.start()], Level(match.group(1)), match.group(2), match.group(3)


class AppriseNotifier:
    """A `kernel.ports.Notifier` sending through Apprise; see the module docstring."""

    def __init__(self, url: str) -> None:
        options = parse_apprise_url(url)
        keep_apprise_logger_quiet()
        self.options: AppriseOptions = options
        self._apprise = apprise.Apprise()
        if not self._apprise.add(options.apprise_url):
            raise InvalidAdapterURL(
                scheme_only(url),
                "Apprise cannot load this URL: an unknown service, a missing or malformed "
                "token, or a missing optional dependency (mqtt:// needs paho-mqtt >= 2.1: "
                "pip install 'trio-kernel-apprise[mqtt]')",
            )
        private_url: str = self._apprise[0].url(privacy=True)  # type: ignore[no-untyped-call]
        self.shown_url: str = PREFIX + private_url.split("?", 1)[0]
        """The URL in Apprise's privacy form, without its query: safe to show."""
        self._limiter = trio.CapacityLimiter(CONCURRENCY)
        self._closed = False

    def __repr__(self) -> str:
        return f"AppriseNotifier({self.shown_url!r})"

    async def notify(self, title: str, message: str, level: Level = Level.info) -> None:
        """Deliver through Apprise in a worker thread; `NotificationFailed`
        if Apprise reports a failure or no answer came in time."""
        validate_notification(title, message, level)
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise NotifierClosed(f"the notifier {self.shown_url} is closed")
        body = message
        if self.options.context:
            line = footer(level, current_notification_context())
            body = f"{message}\n\n{line}" if message else line
        timeout = self.options.timeout

        def send() -> apprise.AppriseResult:
            return self._apprise.notify(
                body=body,
                title=title,
                notify_type=_NOTIFY_TYPES[level],
                body_format=_FORMATS[self.options.body_format],
                timeout=timeout,
            )

        with trio.move_on_after(timeout + _GRACE) as deadline:
            result = await trio.to_thread.run_sync(
                send, abandon_on_cancel=True, limiter=self._limiter
            )
        if deadline.cancelled_caught:
            raise NotificationFailed(self.shown_url, f"no answer within {timeout:g} s")
        if not result:
            reason, retry_after = _failure(result)
            raise NotificationFailed(self.shown_url, reason, retry_after=retry_after)

    async def aclose(self) -> None:
        """Later `notify` calls raise `NotifierClosed`. Idempotent."""
        self._closed = True
        await trio.lowlevel.checkpoint()


def _failure(result: apprise.AppriseResult) -> tuple[str, float | None]:
    """The reason Apprise's captured warnings give, and a retry-after if one
    of them names it."""
    messages = [
        entry.message
        for entry in result.logs()
        if entry.level in ("WARNING", "ERROR", "CRITICAL") and entry.message
    ]
    status = getattr(result.status, "name", str(result.status)).lower()
    reason = "; ".join(dict.fromkeys(messages)) or f"Apprise reported {status}"
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 1] + "…"
    retry_after = None
    for text in messages:
        match = _RETRY_AFTER.search(text)
        if match is not None:
            value = float(match.group(1))
            unit = (match.group(2) or "s").lower()
            retry_after = value / 1000 if unit.startswith("m") else value
    return reason, retry_after


def open_notifier(url: str) -> AppriseNotifier:
    """The factory for ``apprise+<service>://...`` (entry point ``apprise``
    in group ``kernel.notifier``)."""
    return AppriseNotifier(url)


if TYPE_CHECKING:

    def _keeps_the_port(notifier: AppriseNotifier) -> Notifier:
        return notifier  # mypy proves AppriseNotifier satisfies the Notifier protocol
