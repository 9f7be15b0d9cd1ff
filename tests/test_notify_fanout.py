"""Several notifiers at once: routing, noise control in the kernel, durable
delivery through the job queue (retries, Retry-After, dead letters, a crash
between notify() and delivery), notifier health, and the config tables."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from kernel import (
    Clock,
    Kernel,
    Manifest,
    NotifyRoute,
    Plugin,
    PluginContext,
    PluginState,
    RestartIntensity,
    Status,
    parse_config,
)
from kernel.errors import (
    AdapterNotFound,
    ConfigError,
    NotificationFailed,
    NotifierClosed,
)
from kernel.jobs.queue import JobQueue
from kernel.notifier.context import notification_context
from kernel.notifier.fanout import FanoutNotifier, RouteState, open_fanout_notifier
from kernel.notifier.noise import NoiseFilter
from kernel.notifier.outbox import QUEUE, TASK, delivery_policy
from kernel.notifier.routing import routes_from
from kernel.ports import (
    JobState,
    Level,
    Notification,
    NotificationContext,
    current_notification_context,
    validate_notification,
)
from kernel.storage.sqlite import SQLiteStorage
from kernel.testing.notifier_contract import Delivered, NotifierContract
from kernel.time.scheduler import open_scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SECRET_URL = "fake+slack://T0000SECRET/B0000SECRET/xoxb-very-secret-token"


class Remote:
    """A remote notifier's stand-in: records each delivery with its context,
    and raises the scripted errors first."""

    def __init__(self, *errors: Exception, forever: Exception | None = None) -> None:
        self.errors = list(errors)
        self.forever = forever
        self.sent: list[tuple[str, str, Level, NotificationContext]] = []
        self.attempts: list[float] = []
        self.arrived = trio.Event()
        self.closed = False

    async def notify(self, title: str, message: str, level: Level = Level.info) -> None:
        validate_notification(title, message, level)
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise NotifierClosed("closed")
        self.attempts.append(trio.current_time())
        if self.errors:
            raise self.errors.pop(0)
        if self.forever is not None:
            raise self.forever
        self.sent.append((title, message, level, current_notification_context()))
        self.arrived.set()

    async def aclose(self) -> None:
        self.closed = True

    @property
    def titles(self) -> list[str]:
        return [title for title, *_ in self.sent]


def fanout(*routes: tuple[NotifyRoute | str, Any]) -> FanoutNotifier:
    states = []
    for route, notifier in routes:
        route = route if isinstance(route, NotifyRoute) else NotifyRoute(route)
        states.append(RouteState(route, notifier, NoiseFilter(route.noise_rules)))
    return FanoutNotifier(states)


def quiet(url: str, **options: Any) -> NotifyRoute:
    """A route without noise control."""
    return NotifyRoute(url, dedup_window=timedelta(0), rate_limit=0, **options)


def kernel(*plugins: Plugin, **options: Any) -> Kernel:
    options.setdefault("clock", Clock.starting_at(T0))
    return Kernel(plugins, **options)


# -- routes ----------------------------------------------------------------------------


def test_routes_cover_by_level_plugin_and_topic() -> None:
    route = NotifyRoute(
        "fake://x", min_level="warning", plugins=["backup"], topics=["plugin.*", "health"]
    )
    backup_failed = NotificationContext(topic="plugin.failed", plugin="backup")
    assert route.covers(Level.error, backup_failed)
    assert not route.covers(Level.info, backup_failed)  # below min_level
    assert not route.covers(Level.error, NotificationContext(topic="plugin.failed", plugin="sync"))
    assert route.covers(Level.warning, NotificationContext(topic="health", plugin="backup"))
    assert not route.covers(Level.warning, NotificationContext(topic="plugin", plugin="backup"))
    assert NotifyRoute("fake://x").covers(Level.debug, NotificationContext())


def test_a_route_is_shown_by_its_name_or_a_digest_never_its_url() -> None:
    route = NotifyRoute(SECRET_URL)
    assert route.label.startswith("fake+slack:")
    assert "SECRET" not in route.label
    assert "SECRET" not in repr(route)
    assert NotifyRoute(SECRET_URL, name="ops").label == "ops"
    assert NotifyRoute("log://?logger=x").label == "log://?logger=x"
    with pytest.raises(ValueError, match="give one a different name"):
        routes_from([SECRET_URL, SECRET_URL])
    with pytest.raises(ValueError, match="expected a URL like") as bad:
        NotifyRoute("fake+slack:T0000SECRET/xoxb-secret")
    assert "SECRET" not in str(bad.value)


def test_remote_routes_get_noise_control_and_log_routes_do_not() -> None:
    assert NotifyRoute("fake://x").durable
    assert NotifyRoute("fake://x").noise_rules.dedup_window == timedelta(minutes=10)
    assert NotifyRoute("fake://x").noise_rules.rate_limit == 20
    assert not NotifyRoute("log://").durable
    assert NotifyRoute("log://").noise_rules.rate_limit == 0
    assert NotifyRoute("log://", rate_limit=5).noise_rules.rate_limit == 5


def test_the_config_tables() -> None:
    config = parse_config(
        f"""
        [kernel]
        notifier = ["log://", "{SECRET_URL}"]

        [[kernel.notify]]
        url = "fake+mail://ops"
        name = "ops-mail"
        min_level = "error"
        plugins = ["backup"]
        topics = ["plugin.failed"]
        dedup_window = "30m"
        rate_limit = 5
        rate_period = "1h"
        max_attempts = 3
        timeout = "10s"
        """,
        source="kernel.toml",
    )
    routes = routes_from(config.kernel.notifiers)
    assert next(route.label for route in routes) == "log://"
    assert routes[2] == NotifyRoute(
        "fake+mail://ops",
        name="ops-mail",
        min_level=Level.error,
        plugins=("backup",),
        topics=("plugin.failed",),
        dedup_window=timedelta(minutes=30),
        rate_limit=5,
        rate_period=timedelta(hours=1),
        max_attempts=3,
        timeout=timedelta(seconds=10),
    )
    with pytest.raises(ConfigError) as bad:
        parse_config('[kernel]\nnotifier = "fake+slack:T0000SECRET/B/C"', source="kernel.toml")
    assert "SECRET" not in str(bad.value)
    with pytest.raises(ConfigError, match=r"kernel\.notify\[0\]\.min_level"):
        parse_config('[[kernel.notify]]\nurl = "log://"\nmin_level = "loud"', source="k")


async def test_an_unknown_scheme_is_reported_without_the_url() -> None:
    with pytest.raises(AdapterNotFound) as error:
        await open_fanout_notifier(["log://", SECRET_URL])
    assert "SECRET" not in str(error.value)
    assert "fake+slack" in str(error.value)


# -- the fan-out notifier on its own -----------------------------------------------------


class TestFanoutNotifier(NotifierContract):
    """On its own (no queue), with no noise rules, it is an ordinary notifier."""

    @pytest.fixture
    def remote(self) -> Remote:
        return Remote()

    @pytest.fixture
    async def notifier(self, remote: Remote) -> AsyncIterator[FanoutNotifier]:
        notifier = fanout(("log://", _log_notifier()), (quiet("fake://x"), remote))
        yield notifier
        await notifier.aclose()

    @pytest.fixture
    def delivered(self, remote: Remote) -> Delivered:
        async def read() -> list[Notification]:
            return [Notification(title, message, level) for title, message, level, _ in remote.sent]

        return read


def _log_notifier() -> Any:
    from kernel.notifier.log import LogNotifier

    return LogNotifier()


async def test_every_covering_route_gets_it_and_one_failure_spares_the_others() -> None:
    broken = Remote(forever=ConnectionError("refused"))
    ops, dev = Remote(), Remote()
    notifier = fanout(
        (quiet("fake://broken"), broken),
        (quiet("fake://ops", min_level="error"), ops),
        (quiet("fake://dev"), dev),
    )
    with pytest.raises(NotificationFailed, match="refused") as failed:
        await notifier.notify("disk full", "93%", Level.warning)
    assert isinstance(failed.value.__cause__, ConnectionError)
    assert failed.value.notifier.startswith("fake:")
    assert dev.titles == ["disk full"]
    assert ops.titles == []  # below its min_level
    await notifier.aclose()
    assert broken.closed
    assert ops.closed
    assert dev.closed
    with pytest.raises(NotifierClosed):
        await notifier.notify("after", "")


async def test_the_context_goes_along() -> None:
    remote = Remote()
    notifier = fanout((quiet("fake://x"), remote))
    with notification_context("plugin", plugin="backup"):
        await notifier.notify("[backup] done", "")
    (_, _, _, context) = remote.sent[0]
    assert (context.topic, context.plugin) == ("plugin", "backup")
    assert context.host


# -- in the kernel: durable delivery -------------------------------------------------------


class Alerts(Plugin):
    manifest = Manifest("alerts", permissions=["notifications"])

    async def on_enable(self, ctx: PluginContext) -> None:
        self.ctx = ctx


async def test_remote_notifications_are_jobs_of_the_queue(autojump_clock: MockClock) -> None:
    remote = Remote()
    plugin = Alerts()
    async with kernel(plugin, notifier=fanout((NotifyRoute("fake://x", name="ops"), remote))) as k:
        await plugin.ctx.notify("backup failed", "exit 3", Level.error)
        await trio.sleep(1)
        jobs = await k.queue.store.list_jobs(queue=QUEUE)
    assert [(job.task, job.state, job.args[0]) for job in jobs] == [
        (TASK, JobState.succeeded, "ops")
    ]
    assert jobs[0].args[1:4] == ["[alerts] backup failed", "exit 3", "error"]
    (title, message, level, context) = remote.sent[0]
    assert (title, message, level) == ("[alerts] backup failed", "exit 3", Level.error)
    assert (context.topic, context.plugin) == ("plugin", "alerts")


async def test_an_endpoint_failing_twice_is_retried_until_it_answers(
    autojump_clock: MockClock,
) -> None:
    remote = Remote(ConnectionError("503"), ConnectionError("503"))
    async with kernel(notifier=fanout((NotifyRoute("fake://x"), remote))) as k:
        await k.notifier.notify("disk full", "93%", Level.warning)
        await remote.arrived.wait()
        await k.queue.wait_idle(QUEUE)  # the success is stored with the next claim
        (job,) = await k.queue.store.list_jobs(queue=QUEUE)
    assert remote.titles == ["disk full"]
    assert len(remote.attempts) == 3
    assert job.attempts == 3
    assert job.state is JobState.succeeded


async def test_retry_after_is_honoured(autojump_clock: MockClock) -> None:
    remote = Remote(NotificationFailed("fake", "HTTP 429", retry_after=900))
    async with kernel(notifier=fanout((NotifyRoute("fake://x"), remote))) as k:
        await k.notifier.notify("rate limited", "")
        await remote.arrived.wait()
    first, second = remote.attempts
    assert 900 <= second - first < 901


async def test_a_notifier_failing_forever_ends_in_a_dead_letter_and_degraded_health(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Remote(forever=ConnectionError("HTTP 500"))
    route = NotifyRoute("fake://broken", name="broken", max_attempts=4)
    async with kernel(notifier=fanout((route, broken))) as k:
        await k.notifier.notify("backup failed", "exit 3", Level.error)
        await trio.sleep(3600)
        (dead,) = await k.queue.dead_letters()
        snapshot = await k.health.check_all()
    assert dead.task == TASK
    assert dead.attempts == 4
    assert "HTTP 500" in (dead.last_error or "")
    assert len(broken.attempts) == 4
    report = snapshot.components["notifier broken"]
    assert report.status is Status.DEGRADED
    assert "4 deliveries in a row failed; last: " in report.reasons[0]
    assert "HTTP 500" in report.reasons[0]


async def test_health_recovers_on_a_delivery(autojump_clock: MockClock) -> None:
    flaky = Remote(*[ConnectionError("down")] * 3)
    async with kernel(notifier=fanout((NotifyRoute("fake://x", name="x"), flaky))) as k:
        await k.notifier.notify("one", "")
        await flaky.arrived.wait()
        snapshot = await k.health.check_all()
    assert snapshot.components["notifier x"].status is Status.HEALTHY


async def test_a_crash_between_notify_and_delivery_loses_nothing(tmp_path: Path) -> None:
    """The first process stores the delivery and dies before its workers run
    it; the next one, on the same SQLite file, delivers it."""
    url = f"sqlite:///{tmp_path / 'kernel.db'}"
    storage = await SQLiteStorage.open(tmp_path / "kernel.db")
    try:
        async with open_scheduler() as scheduler, trio.open_nursery() as nursery:
            queue = JobQueue(storage, scheduler)  # never run: the process dies first
            first = fanout((NotifyRoute("fake://x", name="ops"), Remote()))
            await nursery.start(first.run, queue)
            with notification_context("plugin.failed", plugin="backup"):
                await first.notify("plugin backup failed", "exit 3", Level.error)
            nursery.cancel_scope.cancel()
    finally:
        await storage.aclose()
    remote = Remote()
    with trio.fail_after(20):
        async with Kernel(
            storage=url, notifier=fanout((NotifyRoute("fake://x", name="ops"), remote))
        ):
            await remote.arrived.wait()
    (title, message, level, context) = remote.sent[0]
    assert (title, message, level) == ("plugin backup failed", "exit 3", Level.error)
    assert (context.topic, context.plugin) == ("plugin.failed", "backup")


# -- in the kernel: noise control and the crash loop ------------------------------------


async def test_ten_identical_alerts_in_the_window_arrive_as_one_then_a_digest(
    autojump_clock: MockClock,
) -> None:
    remote = Remote()
    plugin = Alerts()
    async with kernel(plugin, notifier=fanout((NotifyRoute("fake://x"), remote))) as k:
        for minute in range(10):
            await plugin.ctx.notify("disk full", f"at minute {minute}", Level.warning)
            await trio.sleep(30)
        assert remote.titles == ["[alerts] disk full"]
        await trio.sleep(15 * 60)
        assert remote.titles == ["[alerts] disk full", "9 notifications held back"]
        jobs = await k.queue.store.list_jobs(queue=QUEUE)
    assert len(jobs) == 2
    digest = remote.sent[1]
    assert "- warning: [alerts] disk full (9 times, repeated within 10m)" in digest[1]
    assert digest[2] is Level.warning
    assert digest[3].topic == "digest"


async def test_a_crash_loop_sends_exactly_one_disabled_notification_to_each_notifier(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Crashy(Plugin):
        manifest = Manifest(
            "crashy", intensity=RestartIntensity(max_restarts=3, period=60, backoff_initial=1)
        )

        async def on_enable(self, ctx: PluginContext) -> None:
            ctx.start_task(self.explode)

        async def explode(self) -> None:
            await trio.sleep(5)
            raise RuntimeError("disk full")

    caplog.set_level(logging.INFO, logger="kernel.notify")
    ops, dev = Remote(), Remote()
    notifier = fanout(
        ("log://", _log_notifier()),
        (NotifyRoute("fake://ops", name="ops", min_level="error"), ops),
        (NotifyRoute("fake://dev", name="dev", plugins=["crashy"]), dev),
    )
    async with kernel(Crashy(), notifier=notifier) as k:
        await trio.sleep(600)
        assert k.plugins["crashy"].state is PluginState.FAILED
    logged = [r.notify_title for r in caplog.records if r.name == "kernel.notify"]
    for titles in (ops.titles, dev.titles, logged):
        assert titles.count("plugin crashy failed") == 1
    (failure,) = [sent for sent in ops.sent if sent[0] == "plugin crashy failed"]
    assert failure[2] is Level.error
    assert (failure[3].topic, failure[3].plugin) == ("plugin.failed", "crashy")


async def test_a_delivery_whose_notifier_is_gone_is_a_dead_letter_at_once(
    autojump_clock: MockClock,
) -> None:
    """A stored delivery names its notifier; one no longer configured (renamed
    or removed from the config) is not retried."""
    async with kernel(notifier=fanout((NotifyRoute("fake://x", name="new"), Remote()))) as k:
        await k.queue.enqueue(
            TASK, "old", "t", "m", "info", {}, queue=QUEUE, retry=delivery_policy(8)
        )
        await trio.sleep(10)
        (dead,) = await k.queue.dead_letters()
    assert dead.attempts == 1
    assert "no notifier 'old' is configured (configured: new)" in (dead.last_error or "")
