"""The example services in examples/, each run inside a Kernel for simulated
hours or days under MockClock, and their config files as `kernel run` reads them."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio
from trio.testing import MockClock

from examples.activity_events import ActivityEvents, ActivityEventsConfig
from examples.data_sync import DataSync, DataSyncConfig, FakeRemoteAPI
from examples.maintenance import FakeInfrastructure, Maintenance, MaintenanceConfig
from examples.monitored_queue import FakeJobFeed, MonitoredQueue, MonitoredQueueConfig
from examples.retention_cleanup import (
    FakeFileStore,
    RetentionCleanup,
    RetentionCleanupConfig,
    RetentionRule,
)
from kernel import (
    Clock,
    ConfigError,
    ExitCode,
    Kernel,
    Manifest,
    Plugin,
    PluginContext,
    PluginSpec,
    PluginState,
    Schedule,
)
from kernel.config.files import load_config
from kernel.config.structure import structure_config
from kernel.ports import Level, Message
from kernel.runtime.discovery import load_plugin_factory
from kernel.storage.memory import MemoryStorage
from kernel.testing import RecordingNotifier

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
T0 = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday
PARIS = ZoneInfo("Europe/Paris")
HOUR = 3600
DAY = 24 * HOUR


class Listener(Plugin):
    """Records what another plugin publishes (list it first so it starts first)."""

    manifest = Manifest("listener", permissions=["bus-subscribe"])

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.received: list[Message] = []

    async def on_enable(self, ctx: PluginContext) -> None:
        await ctx.subscribe(self.pattern, self.on_message)

    async def on_message(self, message: Message) -> None:
        self.received.append(message)


def schedule_named(k: Kernel, name: str) -> Schedule:
    (schedule,) = [s for s in k.scheduler.schedules if s.name == name]
    return schedule


class TestDataSync:
    async def test_skips_runs_while_busy_and_resumes_from_the_stored_cursor(
        self, autojump_clock: MockClock
    ) -> None:
        remote = FakeRemoteAPI(latency=90)  # a call takes longer than the interval
        for n in range(5):
            remote.change(f"r{n}", user="alice")
        plugin = DataSync(remote)
        listener = Listener("data.changed")
        storage = MemoryStorage()
        config = DataSyncConfig(interval=timedelta(minutes=1), batch_size=2)
        spec = PluginSpec(plugin, name="sync", config=config)
        async with Kernel([listener, spec], storage=storage, clock=Clock.starting_at(T0)) as k:
            await trio.sleep(599)
            stats = schedule_named(k, "sync/sync").stats
        # the run at 60 s reads 2 + 2 + 1 records (3 calls of 90 s) until 330 s, so
        # the slots at 120..300 are skipped; 360 (empty feed) runs to 450, 420 is
        # skipped; 480 runs to 570, 540 is skipped
        assert (stats.started, stats.succeeded, stats.skipped) == (3, 3, 6)
        assert remote.max_in_flight == 1
        assert [m.payload for m in listener.received] == [
            {"id": f"r{n}", "seq": n + 1, "user": "alice"} for n in range(5)
        ]
        assert await storage.get("plugin:sync", "cursor") == 5

        remote.latency = 1
        remote.change("r1", user="bob")
        remote.change("r9", user="carol")
        listener = Listener("data.changed")
        async with Kernel(
            [listener, PluginSpec(DataSync(remote), name="sync", config=config)],
            storage=storage,
            clock=Clock.starting_at(T0),
        ):
            await trio.sleep(61.5)
        assert [m.payload for m in listener.received] == [
            {"id": "r1", "seq": 6, "user": "bob"},
            {"id": "r9", "seq": 7, "user": "carol"},
        ]
        assert await storage.get("plugin:sync", "cursor") == 7


class TestMaintenance:
    async def test_jobs_run_at_local_times_and_notify_success_and_failure(
        self, autojump_clock: MockClock
    ) -> None:
        infra = FakeInfrastructure(latency=30)
        notifier = RecordingNotifier()
        clock = Clock.starting_at(T0)
        config = MaintenanceConfig(tz="Europe/Paris")
        async with Kernel(
            [PluginSpec(Maintenance(infra), config=config)], notifier=notifier, clock=clock
        ) as k:
            await trio.sleep(2 * DAY)
            infra.failing = {"backup"}  # the night of Jan 3 fails
            await trio.sleep(DAY)
            infra.failing = set()
            await trio.sleep(5 * DAY - 60)
            assert schedule_named(k, "maintenance/backup").stats.failed == 1

        def local_runs(operation: str) -> list[datetime]:
            return [clock.to_wall(t).astimezone(PARIS) for op, t in infra.calls if op == operation]

        backups = local_runs("backup")
        assert [b.date().day for b in backups] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert {b.time() for b in backups} == {time(2, 0)}
        reports = local_runs("report")
        assert [(r.strftime("%A"), r.date().day, r.time()) for r in reports] == [
            ("Sunday", 4, time(9, 0))
        ]
        assert len(local_runs("cleanup")) == 8 * 24 - 1

        backup_notes = [(t, m, lvl) for t, m, lvl in notifier.sent if "backup" in t]
        assert len(backup_notes) == 8
        failed = [n for n in backup_notes if n[0] == "[maintenance] backup failed"]
        assert failed == [
            (
                "[maintenance] backup failed",
                "InfrastructureError: backup: disk quota exceeded",
                Level.error,
            )
        ]
        succeeded = [n for n in backup_notes if n[0] == "[maintenance] backup succeeded"]
        assert len(succeeded) == 7
        assert all(level is Level.info for _, _, level in succeeded)
        titles = {title for title, _, _ in notifier.sent}
        assert "[maintenance] report succeeded" in titles
        assert "[maintenance] cleanup succeeded" in titles


class TestActivityEvents:
    async def test_counts_per_user_in_storage_and_summarises_periodically(
        self, autojump_clock: MockClock
    ) -> None:
        listener = Listener("activity.summary")
        config = ActivityEventsConfig(summary_interval=timedelta(hours=1), top=2)
        spec = PluginSpec(ActivityEvents(), name="activity", config=config)
        async with Kernel([listener, spec], clock=Clock.starting_at(T0)) as k:
            for user, topic in [
                ("alice", "user.activity"),
                ("alice", "user.activity"),
                ("bob", "user.activity"),
                ("alice", "data.changed"),
                ("carol", "user.activity"),
                ("alice", "user.activity"),
                ("bob", "data.changed"),
            ]:
                await k.bus.publish(topic, {"user": user})
                await trio.sleep(60)
            await k.bus.publish("user.activity", {"no": "user"})  # dropped, not a crash
            await k.bus.publish("user.login", {"user": "alice"})  # not subscribed
            await trio.sleep(HOUR)
            await k.bus.publish("user.activity", {"user": "dave"})
            await trio.sleep(HOUR)
            counters = dict(await k.storage.items("plugin:activity", "user/"))
            supervisor = k.plugins["activity"]
            assert (supervisor.state, supervisor.restarts) == (PluginState.ENABLED, 0)
        assert counters == {
            "user/alice": {"activity": 3, "changes": 1},
            "user/bob": {"activity": 1, "changes": 1},
            "user/carol": {"activity": 1},
            "user/dave": {"activity": 1},
        }
        summaries = [m.payload for m in listener.received]
        assert summaries == [
            {
                "events": 7,
                "active_users": 3,
                "top": [["alice", 4], ["bob", 2]],
                "known_users": 3,
                "totals": {"activity": 5, "changes": 2},
            },
            {
                "events": 1,
                "active_users": 1,
                "top": [["dave", 1]],
                "known_users": 4,
                "totals": {"activity": 6, "changes": 2},
            },
        ]

    async def test_data_sync_feeds_activity(self, autojump_clock: MockClock) -> None:
        remote = FakeRemoteAPI(latency=0.5)
        for n in range(7):
            remote.change(f"order-{n}", user=("ann", "ben")[n % 2])
        activity = PluginSpec(ActivityEvents(), name="activity")
        sync = PluginSpec(DataSync(remote), name="sync")
        async with Kernel([activity, sync], clock=Clock.starting_at(T0)) as k:
            await trio.sleep(90)
            counters = dict(await k.storage.items("plugin:activity", "user/"))
        assert counters == {"user/ann": {"changes": 4}, "user/ben": {"changes": 3}}


class TestMonitoredQueue:
    async def test_health_follows_the_backlog_and_transitions_are_notified(
        self, autojump_clock: MockClock
    ) -> None:
        feed = FakeJobFeed(rate=10)  # the consumer does 20 jobs a second
        plugin = MonitoredQueue(feed)
        notifier = RecordingNotifier()
        config = MonitoredQueueConfig(degraded_above=100, unhealthy_above=1000)
        spec = PluginSpec(plugin, name="queue", config=config)
        seen: list[str] = []

        async with Kernel(
            [spec], notifier=notifier, health_interval=10, clock=Clock.starting_at(T0)
        ) as k:

            def status() -> str:
                report = k.status()["health"]["components"]["queue"]
                seen.append(report["status"])
                return str(report["status"])

            await trio.sleep(60)
            assert status() == "healthy"
            assert plugin.depth <= 10
            feed.rate = 40  # 20 jobs a second more than the consumer does
            await trio.sleep(20)
            assert status() == "degraded"
            await trio.sleep(60)
            assert status() == "unhealthy"
            assert plugin.depth > 1000
            feed.rate = 0
            await trio.sleep(300)
            assert status() == "healthy"
            assert plugin.depth == 0
        assert plugin.processed == feed.produced
        assert plugin.dropped == 0
        transitions = [(t, lvl) for t, _, lvl in notifier.sent if t.startswith("queue is")]
        assert transitions == [
            ("queue is degraded", Level.warning),
            ("queue is unhealthy", Level.warning),
            ("queue is degraded", Level.info),  # a recovery, on its way down
            ("queue is healthy", Level.info),
        ]
        reasons = [m for t, m, _ in notifier.sent if t == "queue is degraded"]
        assert all(reason.startswith("backlog of ") for reason in reasons)

    async def test_a_full_queue_drops_work_and_is_unhealthy(
        self, autojump_clock: MockClock
    ) -> None:
        feed = FakeJobFeed(rate=100)
        plugin = MonitoredQueue(feed)
        config = MonitoredQueueConfig(capacity=200, degraded_above=10, unhealthy_above=5000)
        async with Kernel(
            [PluginSpec(plugin, name="queue", config=config)],
            health_interval=10,
            clock=Clock.starting_at(T0),
        ) as k:
            await trio.sleep(31)
            report = k.status()["health"]["components"]["queue"]
            assert report["status"] == "unhealthy"
            assert report["reasons"][0].startswith("queue full: ")
            assert plugin.dropped > 0
            feed.rate = 0
            await trio.sleep(30)
            assert k.status()["health"]["components"]["queue"]["status"] == "healthy"


def _files(now: datetime, prefix: str, age_days: float, count: int) -> dict[str, datetime]:
    return {f"{prefix}{age_days}d-{n}": now - timedelta(days=age_days) for n in range(count)}


class TestRetentionCleanup:
    async def test_deletes_exactly_the_expired_files_in_batches_inside_the_window(
        self, autojump_clock: MockClock
    ) -> None:
        start = datetime(2026, 1, 1, 12, tzinfo=UTC)  # 13:00 in Paris
        expired = {
            **_files(start, "logs/", 10, 60),
            **_files(start, "tmp/", 3, 30),
            **_files(start, "messages/", 45, 5),
        }
        kept = {
            **_files(start, "logs/", 2, 5),
            **_files(start, "tmp/keep/", 3, 5),  # the longer prefix wins: 30 days
            **_files(start, "messages/", 20, 5),
            **_files(start, "other/", 400, 5),  # no rule: kept forever
        }
        store = FakeFileStore({**expired, **kept})
        config = RetentionCleanupConfig(
            rules=(
                RetentionRule("logs/", 7),
                RetentionRule("tmp/", 1),
                RetentionRule("tmp/keep/", 30),
                RetentionRule("messages/", 30),
            ),
            batch_size=10,
            batch_pause=timedelta(minutes=30),  # 95 files need 5 h: more than a window
            window_start=1,
            window_end=5,
            tz="Europe/Paris",
        )
        notifier = RecordingNotifier()
        clock = Clock.starting_at(start)
        spec = PluginSpec(RetentionCleanup(store), name="retention", config=config)
        async with Kernel([spec], notifier=notifier, clock=clock) as k:
            await trio.sleep(2 * DAY)
            last_run = await k.storage.get("plugin:retention", "last_run")

        assert set(store.files) == set(kept)
        deleted = [path for _, paths in store.batches for path in paths]
        assert sorted(deleted) == sorted(expired)  # each once
        assert all(1 <= len(paths) <= 10 for _, paths in store.batches)
        when = [clock.to_wall(t).astimezone(PARIS) for t, _ in store.batches]
        assert all(1 <= w.hour < 5 for w in when)
        # the first night's window closed after 8 batches; the next night finished
        assert [w.day for w in when] == [2] * 8 + [3] * 2
        assert [(t, m) for t, m, _ in notifier.sent] == [
            ("[retention] retention cleanup", "deleted 80 of 95 expired files"),
            ("[retention] retention cleanup", "deleted 15 of 15 expired files"),
        ]
        assert isinstance(last_run, dict)
        assert last_run["deleted"] == 0  # later runs that night found nothing

    def test_window_and_rules(self) -> None:
        night = RetentionCleanupConfig(window_start=22, window_end=3, tz="UTC")
        hours = [h for h in range(24) if night.in_window(T0.replace(hour=h))]
        assert hours == [0, 1, 2, 22, 23]
        fires = []
        after = T0
        for _ in range(6):
            fire = night.cron().next_fire_after(after)
            assert fire is not None
            fires.append(fire)
            after = fire
        assert {f.hour for f in fires} <= {22, 23, 0, 1, 2}
        config = RetentionCleanupConfig(
            rules=(RetentionRule("a/", 1), RetentionRule("a/b/", 10)), tz="UTC"
        )
        assert config.expires_at("a/b/c", T0) == T0 + timedelta(days=10)
        assert config.expires_at("a/c", T0) == T0 + timedelta(days=1)
        assert config.expires_at("z/c", T0) is None
        with pytest.raises(ValueError, match="window is empty"):
            RetentionCleanupConfig(window_start=3, window_end=3)


# -- the config files, as `kernel run` reads them ---------------------------------


@pytest.mark.parametrize(
    ("cls", "table", "key", "reason"),
    [
        (MaintenanceConfig, {"tz": "Mars/Olympus"}, "tz", "unknown time zone 'Mars/Olympus'"),
        (MaintenanceConfig, {"backup_cron": "0 25 * * *"}, "backup_cron", "25"),
        (RetentionCleanupConfig, {"rules": [{"prefix": "logs/"}]}, "rules[0]", "keep_days"),
        (RetentionCleanupConfig, {"window_start": 24}, "window_start", "24"),
        (DataSyncConfig, {"interval": "soon"}, "interval", "a duration like"),
    ],
)
def test_bad_example_config_names_the_key(
    cls: type, table: dict[str, Any], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        structure_config(table, cls, source="x.toml", prefix="plugins.p.config")
    message = str(caught.value)
    assert f"plugins.p.config.{key}" in message
    assert reason in message


CONFIGS = sorted(EXAMPLES.glob("*.toml"))


def test_every_example_service_has_a_config_file() -> None:
    names = {path.stem for path in CONFIGS}
    expected = {"data_sync", "maintenance", "activity_events", "monitored_queue"}
    assert expected | {"retention_cleanup", "payments"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
async def test_example_config_loads_and_runs(path: Path, autojump_clock: MockClock) -> None:
    config = load_config(path)
    specs = []
    for name, entry in config.plugins.items():
        plugin: Any = load_plugin_factory(entry.use)()
        manifest = plugin.manifest
        assert isinstance(manifest, Manifest)
        if manifest.config is not None:
            structured: object = structure_config(
                entry.config, manifest.config, source=str(path), prefix=f"plugins.{name}.config"
            )
            assert isinstance(structured, manifest.config)
        specs.append(PluginSpec(plugin, name=name, config=entry.config, source=str(path)))
    settings = config.kernel
    k = Kernel(
        specs,
        # the runner's default, SQLite in ./kernel.db, would write into the
        # checkout, and its worker threads would let MockClock run ahead
        storage="memory://" if settings.storage.startswith("sqlite:") else settings.storage,
        bus=settings.bus,
        notifier=settings.notifiers,
        health_interval=settings.health_interval.total_seconds(),
        clock=Clock.starting_at(T0),
    )
    async with k:
        await trio.sleep(90 * 60 + 7)  # between runs, so none is cut short
        states = {name: sup.state for name, sup in k.plugins.items()}
    assert states == dict.fromkeys(config.plugins, PluginState.ENABLED)
    assert k.exit_code is ExitCode.OK
