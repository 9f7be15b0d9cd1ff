"""The plugin microkernel: lifecycle, capabilities, supervision, shutdown."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from kernel import (
    Clock,
    ConfigError,
    Every,
    ExitCode,
    HealthReport,
    Kernel,
    Manifest,
    PermissionDenied,
    Plugin,
    PluginContext,
    PluginDependencyError,
    PluginSpec,
    PluginState,
    Restart,
    RestartIntensity,
)
from kernel.ports import JSON, Level, Message
from kernel.runtime.supervisor import RestartBudget, should_restart
from kernel.storage.memory import MemoryStorage
from kernel.testing import RecordingNotifier

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def kernel(*plugins: Plugin | PluginSpec, **options: Any) -> Kernel:
    options.setdefault("clock", Clock.starting_at(T0))
    return Kernel(plugins, **options)


class Recorder(Plugin):
    """Records its lifecycle into a shared list."""

    manifest = Manifest("recorder", permissions=["storage-read", "storage-write"])

    def __init__(self, events: list[str], name: str = "recorder") -> None:
        self.events = events
        self.tag = name

    async def on_install(self, ctx: PluginContext) -> None:
        self.events.append(f"install {self.tag}")

    async def on_enable(self, ctx: PluginContext) -> None:
        self.events.append(f"enable {self.tag}")

    async def on_disable(self, ctx: PluginContext) -> None:
        self.events.append(f"disable {self.tag}")


class TestLifecycle:
    async def test_install_once_enable_disable(self, autojump_clock: MockClock) -> None:
        events: list[str] = []
        storage = MemoryStorage()
        async with kernel(Recorder(events), storage=storage) as k:
            assert k.plugins["recorder"].state is PluginState.ENABLED
        async with kernel(Recorder(events), storage=storage):
            pass
        assert events == [
            "install recorder",
            "enable recorder",
            "disable recorder",
            "enable recorder",
            "disable recorder",
        ]

    async def test_a_disabled_plugin_stays_disabled_after_restart(
        self, autojump_clock: MockClock
    ) -> None:
        events: list[str] = []
        storage = MemoryStorage()
        async with kernel(Recorder(events), storage=storage) as k:
            await k.disable("recorder")
            assert k.plugins["recorder"].state is PluginState.DISABLED
        async with kernel(Recorder(events), storage=storage) as k:
            assert k.plugins["recorder"].state is PluginState.DISABLED
            await k.enable("recorder")
            assert k.plugins["recorder"].state is PluginState.ENABLED
        async with kernel(Recorder(events), storage=storage) as k:
            assert k.plugins["recorder"].state is PluginState.ENABLED
        assert events.count("install recorder") == 1

    async def test_dependency_order_and_reverse_stop(self, autojump_clock: MockClock) -> None:
        events: list[str] = []

        def make(name: str, requires: tuple[str, ...]) -> Plugin:
            cls = type(name, (Recorder,), {"manifest": Manifest(name, requires=requires)})
            return cls(events, name)  # type: ignore[no-any-return]

        async with kernel(make("web", ("db", "cache")), make("cache", ("db",)), make("db", ())):
            pass
        enables = [e.split()[1] for e in events if e.startswith("enable")]
        disables = [e.split()[1] for e in events if e.startswith("disable")]
        assert enables == ["db", "cache", "web"]
        assert disables == ["web", "cache", "db"]

    def test_missing_dependency_and_cycles_are_clear_errors(self) -> None:
        def make(name: str, requires: tuple[str, ...]) -> Plugin:
            cls = type(name, (Plugin,), {"manifest": Manifest(name, requires=requires)})
            return cls()  # type: ignore[no-any-return]

        with pytest.raises(PluginDependencyError, match="'a' requires 'zzz', which is not"):
            Kernel([make("a", ("zzz",))])
        with pytest.raises(PluginDependencyError, match="cycle: a -> b -> c -> a"):
            Kernel([make("a", ("b",)), make("b", ("c",)), make("c", ("a",))])


@attrs.frozen
class SyncConfig:
    source: str
    batch: int = 100


class Configured(Plugin):
    manifest = Manifest("configured", config=SyncConfig)

    def __init__(self) -> None:
        self.seen: SyncConfig | None = None

    async def on_enable(self, ctx: PluginContext) -> None:
        self.seen = ctx.config


class TestConfig:
    async def test_config_is_structured(self, autojump_clock: MockClock) -> None:
        plugin = Configured()
        async with kernel(PluginSpec(plugin, config={"source": "s3://x", "batch": 5})):
            assert plugin.seen == SyncConfig("s3://x", 5)

    async def test_bad_config_names_plugin_and_key_and_nothing_starts(
        self, autojump_clock: MockClock
    ) -> None:
        plugin = Configured()
        spec = PluginSpec(plugin, config={"source": "x", "batch": "ten"}, source="kernel.toml")
        with pytest.raises(ConfigError) as caught:
            async with kernel(spec):
                pass  # pragma: no cover
        message = str(caught.value)
        assert "kernel.toml" in message
        assert "plugins.configured.config.batch" in message
        assert plugin.seen is None


class Greedy(Plugin):
    """Asks for nothing, then tries everything."""

    manifest = Manifest("greedy")

    def __init__(self) -> None:
        self.denied: list[str] = []

    async def on_enable(self, ctx: PluginContext) -> None:
        attempts = [
            ctx.storage.get("k"),
            ctx.storage.put("k", 1),
            ctx.publish("a.b", {}),
            ctx.subscribe("a.*", self.handle),
            ctx.notify("t", "m"),
        ]
        for attempt in attempts:
            try:
                await attempt
            except PermissionDenied as exc:
                self.denied.append(f"{exc.plugin}: {exc.permission}")

    async def handle(self, message: Message) -> None:  # pragma: no cover
        pass


class TestCapabilities:
    async def test_every_capability_needs_its_permission(self, autojump_clock: MockClock) -> None:
        plugin = Greedy()
        async with kernel(plugin):
            pass
        assert plugin.denied == [
            "greedy: storage-read",
            "greedy: storage-write",
            "greedy: bus-publish",
            "greedy: bus-subscribe",
            "greedy: notifications",
        ]

    async def test_storage_is_namespaced_per_plugin(self, autojump_clock: MockClock) -> None:
        seen: dict[str, JSON] = {}

        class Writer(Plugin):
            manifest = Manifest("writer", permissions=["storage-write", "storage-read"])

            async def on_enable(self, ctx: PluginContext) -> None:
                await ctx.storage.put("secret", "w")

        class Reader(Plugin):
            manifest = Manifest(
                "reader", permissions=["storage-read", "storage-write"], requires=["writer"]
            )

            async def on_enable(self, ctx: PluginContext) -> None:
                seen["own"] = await ctx.storage.get("secret")
                seen["keys"] = await ctx.storage.keys()

        storage = MemoryStorage()
        async with kernel(Writer(), Reader(), storage=storage):
            pass
        assert seen == {"own": None, "keys": []}
        assert await storage.get("plugin:writer", "secret") == "w"

    async def test_bus_between_plugins(self, autojump_clock: MockClock) -> None:
        received: list[tuple[str, JSON]] = []

        class Listener(Plugin):
            manifest = Manifest("listener", permissions=["bus-subscribe"])

            async def on_enable(self, ctx: PluginContext) -> None:
                await ctx.subscribe("user.*", self.on_message)

            async def on_message(self, message: Message) -> None:
                received.append((message.topic, message.payload))

        class Talker(Plugin):
            manifest = Manifest("talker", permissions=["bus-publish"], requires=["listener"])

            async def on_enable(self, ctx: PluginContext) -> None:
                await ctx.publish("user.activity", {"id": 7})
                await ctx.publish("data.changed", {"id": 8})

        async with kernel(Listener(), Talker()):
            await trio.sleep(1)
        assert received == [("user.activity", {"id": 7})]


class Busy(Plugin):
    """A schedule, a subscription and a background task: all must stop on disable."""

    manifest = Manifest("busy", permissions=["bus-subscribe", "bus-publish"])

    def __init__(self) -> None:
        self.ticks = 0
        self.messages = 0
        self.loops = 0

    async def on_enable(self, ctx: PluginContext) -> None:
        ctx.schedule(self.tick, Every(seconds=1))
        await ctx.subscribe("busy.#", self.on_message)
        ctx.start_task(self.loop, ctx)

    def tick(self) -> None:
        self.ticks += 1

    async def on_message(self, message: Message) -> None:
        self.messages += 1

    async def loop(self, ctx: PluginContext) -> None:
        while True:
            self.loops += 1
            await ctx.sleep(1)


class TestContainment:
    async def test_disable_stops_everything_the_plugin_started(
        self, autojump_clock: MockClock
    ) -> None:
        plugin = Busy()
        async with kernel(plugin) as k:
            await trio.sleep(10.5)
            await k.bus.publish("busy.x", 1)
            await trio.sleep(0.1)
            await k.disable("busy")
            counts = (plugin.ticks, plugin.messages, plugin.loops)
            assert counts == (10, 1, 11)
            await k.bus.publish("busy.x", 2)
            await trio.sleep(100)
            assert (plugin.ticks, plugin.messages, plugin.loops) == counts
            assert [s for s in k.scheduler.schedules if s.name.startswith("busy/")] == []

    async def test_crash_restarts_with_backoff_then_fails_and_notifies(
        self, autojump_clock: MockClock
    ) -> None:
        starts: list[float] = []

        class Crashy(Plugin):
            manifest = Manifest(
                "crashy", intensity=RestartIntensity(max_restarts=3, period=60, backoff_initial=1)
            )

            async def on_enable(self, ctx: PluginContext) -> None:
                starts.append(trio.current_time())
                ctx.start_task(self.explode)

            async def explode(self) -> None:
                await trio.sleep(5)
                raise RuntimeError("disk full")

        notifier = RecordingNotifier()
        bystander = Busy()
        async with kernel(Crashy(), bystander, notifier=notifier) as k:
            begin = trio.current_time()
            await trio.sleep(100)
            crashy = k.plugins["crashy"]
            assert crashy.state is PluginState.FAILED
            assert crashy.restarts == 3
            assert "RuntimeError: disk full" in crashy.reason
            assert k.plugins["busy"].state is PluginState.ENABLED
        # crash at 5; restart after 1 s, 2 s, 4 s of backoff
        assert [round(t - begin, 3) for t in starts] == [0, 6, 13, 22]
        assert bystander.ticks >= 99
        failures = [n for n in notifier.sent if n[0] == "plugin crashy failed"]
        assert len(failures) == 1
        assert "more than 3 restarts in 60s" in failures[0][1]
        assert failures[0][2] is Level.error
        assert k.exit_code is ExitCode.PLUGIN_FAILED

    @pytest.mark.parametrize(
        ("restart", "crash", "expected_starts", "state"),
        [
            (Restart.PERMANENT, False, 4, PluginState.FAILED),
            (Restart.TRANSIENT, False, 1, PluginState.DISABLED),
            (Restart.TRANSIENT, True, 4, PluginState.FAILED),
            (Restart.TEMPORARY, True, 1, PluginState.FAILED),
        ],
    )
    async def test_restart_types(
        self,
        autojump_clock: MockClock,
        restart: Restart,
        crash: bool,
        expected_starts: int,
        state: PluginState,
    ) -> None:
        starts = 0

        class Service(Plugin):
            manifest = Manifest("service", restart=restart)

            async def run(self, ctx: PluginContext) -> None:
                nonlocal starts
                starts += 1
                await trio.sleep(1)
                if crash:
                    raise ValueError("bad")

        async with kernel(Service()) as k:
            await trio.sleep(60)
            assert k.plugins["service"].state is state
        assert starts == expected_starts

    async def test_a_hanging_on_enable_does_not_block_others(
        self, autojump_clock: MockClock
    ) -> None:
        class Hangs(Plugin):
            manifest = Manifest("hangs", restart="temporary")

            async def on_enable(self, ctx: PluginContext) -> None:
                await trio.sleep_forever()

        events: list[str] = []
        async with kernel(Hangs(), Recorder(events), enable_timeout=5) as k:
            assert k.plugins["hangs"].state is PluginState.FAILED
            assert "on_enable took longer than 5s" in k.plugins["hangs"].reason
            assert k.plugins["recorder"].state is PluginState.ENABLED

    async def test_slow_shutdown_is_cancelled_after_grace(self, autojump_clock: MockClock) -> None:
        events: list[str] = []

        class Slow(Plugin):
            manifest = Manifest("slow")

            async def on_disable(self, ctx: PluginContext) -> None:
                events.append("slow: disabling")
                await trio.sleep(1000)
                events.append("slow: never")  # pragma: no cover

        begin = trio.current_time()
        k = kernel(Recorder(events), Slow(), shutdown_grace=3)
        async with k:
            pass
        assert trio.current_time() - begin == pytest.approx(3)
        assert events == [
            "install recorder",
            "enable recorder",
            "slow: disabling",
            "disable recorder",
        ]
        assert k.exit_code is ExitCode.FORCED


class TestHealth:
    async def test_health_transitions_are_notified(self, autojump_clock: MockClock) -> None:
        class Queue(Plugin):
            manifest = Manifest("queue")
            backlog = 0

            async def health(self, ctx: PluginContext) -> HealthReport:
                if self.backlog > 100:
                    return HealthReport.degraded(f"backlog {self.backlog}")
                return HealthReport.healthy()

        plugin = Queue()
        notifier = RecordingNotifier()
        async with kernel(plugin, notifier=notifier, health_interval=10) as k:
            await trio.sleep(15)
            plugin.backlog = 500
            await trio.sleep(10)
            assert k.status()["health"]["status"] == "degraded"
            plugin.backlog = 0
            await trio.sleep(10)
        titles = [title for title, _, _ in notifier.sent]
        assert "queue is degraded" in titles
        assert "queue is healthy" in titles


class TestSignals:
    async def test_first_signal_is_graceful_second_cancels(self, autojump_clock: MockClock) -> None:
        events: list[str] = []

        class Stubborn(Plugin):
            manifest = Manifest("stubborn")

            async def on_disable(self, ctx: PluginContext) -> None:
                events.append("stubborn: disabling")
                await trio.sleep_forever()

        k = kernel(Recorder(events), Stubborn(), shutdown_grace=1000)
        async with trio.open_nursery() as nursery:
            codes: list[ExitCode] = []

            async def serve() -> None:
                codes.append(await k.serve())

            nursery.start_soon(serve)
            await trio.sleep(1)
            os.kill(os.getpid(), signal.SIGTERM)
            await trio.sleep(1)
            assert events[-1] == "stubborn: disabling"
            os.kill(os.getpid(), signal.SIGINT)
        assert codes == [ExitCode.FORCED]

    async def test_clean_stop_exits_zero(self, autojump_clock: MockClock) -> None:
        k = kernel(Recorder([]))
        async with trio.open_nursery() as nursery:
            codes: list[ExitCode] = []

            async def serve() -> None:
                codes.append(await k.serve())

            nursery.start_soon(serve)
            await trio.sleep(1)
            os.kill(os.getpid(), signal.SIGTERM)
        assert codes == [ExitCode.OK]


class TestPolicies:
    def test_restart_types(self) -> None:
        assert should_restart(Restart.PERMANENT, crashed=False)
        assert should_restart(Restart.PERMANENT, crashed=True)
        assert not should_restart(Restart.TRANSIENT, crashed=False)
        assert should_restart(Restart.TRANSIENT, crashed=True)
        assert not should_restart(Restart.TEMPORARY, crashed=True)

    def test_budget_backs_off_and_forgets_old_restarts(self) -> None:
        budget = RestartBudget(RestartIntensity(max_restarts=3, period=60, backoff_initial=0.5))
        assert [budget.next_delay(t) for t in (0, 1, 2)] == [0.5, 1.0, 2.0]
        assert budget.next_delay(3) is None
        assert budget.next_delay(60.5) == 2.0  # the restart at 0 has left the period

    def test_backoff_is_capped(self) -> None:
        budget = RestartBudget(
            RestartIntensity(max_restarts=50, period=1e9, backoff_initial=1, backoff_max=30)
        )
        delays = [budget.next_delay(t) for t in range(10)]
        assert delays[-1] == 30
        assert delays == sorted(delays)  # type: ignore[type-var]


async def test_cancel_during_graceful_shutdown_stays_inside_the_kernel(
    autojump_clock: MockClock,
) -> None:
    class CancelsTheKernel(Plugin):
        manifest = Manifest("canceller")
        target: Kernel

        async def on_disable(self, ctx: PluginContext) -> None:
            await trio.sleep(1)
            self.target.cancel()
            await trio.sleep_forever()

    plugin = CancelsTheKernel()
    k = kernel(plugin, shutdown_grace=1000)
    plugin.target = k
    async with k:  # no nursery around it: a stray Cancelled would fail the test
        pass
    assert k.exit_code is ExitCode.FORCED
