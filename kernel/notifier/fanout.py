"""The kernel's notifier when it is configured by URLs: every notification
goes to each notifier whose route covers it, through noise control, and to a
remote notifier through the durable outbox.

::

    notify(title, message, level)          in a NotificationContext
      └─ for each route that covers it     min_level, plugins, topics (routing.py)
           └─ NoiseFilter.admit            dedup window, rate limit (noise.py)
                ├─ log://                  delivered at once, in this task
                └─ anything else           Outbox.enqueue -> job kernel:notify (outbox.py)
                                            └─ deliver_now, retried by the queue

`FanoutNotifier` is itself a `kernel.ports.Notifier`, so plugins and the
kernel use it as they would one adapter. Until `run` hands it the job queue
(and after the kernel stops) every route is delivered at once, so it also
works on its own. `run` also sends each route's digest of what noise
control held back when it is due, and reports each route's health: a
notifier whose deliveries failed three times in a row is degraded, with the
last error as the reason, until one succeeds (and is not sent the health
notifications meanwhile: it would only fail again).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Final

import attrs
import trio

from kernel.errors import (
    AdapterNotFound,
    InvalidAdapterURL,
    NotificationFailed,
    NotifierClosed,
    NotifierNotConfigured,
)
from kernel.jobs.queue import JobQueue
from kernel.notifier.context import (
    NotificationContext,
    current_notification_context,
    use_notification_context,
)
from kernel.notifier.noise import NoiseFilter
from kernel.notifier.outbox import Outbox
from kernel.notifier.routing import NotifyRoute, routes_from
from kernel.observe.health import HealthMonitor, HealthReport
from kernel.ports import Level, Notification, Notifier, validate_notification
from kernel.resilience.retry import retry_after_of
from kernel.runtime.discovery import open_notifier

__all__ = ["FAILURES_TO_DEGRADE", "FanoutNotifier", "RouteState", "open_fanout_notifier"]

log = logging.getLogger("kernel.notify.fanout")

FAILURES_TO_DEGRADE: Final = 3
"""Consecutive failed deliveries that make a notifier's health degraded."""


@attrs.define(eq=False)
class RouteState:
    """An open route: its notifier, its noise filter, and how its deliveries
    went."""

    route: NotifyRoute
    notifier: Notifier
    noise: NoiseFilter
    delivered: int = 0
    failures: int = 0  #: in a row
    last_error: str | None = None

    @property
    def label(self) -> str:
        return self.route.label

    @property
    def degraded(self) -> bool:
        return self.failures >= FAILURES_TO_DEGRADE

    def health(self) -> HealthReport:
        """Degraded after `FAILURES_TO_DEGRADE` failed deliveries in a row."""
        details = {"delivered": self.delivered, "failures_in_a_row": self.failures}
        if self.degraded:
            return HealthReport.degraded(
                f"{self.failures} deliveries in a row failed; last: {self.last_error}", **details
            )
        return HealthReport.healthy(**details)


def dedup_key(notification: Notification, context: NotificationContext) -> str:
    """What makes two alerts the same: topic, plugin, level and title (not the
    message, which often differs only by a timestamp or a traceback)."""
    return "|".join(
        (context.topic, context.plugin or "", notification.level.value, notification.title)
    )


