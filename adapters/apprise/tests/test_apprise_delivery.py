"""Deliveries to real endpoints on this machine: through a kernel's durable
outbox to loopback HTTP (retried, dead-lettered, deduplicated, a crash loop),
to a loopback SMTP server, and to the MQTT broker.

Apprise runs in worker threads, so trio's clock cannot autojump here (it
would jump while a thread waits on a socket); a `MockClock` running 100
times faster than real time makes the retry backoff short instead.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import trio
from apprise_helpers import Endpoint, Mailbox
from trio.testing import MockClock

from kernel import (
    Kernel,
    Manifest,
    NotifyRoute,
    Plugin,
    PluginContext,
    PluginState,
    RestartIntensity,
)
from kernel.ports import JobState, Level, notification_context
from kernel_apprise import AppriseNotifier, split_footer

#: Deliveries are timed out far beyond a loopback round trip, even at 100x.
SLOW = "?kernel_timeout=600"
PATIENT = timedelta(hours=2)


@pytest.fixture
def fast_clock() -> MockClock:
    return MockClock(rate=100)


async def until(condition: Callable[[], bool], *, seconds: float = 3000) -> None:
    """Wait (in trio time) until ``condition()`` holds; fail after ``seconds``."""
    for _ in range(int(seconds)):
        if condition():
            return
        await trio.sleep(1)
    pytest.fail("the condition did not come true in time")


def route(url: str, **options: Any) -> NotifyRoute:
    return NotifyRoute(url + SLOW, timeout=PATIENT, **options)


class Alerts(Plugin):
    manifest = Manifest("alerts", permissions=["notifications"])

    async def on_enable(self, ctx: PluginContext) -> None:
        self.ctx = ctx


async def test_an_endpoint_answering_503_then_200_is_retried(
    fast_clock: MockClock, endpoint: Endpoint
) -> None:
    endpoint.statuses = [503]
    async with Kernel(notifier=[route(endpoint.url(), name="hook")]) as k:
        await k.notifier.notify("disk full", "93% used", Level.warning)
        await until(lambda: len(endpoint.answered()) == 1)
        await trio.sleep(60)  # the worker records the success
        (job,) = await k.queue.store.list_jobs(queue="kernel:notify")
    assert [r.headers["x-status"] for r in endpoint.requests] == ["503", "200"]
    assert endpoint.notifications() == [
        endpoint.requests[1].notification()
    ]  # the same body both times
    assert endpoint.requests[0].body == endpoint.requests[1].body
    assert (job.state, job.attempts, job.args[0]) == (JobState.succeeded, 2, "hook")


async def test_an_endpoint_answering_500_forever_ends_as_a_dead_letter(
    fast_clock: MockClock, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint.default = 500
    url = f"apprise+json://kernel:s3cret@127.0.0.1:{endpoint.port}/hook?+X-Token=t0ken&kernel_timeout=600"
    async with Kernel(notifier=[NotifyRoute(url, max_attempts=3, timeout=PATIENT)]) as k:
        await k.notifier.notify("backup failed", "exit 3", Level.error)
        await until(lambda: len(endpoint.requests) == 3)
        await trio.sleep(60)
        dead = await k.queue.dead_letters()
        snapshot = await k.health.check_all()
    assert len(endpoint.requests) == 3
    (job,) = dead
    assert job.attempts == 3
    assert "500" in (job.last_error or "")
    (report,) = [r for name, r in snapshot.components.items() if name.startswith("notifier ")]
    assert report.status.value == "degraded"
    shown = repr(job) + str(job.args) + (job.last_error or "") + caplog.text + str(report)
    assert "s3cret" not in shown
    assert "t0ken" not in shown


async def test_a_crash_loop_sends_one_disabled_notification_to_each_notifier(
    fast_clock: MockClock, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
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
    notifiers = [
        "log://",
        route(endpoint.url("json", "/json"), name="json-hook"),
        route(endpoint.url("form", "/form"), name="form-hook"),
    ]
    async with Kernel([Crashy()], notifier=notifiers) as k:
        await until(lambda: len(endpoint.answered()) >= 2)
        await trio.sleep(600)
        assert k.plugins["crashy"].state is PluginState.FAILED
    by_path = {"/json": 0, "/form": 0}
    for request in endpoint.answered():
        fields = request.fields()
        assert fields["title"] == "plugin crashy failed"
        assert split_footer(fields["message"])[1:3] == (Level.error, "crashy")
        by_path[request.path] += 1
    assert by_path == {"/json": 1, "/form": 1}
    logged = [r for r in caplog.records if getattr(r, "notify_title", "") == "plugin crashy failed"]
    assert len(logged) == 1


async def test_ten_identical_alerts_inside_the_dedup_window_arrive_as_one(
    fast_clock: MockClock, endpoint: Endpoint
) -> None:
    plugin = Alerts()
    async with Kernel([plugin], notifier=[route(endpoint.url())]):
        for attempt in range(10):
            await plugin.ctx.notify("disk full", f"check {attempt}", Level.warning)
            await trio.sleep(30)  # ten alerts in five minutes: inside the 10 minute window
        await until(lambda: len(endpoint.answered()) >= 1)
        await trio.sleep(60)
        assert [n.title for n in endpoint.notifications()] == ["[alerts] disk full"]
        await until(lambda: len(endpoint.answered()) == 2)  # then the digest
    first, digest = endpoint.notifications()
    assert first.message == "check 0"
    assert digest.title == "9 notifications held back"
    assert "[alerts] disk full (9 times, repeated within 10m)" in digest.message


async def test_an_email_reaches_a_loopback_smtp_server(mailbox: Mailbox) -> None:
    notifier = AppriseNotifier(
        f"apprise+mailto://127.0.0.1:{mailbox.port}?from=kernel@example.com&to=ops@example.com"
    )
    with notification_context("plugin.failed", plugin="backup"):
        await notifier.notify("plugin backup failed", "exit 3: disk full", Level.error)
    (message,) = mailbox.messages
    assert mailbox.envelopes == [("kernel@example.com", ["ops@example.com"])]
    assert message["Subject"] == "plugin backup failed"
    text = message.get_body(preferencelist=("plain",))
    assert text is not None
    content = text.get_content()
    assert "exit 3: disk full" in content
    assert "-- error | plugin backup | host" in " ".join(content.split())


async def test_an_mqtt_message_reaches_the_broker(mqtt_broker: tuple[str, int]) -> None:
    import paho.mqtt.client as mqtt

    host, port = mqtt_broker
    topic = f"kt/{uuid.uuid4().hex[:12]}/alerts"
    received: list[bytes] = []
    subscribed, arrived = threading.Event(), threading.Event()

    def on_subscribe(*_: Any) -> None:
        subscribed.set()

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        received.append(message.payload)
        arrived.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        assert await trio.to_thread.run_sync(subscribed.wait, 10)
        notifier = AppriseNotifier(f"apprise+mqtt://{host}:{port}/{topic}")
        await notifier.notify("Backup done", "42 files", Level.info)
        assert await trio.to_thread.run_sync(arrived.wait, 10)
    finally:
        client.loop_stop()
        client.disconnect()
    (payload,) = received
    text = payload.decode()
    assert "Backup done" in text
    assert "42 files" in text
