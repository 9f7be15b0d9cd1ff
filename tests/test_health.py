from __future__ import annotations

import json
import logging
import math

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.errors import HealthCheckError, KernelError
from kernel.observe.health import (
    OVERALL,
    HealthCheck,
    HealthMonitor,
    HealthReport,
    HealthSnapshot,
    HealthTransition,
    Status,
    aggregate,
)

HEALTHY, DEGRADED, UNHEALTHY = Status.HEALTHY, Status.DEGRADED, Status.UNHEALTHY


class Recorder:
    """An ``on_transition`` callback that remembers what it was told."""

    def __init__(self) -> None:
        self.transitions: list[HealthTransition] = []

    async def __call__(self, transition: HealthTransition) -> None:
        self.transitions.append(transition)

    @property
    def seen(self) -> list[tuple[str, Status, Status]]:
        return [(t.name, t.old, t.new) for t in self.transitions]


# -- Status and HealthReport ----------------------------------------------------


def test_status_is_ordered_worst_last() -> None:
    assert HEALTHY < DEGRADED < UNHEALTHY
    assert UNHEALTHY >= DEGRADED >= DEGRADED
    assert max([DEGRADED, UNHEALTHY, HEALTHY]) is UNHEALTHY
    assert sorted([UNHEALTHY, HEALTHY, DEGRADED]) == [HEALTHY, DEGRADED, UNHEALTHY]
    assert [s.value for s in Status] == ["healthy", "degraded", "unhealthy"]


def test_status_does_not_compare_with_other_types() -> None:
    with pytest.raises(TypeError):
        _ = HEALTHY < 1  # type: ignore[operator]


def test_report_constructors_and_dict_form() -> None:
    report = HealthReport.degraded("backlog of 500 jobs", backlog=500)
    assert report.status is DEGRADED
    assert report.reasons == ("backlog of 500 jobs",)
    assert report.to_dict() == {
        "status": "degraded",
        "reasons": ["backlog of 500 jobs"],
        "details": {"backlog": 500},
    }
    assert HealthReport.healthy() == HealthReport(HEALTHY)
    assert HealthReport.unhealthy("a", "b").reasons == ("a", "b")
    hash(report)  # frozen values are hashable; details do not take part


def test_a_single_string_is_one_reason() -> None:
    assert HealthReport(DEGRADED, "slow disk").reasons == ("slow disk",)  # type: ignore[arg-type]


def test_report_validates_its_fields() -> None:
    with pytest.raises(TypeError):
        HealthReport("healthy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be str"):
        HealthReport(DEGRADED, (1,))  # type: ignore[arg-type]


# -- aggregate (pure policy) ---------------------------------------------------------


def test_aggregate_of_nothing_is_healthy() -> None:
    assert aggregate({}) == HealthReport(HEALTHY)


def test_aggregate_worst_wins_and_reasons_name_their_component() -> None:
    overall = aggregate(
        {
            "storage": HealthReport.healthy("wal checkpoint ok"),
            "mailer": HealthReport.degraded("smtp slow"),
            "bus": HealthReport.unhealthy("broker unreachable", "3 retries failed"),
            "cache": HealthReport(DEGRADED),
        }
    )
    assert overall.status is UNHEALTHY
    assert overall.reasons == (
        "bus: broker unreachable",
        "bus: 3 retries failed",
        "mailer: smtp slow",
        "cache: degraded",
    )


_reports = st.builds(
    HealthReport,
    st.sampled_from(Status),
    st.lists(st.text(max_size=5), max_size=3).map(tuple),
)


@given(st.dictionaries(st.text(min_size=1, max_size=5), _reports, max_size=6))
@settings(max_examples=200)
def test_aggregate_properties(reports: dict[str, HealthReport]) -> None:
    overall = aggregate(reports)
    assert overall.status == max((r.status for r in reports.values()), default=HEALTHY)
    ailing = {name: r for name, r in reports.items() if r.status is not HEALTHY}
    assert len(overall.reasons) == sum(max(1, len(r.reasons)) for r in ailing.values())
    severities = []
    for reason in overall.reasons:
        name = next(n for n in ailing if reason.startswith(f"{n}: "))
        severities.append(ailing[name].status)
    assert severities == sorted(severities, reverse=True)
    assert (overall.status is HEALTHY) == (not overall.reasons)


# -- running checks --------------------------------------------------------------------


async def _false() -> bool:
    return False


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (lambda: True, HealthReport(HEALTHY)),
        (lambda: False, HealthReport.unhealthy("check returned False")),
        (lambda: DEGRADED, HealthReport(DEGRADED)),
        (lambda: HealthReport.degraded("slow"), HealthReport.degraded("slow")),
        (_false, HealthReport.unhealthy("check returned False")),
        (
            lambda: None,
            HealthReport.unhealthy(
                "check returned NoneType, expected HealthReport, Status or bool"
            ),
        ),
    ],
)
async def test_check_results_become_reports(check: HealthCheck, expected: HealthReport) -> None:
    monitor = HealthMonitor()
    monitor.register("component", check)
    snapshot = await monitor.check_all()
    assert snapshot.components == {"component": expected}