class FanoutNotifier:
    """A `kernel.ports.Notifier` over several routes; see the module docstring."""

    def __init__(self, routes: Sequence[RouteState]) -> None:
        self.routes = list(routes)
        self._by_label = {state.label: state for state in self.routes}
        if len(self._by_label) != len(self.routes):
            raise ValueError("two routes have the same label")
        self._outbox: Outbox | None = None
        self._closed = False
        self._changed = trio.Event()

    # -- the port ------------------------------------------------------------------

    async def notify(self, title: str, message: str, level: Level = Level.info) -> None:
        """Send to every route that covers it, in the current
        `NotificationContext`. Every route is tried; if any failed, a
        `NotificationFailed` naming them is raised afterwards."""
        notification = validate_notification(title, message, level)
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise NotifierClosed("the notifier is closed")
        context = current_notification_context()
        key = dedup_key(notification, context)
        now = trio.current_time()
        failed: list[tuple[str, Exception]] = []
        for state in self.routes:
            if not state.route.covers(level, context):
                continue
            if context.topic == "health" and state.degraded:
                continue  # it is the likely cause, and would only fail again
            if not state.noise.admit(key, title, level, now):
                log.debug("held back for %s: %s", state.label, title)
                self._changed.set()
                continue
            try:
                await self._send(state, notification, context, dedup=key)
            except Exception as error:
                log.warning("%s", error)
                failed.append((state.label, error))
        if len(failed) == 1:
            raise failed[0][1]
        if failed:
            labels = ", ".join(label for label, _ in failed)
            reasons = "; ".join(
                error.reason if isinstance(error, NotificationFailed) else str(error)
                for _, error in failed
            )
            raise NotificationFailed(labels, reasons) from failed[0][1]

    async def aclose(self) -> None:
        """Close every route's notifier (each once, even if one fails)."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        for state in self.routes:
            try:
                await state.notifier.aclose()
            except Exception:
                log.exception("closing the notifier %s failed", state.label)

    # -- delivery ------------------------------------------------------------------

    async def _send(
        self,
        state: RouteState,
        notification: Notification,
        context: NotificationContext,
        *,
        dedup: str | None,
    ) -> None:
        route = state.route
        if route.durable and self._outbox is not None:
            await self._outbox.enqueue(
                state.label,
                notification,
                context,
                dedup=dedup if route.noise_rules.dedup_window else None,
                max_attempts=route.max_attempts,
                timeout=route.timeout,
            )
        else:
            await self.deliver_now(state.label, notification, context)

    async def deliver_now(
        self, label: str, notification: Notification, context: NotificationContext
    ) -> None:
        """Deliver to the notifier ``label`` in this task (what the outbox's
        jobs run); raises `NotifierNotConfigured` or `NotificationFailed`."""
        state = self._by_label.get(label)
        if state is None:
            raise NotifierNotConfigured(label, sorted(self._by_label))
        try:
            with use_notification_context(context):
                await state.notifier.notify(
                    notification.title, notification.message, notification.level
                )
        except Exception as error:
            state.failures += 1
            state.last_error = str(error) or type(error).__name__
            if isinstance(error, NotificationFailed):
                raise
            wait = retry_after_of(error)
            raise NotificationFailed(
                label,
                f"{type(error).__name__}: {error}",
                retry_after=None if wait is None else wait.total_seconds(),
            ) from error
        state.delivered += 1
        state.failures = 0
        state.last_error = None

    # -- the kernel's side ---------------------------------------------------------

    async def run(
        self,
        queue: JobQueue | None = None,
        health: HealthMonitor | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Deliver remote routes through ``queue`` (its stored deliveries,
        from before a restart too, go out), report each route's health to
        ``health`` as ``notifier LABEL``, and send digests when due; until
        cancelled."""
        if queue is not None and any(state.route.durable for state in self.routes):
            self._outbox = Outbox(queue, self.deliver_now)
            self._outbox.start()
        registered = []
        try:
            if health is not None:
                for state in self.routes:
                    name = f"notifier {state.label}"
                    health.register(name, state.health)
                    registered.append(name)
            task_status.started()
            await self._send_digests()
        finally:
            if health is not None:
                for name in registered:
                    health.unregister(name)

    async def _send_digests(self) -> None:
        while True:
            self._changed = trio.Event()
            due = min((state.noise.next_digest_at() for state in self.routes), default=math.inf)
            with trio.move_on_at(due):
                await self._changed.wait()
            now = trio.current_time()
            for state in self.routes:
                digest = state.noise.take_digest(now)
                if digest is None:
                    continue
                notification = Notification(
                    digest.title, digest.message(state.noise.rules), digest.level
                )
                try:
                    await self._send(
                        state, notification, NotificationContext(topic="digest"), dedup=None
                    )
                except Exception as error:
                    log.warning("the digest for %s failed: %s", state.label, error)


async def open_fanout_notifier(
    spec: str | NotifyRoute | Sequence[str | NotifyRoute],
) -> FanoutNotifier:
    """Open the notifier of each route of ``spec`` (a URL, a `NotifyRoute`, or
    a list of either) by its URL's scheme, and fan out to them.

    Errors name the route by its label, never by its URL; if one notifier
    cannot be opened, those already open are closed.
    """
    routes = routes_from(spec)
    states: list[RouteState] = []
    try:
        for route in routes:
            states.append(RouteState(route, await _open(route), NoiseFilter(route.noise_rules)))
    except BaseException:
        for state in states:
            with trio.CancelScope(shield=True):
                await state.notifier.aclose()
        raise
    return FanoutNotifier(states)


async def _open(route: NotifyRoute) -> Notifier:
    try:
        return await open_notifier(route.url)
    except AdapterNotFound as error:
        raise AdapterNotFound(
            error.port, error.scheme, route.label, error.group, error.known
        ) from None
    except InvalidAdapterURL as error:
        if error.url == route.url or route.durable:
            raise InvalidAdapterURL(route.label, error.reason) from None
        raise
