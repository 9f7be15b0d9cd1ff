"""Contribs: found in entry-point group kernel.contrib, their tables accepted
by the config loader (and no others), structured by their own class, and
entered around the kernel by the runner; plus the two small kernel pieces
the HTTP contrib reads (`Schedule.trigger_now`, `Histogram.cumulative_counts`)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from kernel import Clock, Contrib, Every, Kernel, Metrics, parse_config
from kernel.errors import AdapterLoadError, ConfigError, EntryPointConflict, MetricError
from kernel.runtime.contrib import (
    CONTRIB_GROUP,
    contrib_tables,
    load_contrib,
    load_contribs,
    open_contribs,
)
from kernel.time.scheduler import Scheduler

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@attrs.frozen
class DemoConfig:
    port: int = 80
    name: str = "demo"


@attrs.define
class DemoContrib:
    config_type: type[Any] = DemoConfig
    events: list[str] = attrs.Factory(list)

    @asynccontextmanager
    async def _serve(self, kernel: Kernel, config: DemoConfig) -> AsyncIterator[None]:
        self.events.append(f"enter {config.port}")
        yield
        self.events.append("exit")

    def serve(self, kernel: Kernel, config: Any, *, source: str) -> Any:
        return self._serve(kernel, config)


DEMO = DemoContrib()
NOT_A_CONTRIB = object()


def entry_points(*pairs: tuple[str, str]) -> Any:
    points = [importlib.metadata.EntryPoint(n, v, CONTRIB_GROUP) for n, v in pairs]

    def find(group: str) -> list[importlib.metadata.EntryPoint]:
        return points if group == CONTRIB_GROUP else []

    return find


DEMO_POINT = ("demo", "tests.test_contrib:DEMO")


def test_a_claimed_table_is_accepted_and_others_still_rejected() -> None:
    text = '[kernel]\nstorage = "memory://"\n[demo]\nport = 8080\n'
    config = parse_config(text, source="k.toml", contrib_tables=["demo"])
    assert config.contrib == {"demo": {"port": 8080}}
    with pytest.raises(ConfigError) as raised:
        parse_config(text, source="k.toml", contrib_tables=[])
    assert str(raised.value).startswith("config error in k.toml at demo: unknown key 'demo'")
    assert "needs the contrib that claims it installed" in str(raised.value)
    with pytest.raises(ConfigError, match="at demo: expected a table"):
        parse_config("demo = 3\n", source="k.toml", contrib_tables=["demo"])
    with pytest.raises(ConfigError, match="did you mean 'demo'"):
        parse_config("[dem]\n", source="k.toml", contrib_tables=["demo"])


def test_installed_tables_are_the_entry_point_names_minus_the_kernels_own() -> None:
    find = entry_points(DEMO_POINT, ("kernel", "tests.test_contrib:DEMO"))
    assert contrib_tables(find) == ["demo"]
    with pytest.raises(EntryPointConflict, match="the kernel's own table"):
        load_contrib("kernel", find_entry_points=find)


def test_a_contrib_is_loaded_and_its_table_structured_with_key_paths() -> None:
    find = entry_points(DEMO_POINT)
    assert isinstance(load_contrib("demo", find_entry_points=find), Contrib)
    (entry,) = load_contribs({"demo": {"port": 9}}, source="k.toml", find_entry_points=find)
    assert (entry.name, entry.source) == ("demo", "k.toml")
    # the entry point imports this module by its dotted name: compare by value
    assert attrs.asdict(entry.config) == {"port": 9, "name": "demo"}
    with pytest.raises(ConfigError) as raised:
        load_contribs({"demo": {"port": "x"}}, source="k.toml", find_entry_points=find)
    assert str(raised.value).startswith("config error in k.toml at demo.port:")


def test_conflicts_and_broken_contribs_are_named() -> None:
    twice = entry_points(DEMO_POINT, ("demo", "tests.test_contrib:DemoContrib"))
    with pytest.raises(EntryPointConflict, match=r"'demo' in entry-point group 'kernel\.contrib'"):
        load_contrib("demo", find_entry_points=twice)
    wrong = entry_points(("demo", "tests.test_contrib:NOT_A_CONTRIB"))
    with pytest.raises(AdapterLoadError, match="not a Contrib"):
        load_contrib("demo", find_entry_points=wrong)
    missing = entry_points(("demo", "tests.no_such_module:X"))
    with pytest.raises(AdapterLoadError, match="ModuleNotFoundError"):
        load_contrib("demo", find_entry_points=missing)


async def test_contribs_are_entered_around_the_kernel(autojump_clock: MockClock) -> None:
    demo = DemoContrib()
    (entry,) = load_contribs(
        {"demo": {"port": 1}}, source="k.toml", find_entry_points=entry_points(DEMO_POINT)
    )
    entry = attrs.evolve(entry, contrib=demo)
    kernel = Kernel(clock=Clock.starting_at(T0))
    async with open_contribs(kernel, [entry]):
        assert demo.events == ["enter 1"]
        async with kernel:
            pass
    assert demo.events == ["enter 1", "exit"]


async def test_trigger_now_runs_a_plain_schedule_once_and_keeps_its_plan(
    autojump_clock: MockClock,
) -> None:
    runs: list[float] = []
    scheduler = Scheduler(Clock.starting_at(T0))
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        schedule = scheduler.add_schedule(lambda: runs.append(trio.current_time()), Every(hours=1))
        planned = schedule.next_fire_time
        await trio.sleep(10)
        schedule.trigger_now()
        await trio.sleep(1)
        assert len(runs) == 1
        assert schedule.next_fire_time == planned
        assert schedule.stats.fired == 1
        schedule.cancel()
        schedule.trigger_now()  # a cancelled schedule does nothing
        await trio.sleep(1)
        assert len(runs) == 1
        nursery.cancel_scope.cancel()


def test_cumulative_counts_are_prometheus_le_buckets() -> None:
    histogram = Metrics().histogram("run_seconds")
    for value in (0.0, 0.004, 0.02, 0.3, 0.3, 7.0, 1000.0):
        histogram.observe(value)
    assert histogram.cumulative_counts([0.005, 0.1, 0.5, 10.0]) == [2, 3, 5, 6]
    assert histogram.cumulative_counts([]) == []
    # a bound within 1 % of a value may count it on either side, no further
    assert histogram.cumulative_counts([0.297, 0.303]) in ([3, 5], [5, 5], [3, 3])
    with pytest.raises(MetricError, match="bounds must ascend"):
        histogram.cumulative_counts([1.0, 0.5])