async def test_a_raising_check_is_contained() -> None:
    def broken() -> bool:
        raise RuntimeError("disk gone")

    async def broken_async() -> bool:
        await trio.lowlevel.checkpoint()
        raise ValueError("bad reply")

    monitor = HealthMonitor()
    monitor.register("disk", broken)
    monitor.register("api", broken_async)
    monitor.register("fine", lambda: True)
    snapshot = await monitor.check_all()
    assert snapshot.components["disk"] == HealthReport.unhealthy(
        "check raised RuntimeError: disk gone"
    )
    assert snapshot.components["api"] == HealthReport.unhealthy(
        "check raised ValueError: bad reply"
    )
    assert snapshot.components["fine"].status is HEALTHY
    assert snapshot.overall.status is UNHEALTHY


async def test_a_hanging_check_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async def hangs() -> bool:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def slow_but_in_time() -> bool:
        await trio.sleep(1)
        return True

    monitor = HealthMonitor(default_timeout=5)
    monitor.register("hangs", hangs)
    monitor.register("quick_hang", hangs, timeout=2.5)
    monitor.register("slow", slow_but_in_time)
    start = trio.current_time()
    snapshot = await monitor.check_all()
    assert trio.current_time() - start == pytest.approx(5)
    assert snapshot.components["hangs"] == HealthReport.unhealthy("check timed out after 5s")
    assert snapshot.components["quick_hang"] == HealthReport.unhealthy("check timed out after 2.5s")
    assert snapshot.components["slow"].status is HEALTHY


async def test_checks_run_concurrently(autojump_clock: trio.testing.MockClock) -> None:
    async def three_seconds() -> Status:
        await trio.sleep(3)
        return HEALTHY

    monitor = HealthMonitor()
    for name in ["a", "b", "c"]:
        monitor.register(name, three_seconds)
    start = trio.current_time()
    await monitor.check_all()
    assert trio.current_time() - start == pytest.approx(3)


# -- transitions -----------------------------------------------------------------------------


async def test_one_notification_per_change_and_one_on_recovery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    def database() -> Status:
        nonlocal calls
        calls += 1
        return DEGRADED if 3 <= calls < 6 else HEALTHY

    recorder = Recorder()
    monitor = HealthMonitor(recorder)
    monitor.register("database", database)
    monitor.register("steady", lambda: True)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run, 10)
        await trio.sleep(95)  # rounds at 0, 10, ..., 90
        nursery.cancel_scope.cancel()
    assert calls == 10
    assert recorder.seen == [
        ("database", HEALTHY, DEGRADED),
        (OVERALL, HEALTHY, DEGRADED),
        ("database", DEGRADED, HEALTHY),
        (OVERALL, DEGRADED, HEALTHY),
    ]
    overall_down, overall_up = recorder.transitions[1], recorder.transitions[3]
    assert overall_down.is_overall
    assert overall_down.report.reasons == ("database: degraded",)
    assert not overall_down.is_recovery
    assert overall_up.is_recovery


async def test_a_component_seen_unhealthy_first_is_reported() -> None:
    recorder = Recorder()
    monitor = HealthMonitor(recorder)
    monitor.register("ok", lambda: True)
    monitor.register("down", lambda: HealthReport.unhealthy("refused"))
    await monitor.check_all()
    assert recorder.seen == [("down", HEALTHY, UNHEALTHY), (OVERALL, HEALTHY, UNHEALTHY)]
    assert recorder.transitions[0].report.reasons == ("refused",)


async def test_new_reasons_without_a_new_status_are_not_a_transition() -> None:
    backlog = iter([100, 200])

    def queue() -> HealthReport:
        return HealthReport.degraded(f"backlog {next(backlog)}")

    recorder = Recorder()
    monitor = HealthMonitor(recorder)
    monitor.register("queue", queue)
    await monitor.check_all()
    await monitor.check_all()
    assert len(recorder.transitions) == 2  # the first degrade, component and overall
    assert monitor.current().overall.reasons == ("queue: backlog 200",)


async def test_overall_follows_the_worst_component() -> None:
    states = {"a": HEALTHY, "b": HEALTHY}
    recorder = Recorder()
    monitor = HealthMonitor(recorder)
    for name in states:
        monitor.register(name, lambda name=name: states[name])
    states["a"] = DEGRADED
    await monitor.check_all()
    states["b"] = UNHEALTHY
    await monitor.check_all()
    states["b"] = HEALTHY
    await monitor.check_all()
    overall = [(old, new) for name, old, new in recorder.seen if name == OVERALL]
    assert overall == [(HEALTHY, DEGRADED), (DEGRADED, UNHEALTHY), (UNHEALTHY, DEGRADED)]


