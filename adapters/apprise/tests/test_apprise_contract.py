"""The Apprise adapter against the kernel's notifier contract, delivering to
a loopback HTTP server through ``apprise+json://``, and its URLs."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel
from apprise_helpers import Endpoint, free_port

from kernel import open_notifier
from kernel.errors import InvalidAdapterURL, NotificationFailed
from kernel.ports import Level, Notification, notification_context
from kernel.testing import NotifierContract
from kernel.testing.notifier_contract import Delivered
from kernel_apprise import AppriseNotifier, parse_apprise_url, split_footer


class TestAppriseNotifier(NotifierContract):
    @pytest.fixture
    async def notifier(self, endpoint: Endpoint) -> AsyncIterator[AppriseNotifier]:
        notifier = await open_notifier(endpoint.url())
        assert isinstance(notifier, AppriseNotifier)
        yield notifier
        await notifier.aclose()

    @pytest.fixture
    def delivered(self, endpoint: Endpoint) -> Delivered:
        async def read() -> list[Notification]:
            return endpoint.notifications()

        return read


async def test_the_json_body_and_the_context_footer(endpoint: Endpoint) -> None:
    notifier = AppriseNotifier(endpoint.url(path="/alerts/backup"))
    with notification_context("plugin.failed", plugin="backup"):
        await notifier.notify("plugin backup failed", "exit 3\nsee the log", Level.critical)
    (request,) = endpoint.answered()
    assert request.path == "/alerts/backup"
    assert request.content_type.startswith("application/json")
    fields = request.fields()
    assert fields["title"] == "plugin backup failed"
    assert fields["type"] == "failure"  # Apprise's notify type for error and critical
    assert split_footer(fields["message"])[:3] == ("exit 3\nsee the log", Level.critical, "backup")
    assert fields["message"].startswith(
        "exit 3\nsee the log\n\n-- critical | plugin backup | host "
    )


async def test_the_form_body(endpoint: Endpoint) -> None:
    notifier = AppriseNotifier(endpoint.url("form", "/form") + "?kernel_context=no")
    await notifier.notify("Disk almost full", "93% used on /var", Level.warning)
    (request,) = endpoint.answered()
    assert request.content_type == "application/x-www-form-urlencoded"
    fields = request.fields()
    assert (fields["title"], fields["message"], fields["type"]) == (
        "Disk almost full",
        "93% used on /var",
        "warning",
    )


async def test_markdown_is_declared_as_such(endpoint: Endpoint) -> None:
    notifier = AppriseNotifier(endpoint.url() + "?kernel_format=markdown&kernel_context=no")
    await notifier.notify("Report", "**3** backups, `ok`")
    (request,) = endpoint.answered()
    assert request.fields()["message"] == "**3** backups, `ok`"


async def test_headers_and_basic_auth_reach_the_endpoint(endpoint: Endpoint) -> None:
    url = f"apprise+json://kernel:s3cret@127.0.0.1:{endpoint.port}/hook?+X-Token=tok-123"
    notifier = AppriseNotifier(url)
    await notifier.notify("t", "m")
    (request,) = endpoint.answered()
    assert request.headers["x-token"] == "tok-123"
    assert request.headers["authorization"].startswith("Basic ")
    assert "s3cret" not in notifier.shown_url
    assert "tok-123" not in notifier.shown_url
    assert "s3cret" not in repr(notifier)


async def test_a_refused_delivery_is_a_notification_failed(endpoint: Endpoint) -> None:
    endpoint.default = 503
    notifier = AppriseNotifier(endpoint.url())
    with pytest.raises(NotificationFailed) as failed:
        await notifier.notify("t", "m")
    assert "503" in failed.value.reason
    assert failed.value.notifier == f"apprise+json://127.0.0.1:{endpoint.port}/hook"


async def test_no_server_is_a_notification_failed() -> None:

    notifier = AppriseNotifier(f"apprise+json://127.0.0.1:{free_port()}/x?kernel_timeout=5")
    with pytest.raises(NotificationFailed, match="Connection error"):
        await notifier.notify("t", "m")


async def test_a_slow_service_does_not_block_the_loop(endpoint: Endpoint) -> None:
    """Other tasks keep running while Apprise waits in its thread."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    notifier = AppriseNotifier(endpoint.url())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await notifier.notify("t", "m")
        nursery.cancel_scope.cancel()
    assert ticks > 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("apprise+nosuchservice://x/y", "Apprise cannot load this URL"),
        ("apprise+json://h/x?kernel_timeout=0", "kernel_timeout must be seconds > 0"),
        ("apprise+json://h/x?kernel_timeout=soon", "kernel_timeout must be seconds > 0"),
        ("apprise+json://h/x?kernel_format=html", "kernel_format must be text or markdown"),
        ("apprise+json://h/x?kernel_context=maybe", "kernel_context must be yes or no"),
        ("apprise+json://h?kernel_context=no&kernel_context=no", "given twice"),
        ("apprise:json://h", "expected apprise+<service>://"),
    ],
)
def test_bad_urls_are_refused_without_showing_them(url: str, reason: str) -> None:
    with pytest.raises(InvalidAdapterURL, match=re.escape(reason)) as refused:
        AppriseNotifier(url)
    assert "/x" not in str(refused.value)


def test_secrets_in_the_path_are_not_shown() -> None:
    notifier = AppriseNotifier("apprise+slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ")
    assert notifier.shown_url.startswith("apprise+slack://T...2/")
    assert "TIiajkdnlazkcOXrIdevi7FQ" not in notifier.shown_url


def test_our_options_are_removed_before_apprise_sees_the_url() -> None:
    options = parse_apprise_url(
        "apprise+json://h:8000/x?+X-A=1&kernel_timeout=2.5&method=PUT&kernel_format=markdown"
    )
    assert options.apprise_url == "json://h:8000/x?+X-A=1&method=PUT"
    assert (options.timeout, options.body_format, options.context) == (2.5, "markdown", True)


def test_the_apprise_logger_is_kept_above_debug() -> None:
    logger = logging.getLogger("apprise")
    logger.setLevel(logging.DEBUG)
    try:
        AppriseNotifier("apprise+json://127.0.0.1:9/x")
        assert logger.getEffectiveLevel() >= logging.INFO
    finally:
        logger.setLevel(logging.NOTSET)
