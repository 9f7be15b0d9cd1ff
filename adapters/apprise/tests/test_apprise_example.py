"""examples/maintenance.toml: a failed backup reaches the on-call webhook
through the list of notifiers, and the log; a success only the log."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
import trio
from apprise_helpers import Endpoint
from trio.testing import MockClock

from examples.maintenance import FakeInfrastructure, Maintenance
from kernel import Clock, Kernel, NotifyRoute, PluginSpec, load_config
from kernel.ports import Level

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "maintenance.toml"


@pytest.fixture
def fast_clock() -> MockClock:
    return MockClock(rate=100)


async def test_a_failed_backup_reaches_the_on_call_webhook(
    fast_clock: MockClock, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kernel.notify")
    config = load_config(EXAMPLE)
    notifiers = [
        attrs.evolve(item, url=endpoint.url(path="/maintenance") + "?kernel_timeout=600")
        if isinstance(item, NotifyRoute) and item.name == "on-call"
        else item
        for item in config.kernel.notifiers
    ]
    infra = FakeInfrastructure(latency=1)
    infra.failing = {"backup"}
    entry = config.plugins["maintenance"]
    plugin = PluginSpec(Maintenance(infra), name="maintenance", config=entry.config)
    # 00:59 UTC is 01:59 in Paris: the backup runs a minute later and fails
    clock = Clock.starting_at(datetime(2026, 1, 1, 0, 59, tzinfo=UTC))
    async with Kernel([plugin], notifier=notifiers, clock=clock):
        for _ in range(600):
            if endpoint.answered():
                break
            await trio.sleep(1)
        await trio.sleep(60)
    (failure,) = endpoint.notifications()
    assert failure.title == "[maintenance] backup failed"
    assert failure.level is Level.error
    assert "disk quota exceeded" in failure.message
    logged = [getattr(r, "notify_title", "") for r in caplog.records]
    assert "[maintenance] backup failed" in logged