async def test_unregistering_removes_the_check_and_recovers_overall() -> None:
    calls = 0

    def failing() -> bool:
        nonlocal calls
        calls += 1
        return False

    recorder = Recorder()
    monitor = HealthMonitor(recorder)
    monitor.register("plugin_x", failing)
    await monitor.check_all()
    assert monitor.current().overall.status is UNHEALTHY

    monitor.unregister("plugin_x")
    monitor.unregister("plugin_x")  # a second time is a no-op
    assert monitor.names == ()
    assert monitor.current() == HealthSnapshot(HealthReport(HEALTHY), {})
    await monitor.check_all()
    assert calls == 1
    assert recorder.seen == [
        ("plugin_x", HEALTHY, UNHEALTHY),
        (OVERALL, HEALTHY, UNHEALTHY),
        (OVERALL, UNHEALTHY, HEALTHY),
    ]


async def test_a_result_for_a_check_unregistered_meanwhile_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow_failure() -> bool:
        await trio.sleep(5)
        return False

    recorder = Recorder()
    monitor = HealthMonitor(recorder)
    monitor.register("slow", slow_failure)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.check_all)
        await trio.sleep(1)
        monitor.unregister("slow")
    assert monitor.current().components == {}
    assert recorder.seen == []


async def test_a_failing_callback_is_logged_and_monitoring_goes_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_notifier(transition: HealthTransition) -> None:
        raise ConnectionError("notifier down")

    flip = iter([False, True, False])
    monitor = HealthMonitor(broken_notifier)
    monitor.register("flaky", lambda: next(flip))
    with caplog.at_level(logging.ERROR, logger="kernel.health"):
        async with trio.open_nursery() as nursery:
            await nursery.start(monitor.run, 1)
            await trio.sleep(2.5)
            nursery.cancel_scope.cancel()
    assert monitor.current().overall.status is UNHEALTHY  # the third round ran
    assert len(caplog.records) == 6  # three rounds, component and overall each
    assert "notifier down" in caplog.text


async def test_run_reports_started_after_the_first_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    monitor = HealthMonitor()
    monitor.register("db", lambda: DEGRADED)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run, 30)
        assert monitor.current().components == {"db": HealthReport(DEGRADED)}
        nursery.cancel_scope.cancel()


async def test_run_keeps_a_fixed_rate_and_catches_up_after_an_overrun(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    durations = iter([0, 25, 0, 0])

    async def check() -> bool:
        starts.append(trio.current_time())
        await trio.sleep(next(durations))
        return True

    monitor = HealthMonitor()
    monitor.register("x", check, timeout=60)
    async with trio.open_nursery() as nursery:
        base = trio.current_time()
        nursery.start_soon(monitor.run, 10)
        await trio.sleep(40)
        nursery.cancel_scope.cancel()
    # 0; 10, which overruns to 35; 35 at once; 45 is past the end
    assert [round(t - base, 6) for t in starts] == [0, 10, 35]


@pytest.mark.parametrize("interval", [0, -1, math.inf, math.nan])
async def test_run_rejects_a_bad_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        await HealthMonitor().run(interval)


# -- registration ------------------------------------------------------------------------


def test_registration_errors() -> None:
    monitor = HealthMonitor()
    monitor.register("db", lambda: True)
    with pytest.raises(HealthCheckError, match="already registered"):
        monitor.register("db", lambda: True)
    with pytest.raises(HealthCheckError, match="reserved"):
        monitor.register(OVERALL, lambda: True)
    with pytest.raises(HealthCheckError, match="non-empty"):
        monitor.register("", lambda: True)
    with pytest.raises(HealthCheckError, match="callable"):
        monitor.register("x", True)  # type: ignore[arg-type]
    with pytest.raises(HealthCheckError, match="positive") as caught:
        monitor.register("y", lambda: True, timeout=0)
    assert isinstance(caught.value, KernelError)
    assert caught.value.name == "y"
    assert monitor.names == ("db",)


def test_default_timeout_is_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        HealthMonitor(default_timeout=-1)


async def test_snapshot_dict_is_json() -> None:
    monitor = HealthMonitor()
    monitor.register("db", lambda: HealthReport.degraded("replica lag 12s", lag_seconds=12))
    monitor.register("bus", lambda: True)
    snapshot = await monitor.check_all()
    data = snapshot.to_dict()
    assert json.loads(json.dumps(data)) == {
        "status": "degraded",
        "reasons": ["db: replica lag 12s"],
        "components": {
            "db": {
                "status": "degraded",
                "reasons": ["replica lag 12s"],
                "details": {"lag_seconds": 12},
            },
            "bus": {"status": "healthy", "reasons": [], "details": {}},
        },
    }
    assert monitor.current() == snapshot
