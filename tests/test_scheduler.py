"""The scheduler driver under trio's MockClock: months of time in milliseconds."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import trio
from trio.testing import MockClock

from kernel.time.clock import Clock
from kernel.time.policies import (
    AllowOverlap,
    CancelRunning,
    CatchUp,
    QueueOne,
    RunOnce,
    SkipIfRunning,
    SkipMissed,
)
from kernel.time.scheduler import Scheduler, open_scheduler
from kernel.time.triggers import At, Cron, Every

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")
DAY = 86_400


async def test_cron_in_berlin_fires_daily_at_two_for_400_days(autojump_clock: MockClock) -> None:
    clock = Clock.starting_at(T0)
    fires: list[datetime] = []
    async with open_scheduler(clock) as scheduler:
        scheduler.add_schedule(
            lambda: fires.append(clock.now()), Cron("0 2 * * *", tz="Europe/Berlin")
        )
        await trio.sleep(400 * DAY)
    local = [fire.astimezone(BERLIN) for fire in fires]
    assert len(local) == 400
    # one fire per consecutive local day
    days = [fire.date() for fire in local]
    assert days == [days[0] + timedelta(days=n) for n in range(400)]
    # at 02:00 local, except the spring-forward days when 02:00 does not exist:
    # then at the first valid instant after it, 03:00 CEST
    spring_forward = {datetime(2026, 3, 29).date(), datetime(2027, 3, 28).date()}
    for fire in local:
        expected = 3 if fire.date() in spring_forward else 2
        assert (fire.hour, fire.minute, fire.second) == (expected, 0, 0), fire
    assert {fire.utcoffset() for fire in local} == {timedelta(hours=1), timedelta(hours=2)}


async def test_every_second_for_100k_seconds_drifts_by_zero(autojump_clock: MockClock) -> None:
    clock = Clock.starting_at(T0)
    fires: list[float] = []
    async with open_scheduler(clock) as scheduler:
        start = trio.current_time()
        schedule = scheduler.add_schedule(
            lambda: fires.append(trio.current_time() - start), Every(seconds=1)
        )
        await trio.sleep(100_000.5)
    assert len(fires) == 100_000
    assert fires[0] == pytest.approx(1.0, abs=1e-9)
    assert fires[-1] == pytest.approx(100_000.0, abs=1e-6)
    worst = max(abs(at - (n + 1)) for n, at in enumerate(fires))
    assert worst < 1e-6  # far below the 1 ms tick: nothing accumulates
    assert schedule.last_fire_time == T0 + timedelta(seconds=100_000)


async def test_an_earlier_timer_wakes_the_sleeping_driver(autojump_clock: MockClock) -> None:
    fired: list[tuple[str, float]] = []
    async with open_scheduler(Clock.starting_at(T0)) as scheduler:
        start = trio.current_time()
        scheduler.call_later(3600, lambda: fired.append(("late", trio.current_time() - start)))
        await trio.sleep(10)  # the driver is now asleep until +3600 s
        scheduler.call_later(5, lambda: fired.append(("early", trio.current_time() - start)))
        await trio.sleep(4000)
    assert fired == [("early", pytest.approx(15)), ("late", pytest.approx(3600))]


async def test_an_idle_scheduler_does_not_tick(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    wakes = 0
    tick_now = Clock.tick_now

    def counting() -> int:
        nonlocal wakes
        wakes += 1
        return tick_now()

    async with open_scheduler(Clock.starting_at(T0)) as scheduler:
        monkeypatch.setattr(Clock, "tick_now", staticmethod(counting))
        schedule = scheduler.add_schedule(lambda: None, Cron("0 0 * * *"))
        await trio.sleep(10.5 * DAY)
    assert schedule.stats.fired == 10
    # a wake per fire, and at most one more to cascade the wheel's levels
    assert 10 <= wakes <= 20


async def test_timers_fire_in_deadline_order(autojump_clock: MockClock) -> None:
    order: list[int] = []
    async with open_scheduler(Clock.starting_at(T0)) as scheduler:
        delays = list(range(200))
        random.Random(7).shuffle(delays)
        for delay in delays:
            scheduler.call_later(delay * 0.25, lambda d=delay: order.append(d))
        await trio.sleep(60)
    assert order == sorted(order)
    assert len(order) == 200


class TestOverlapPolicies:
    async def _run(
        self, overlap: object, run_seconds: float, total: float
    ) -> tuple[list[float], object]:
        starts: list[float] = []
        async with open_scheduler(Clock.starting_at(T0)) as scheduler:
            begin = trio.current_time()

            async def job() -> None:
                starts.append(trio.current_time() - begin)
                await trio.sleep(run_seconds)

            schedule = scheduler.add_schedule(job, Every(seconds=1), overlap=overlap)  # type: ignore[arg-type]
            await trio.sleep(total)
        return starts, schedule.stats

    async def test_skip_if_running(self, autojump_clock: MockClock) -> None:
        starts, stats = await self._run(SkipIfRunning(), 2.5, 10.5)
        assert starts == [1, 4, 7, 10]
        assert stats.skipped == 6  # type: ignore[attr-defined]

    async def test_queue_one_runs_back_to_back(self, autojump_clock: MockClock) -> None:
        starts, stats = await self._run(QueueOne(), 2.5, 10.5)
        assert starts == [1, 3.5, 6, 8.5]
        assert stats.skipped > 0  # type: ignore[attr-defined]

    async def test_allow_overlap(self, autojump_clock: MockClock) -> None:
        starts, stats = await self._run(AllowOverlap(2), 2.5, 6.5)
        # at most two at once: 1 and 2 run; 3 is skipped; 4 starts once 1 ended at 3.5
        assert starts == [1, 2, 4, 5]
        assert stats.skipped == 2  # type: ignore[attr-defined]

    async def test_cancel_running(self, autojump_clock: MockClock) -> None:
        starts, stats = await self._run(CancelRunning(), 10, 5.5)
        assert starts == [1, 2, 3, 4, 5]
        assert stats.cancelled == 4  # type: ignore[attr-defined]


class _SteppableWall:
    """A wall clock for MockClock tests that can be stepped like NTP would."""

    def __init__(self) -> None:
        self.step = 0.0

    def __call__(self) -> float:
        return T0.timestamp() + trio.current_time() + self.step


class TestClockJumpsAndMisfires:
    async def _jump(self, misfire: object, step: float) -> tuple[list[datetime], object, Clock]:
        wall = _SteppableWall()
        clock = Clock(wall)
        fires: list[datetime] = []
        async with open_scheduler(clock) as scheduler:
            schedule = scheduler.add_schedule(
                lambda: fires.append(clock.now()),
                Cron("*/10 * * * *"),
                misfire=misfire,  # type: ignore[arg-type]
            )
            await trio.sleep(25 * 60)  # fires at :10 and :20
            wall.step += step
            await trio.sleep(30 * 60)
        return fires, schedule.stats, clock

    async def test_forward_jump_runs_once_by_default(self, autojump_clock: MockClock) -> None:
        fires, stats, _ = await self._jump(RunOnce(), 3600)
        minutes = [int((f - T0).total_seconds() // 60) for f in fires]
        # 00:10, 00:20, then the clock jumps to ~01:25: the six missed slots
        # (00:30 .. 01:20) coalesce into one run, then 01:30, 01:40, 01:50
        assert minutes[:2] == [10, 20]
        assert len(minutes) == 6
        assert minutes[3:] == [90, 100, 110]
        assert stats.missed == 5  # type: ignore[attr-defined]

    async def test_forward_jump_catches_up(self, autojump_clock: MockClock) -> None:
        fires, stats, _ = await self._jump(CatchUp(), 3600)
        assert len(fires) == 2 + 6 + 3
        assert stats.missed == 0  # type: ignore[attr-defined]

    async def test_forward_jump_skips_missed(self, autojump_clock: MockClock) -> None:
        fires, stats, _ = await self._jump(SkipMissed(), 3600)
        assert len(fires) == 2 + 3
        assert stats.missed == 6  # type: ignore[attr-defined]

    async def test_backward_jump_repeats_nothing(self, autojump_clock: MockClock) -> None:
        fires, _, _ = await self._jump(RunOnce(), -1200)
        slots = [f.replace(second=0, microsecond=0) for f in fires]
        # 00:10, 00:20; wall goes back to ~00:05 then on to 00:35: 00:10 and
        # 00:20 again on the wall, but those slots have fired; next is 00:30
        assert [int((s - T0).total_seconds() // 60) for s in slots] == [10, 20, 30]


async def test_pause_and_resume_skip_the_paused_slots(autojump_clock: MockClock) -> None:
    starts: list[float] = []
    async with open_scheduler(Clock.starting_at(T0)) as scheduler:
        begin = trio.current_time()
        schedule = scheduler.add_schedule(
            lambda: starts.append(trio.current_time() - begin), Every(seconds=10)
        )
        await trio.sleep(25)
        schedule.pause()
        await trio.sleep(40)  # 30, 40, 50, 60 fall in the pause
        schedule.resume()
        await trio.sleep(30)
    assert starts == [10, 20, 70, 80, 90]


async def test_cancel_stops_fires_and_cancels_running_runs(autojump_clock: MockClock) -> None:
    finished: list[int] = []
    async with open_scheduler(Clock.starting_at(T0)) as scheduler:

        async def job() -> None:
            await trio.sleep(100)
            finished.append(1)

        schedule = scheduler.add_schedule(job, Every(seconds=1))
        await trio.sleep(1.5)
        assert schedule.running == 1
        schedule.cancel()
        await schedule.wait_idle()
        await trio.sleep(200)
        assert schedule not in scheduler.schedules
    assert finished == []
    assert schedule.stats.cancelled == 1
    assert schedule.stats.started == 1


async def test_a_failing_run_is_contained(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise RuntimeError("boom")

    async with open_scheduler(Clock.starting_at(T0)) as scheduler:
        schedule = scheduler.add_schedule(flaky, Every(seconds=1), name="flaky")
        await trio.sleep(10.5)
    assert calls == 10
    assert (schedule.stats.failed, schedule.stats.succeeded) == (5, 5)
    assert "schedule 'flaky': run failed" in caplog.text


async def test_jitter_delays_runs_but_keeps_exact_slots(autojump_clock: MockClock) -> None:
    starts: list[float] = []
    async with open_scheduler(Clock.starting_at(T0), rng=random.Random(1)) as scheduler:
        begin = trio.current_time()
        schedule = scheduler.add_schedule(
            lambda: starts.append(trio.current_time() - begin),
            Every(seconds=60, jitter=timedelta(seconds=10)),
            misfire=SkipMissed(),
        )
        await trio.sleep(60 * 100 + 30)
    assert len(starts) == 100
    for n, at in enumerate(starts, start=1):
        assert 60 * n <= at < 60 * n + 10.001
    assert len({round(at % 60, 3) for at in starts}) > 50  # really random
    assert schedule.last_fire_time == T0 + timedelta(seconds=6000)
    assert schedule.stats.missed == 0


async def test_one_shot_fires_once_and_finishes(autojump_clock: MockClock) -> None:
    fired: list[datetime] = []
    clock = Clock.starting_at(T0)
    async with open_scheduler(clock) as scheduler:
        schedule = scheduler.add_schedule(
            lambda: fired.append(clock.now()), At(T0 + timedelta(hours=5))
        )
        await trio.sleep(DAY)
    assert fired == [T0 + timedelta(hours=5)]
    assert schedule.finished
    assert scheduler.schedules == []


async def test_runs_start_in_the_given_nursery(autojump_clock: MockClock) -> None:
    async with open_scheduler(Clock.starting_at(T0)) as scheduler:
        started = trio.Event()

        async def job() -> None:
            started.set()
            await trio.sleep_forever()

        async with trio.open_nursery() as owner:
            schedule = scheduler.add_schedule(job, Every(seconds=1), nursery=owner)
            await started.wait()
            owner.cancel_scope.cancel()
        assert schedule.running == 0  # its run died with the owner's nursery
        await trio.sleep(5)
        # the next fire found the owner gone: the schedule went with it
        assert schedule.cancelled
        assert schedule.stats.started == 1


async def test_rejects_non_triggers_and_non_callables(autojump_clock: MockClock) -> None:
    async with open_scheduler(Clock.starting_at(T0)) as scheduler:
        with pytest.raises(TypeError, match="needs a trigger"):
            scheduler.add_schedule(lambda: None, "*/5 * * * *")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="needs a callable"):
            scheduler.add_schedule(None, Every(seconds=1))  # type: ignore[arg-type]


async def test_a_scheduler_runs_only_once(autojump_clock: MockClock) -> None:
    scheduler = Scheduler(Clock.starting_at(T0))
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        with pytest.raises(RuntimeError, match="already running"):
            await scheduler.run()
        nursery.cancel_scope.cancel()
