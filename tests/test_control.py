"""KernelControl: the operator's actions on a running kernel, under a mock clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import trio
from trio.testing import MockClock

from kernel import (
    AnyOf,
    At,
    Clock,
    Cron,
    Every,
    JobState,
    Kernel,
    KernelControl,
    Manifest,
    Plugin,
    PluginContext,
    RetryPolicy,
    Status,
)
from kernel.errors import InvalidJob, KernelNotRunning, NotFound, PluginStateError
from kernel.runtime.control import describe_trigger

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class Shop(Plugin):
    manifest = Manifest("shop")

    def __init__(self) -> None:
        self.charged: list[int] = []
        self.report_runs = 0
        self.broken = True

    async def on_enable(self, ctx: PluginContext) -> None:
        ctx.register_task("charge", self.charge, retry=RetryPolicy(max_attempts=1))
        ctx.register_task("ship", self.ship)
        ctx.schedule(self.report, Every(hours=1), name="report")

    async def charge(self, amount: int) -> None:
        if self.broken:
            raise ValueError(f"card declined for {amount}")
        self.charged.append(amount)

    async def ship(self, order: str) -> None:
        await trio.sleep(600)

    async def report(self) -> None:
        self.report_runs += 1


class Other(Plugin):
    manifest = Manifest("other", requires=("shop",))


async def test_a_dead_letter_is_listed_shown_retried_and_purged(autojump_clock: MockClock) -> None:
    shop = Shop()
    async with Kernel([shop], clock=Clock.starting_at(T0)) as kernel:
        control = KernelControl(kernel)
        job = await kernel.queue.enqueue("shop.charge", 42)
        await trio.sleep(1)
        dead = await control.jobs(state=JobState.dead)
        assert [record.id for record in dead.jobs] == [job.id]
        assert dead.next_after is None
        shown = await control.job(job.id)
        assert shown.state is JobState.dead
        assert shown.last_error is not None
        assert "card declined for 42" in shown.last_error
        assert "Traceback" in shown.last_error
        assert await control.count_jobs(JobState.dead) == 1

        shop.broken = False
        retried = await control.retry_job(job.id)
        assert (retried.state, retried.attempts) == (JobState.queued, 0)
        await trio.sleep(1)
        assert shop.charged == [42]
        with pytest.raises(InvalidJob, match="only a dead job can be retried") as raised:
            await control.retry_job(job.id)
        assert raised.value.value == "succeeded"

        shop.broken = True
        await kernel.queue.enqueue("shop.charge", 7)
        await trio.sleep(1)
        assert await control.purge_dead() == 1
        assert (await control.jobs(state=JobState.dead)).jobs == []


async def test_jobs_page_by_id_and_filter_by_task_and_queue(autojump_clock: MockClock) -> None:
    shop = Shop()
    shop.broken = False
    async with Kernel([shop], clock=Clock.starting_at(T0)) as kernel:
        control = KernelControl(kernel)
        kernel.queue.pause("shop")
        made = []
        for n in range(5):
            made.append((await kernel.queue.enqueue("shop.charge", n)).id)
            made.append((await kernel.queue.enqueue("shop.ship", f"o{n}")).id)
        first = await control.jobs(limit=4)
        assert [j.id for j in first.jobs] == sorted(made)[:4]
        assert first.next_after == first.jobs[-1].id
        rest = await control.jobs(limit=50, after_id=first.next_after)
        assert [j.id for j in rest.jobs] == sorted(made)[4:]
        assert rest.next_after is None
        charges = await control.jobs(task="shop.charge", limit=3)
        assert [j.task for j in charges.jobs] == ["shop.charge"] * 3
        more = await control.jobs(task="shop.charge", limit=3, after_id=charges.next_after)
        assert len(more.jobs) == 2
        assert more.next_after is None
        assert (await control.jobs(queue="elsewhere")).jobs == []
        assert await control.count_jobs(JobState.queued, queue="shop") == 10
        with pytest.raises(InvalidJob):
            await control.jobs(limit=0)
        with pytest.raises(InvalidJob):
            await control.jobs(after_id="bad\nid")


async def test_cancel_a_running_job_and_refuse_a_finished_one(autojump_clock: MockClock) -> None:
    async with Kernel([Shop()], clock=Clock.starting_at(T0)) as kernel:
        control = KernelControl(kernel)
        job = await kernel.queue.enqueue("shop.ship", "o1")
        await trio.sleep(1)
        assert (await control.job(job.id)).state is JobState.running
        cancelled = await control.cancel_job(job.id)
        assert cancelled.state is JobState.cancelled
        with pytest.raises(InvalidJob, match="only a queued or running job"):
            await control.cancel_job(job.id)
        with pytest.raises(NotFound, match="no job named"):
            await control.job("0" * 32)


async def test_queues_show_depth_and_pause_here(autojump_clock: MockClock) -> None:
    shop = Shop()
    shop.broken = False
    async with Kernel([shop], clock=Clock.starting_at(T0)) as kernel:
        control = KernelControl(kernel, depth_limit=3)
        control.pause_queue("shop")
        for n in range(4):
            await kernel.queue.enqueue("shop.charge", n)
        (queue,) = [q for q in await control.queues() if q["name"] == "shop"]
        assert queue["paused"] is True
        assert (queue["depth"], queue["depth_capped"]) == (3, True)
        await trio.sleep(60)
        assert shop.charged == []
        control.resume_queue("shop")
        await trio.sleep(1)
        assert sorted(shop.charged) == [0, 1, 2, 3]
        with pytest.raises(NotFound, match="no queue named 'nope'"):
            control.pause_queue("nope")


async def test_schedules_pause_resume_and_trigger_now(autojump_clock: MockClock) -> None:
    shop = Shop()
    async with Kernel([shop], clock=Clock.starting_at(T0)) as kernel:
        control = KernelControl(kernel)
        (report,) = control.schedules()
        assert report["name"] == "shop/report"
        assert report["trigger"] == "every 1h"
        assert report["next_fire_time"] == (T0 + timedelta(hours=1)).isoformat()
        assert report["last_fire_time"] is None

        triggered = control.trigger_schedule("shop/report")
        await trio.sleep(1)
        assert shop.report_runs == 1
        assert triggered["next_fire_time"] == (T0 + timedelta(hours=1)).isoformat()
        assert triggered["last_fire_time"] is not None

        paused = control.pause_schedule("shop/report")
        assert paused["paused"] is True
        await trio.sleep(3 * 3600)
        assert shop.report_runs == 1
        control.trigger_schedule("shop/report")  # an operator may run a paused one
        await trio.sleep(1)
        assert shop.report_runs == 2
        resumed = control.resume_schedule("shop/report")
        assert resumed["paused"] is False
        await trio.sleep(3600)
        assert shop.report_runs == 3
        with pytest.raises(NotFound, match="known: shop/report"):
            control.trigger_schedule("shop/nope")


async def test_plugins_disable_enable_and_restart(autojump_clock: MockClock) -> None:
    async with Kernel([Shop(), Other()], clock=Clock.starting_at(T0)) as kernel:
        control = KernelControl(kernel)
        assert [(p["name"], p["state"]) for p in control.plugins()] == [
            ("shop", "enabled"),
            ("other", "enabled"),
        ]
        assert control.plugin("other")["requires"] == ["shop"]
        assert (await control.disable_plugin("other"))["state"] == "disabled"
        assert (await control.enable_plugin("other"))["state"] == "enabled"
        restarted = await control.restart_plugin("shop")
        assert restarted["state"] == "enabled"
        assert (await kernel.storage.get("kernel", "plugin/shop"))["state"] == "enabled"  # type: ignore[index]
        await control.disable_plugin("shop")
        await control.disable_plugin("other")
        with pytest.raises(PluginStateError, match="requires shop"):
            await control.enable_plugin("other")
        with pytest.raises(NotFound, match="no plugin named 'ghost'"):
            await control.restart_plugin("ghost")


async def test_readiness_names_failed_plugins_and_a_stopped_kernel(
    autojump_clock: MockClock,
) -> None:
    class Crashing(Plugin):
        manifest = Manifest("crashing")

        async def on_enable(self, ctx: PluginContext) -> None:
            raise RuntimeError("boom")

    kernel = Kernel([Crashing()], clock=Clock.starting_at(T0))
    control = KernelControl(kernel)
    report = await control.readiness()
    assert (report.status, report.reasons) == (Status.UNHEALTHY, ("the kernel is not running",))
    with pytest.raises(KernelNotRunning):
        control.schedules()
    async with kernel:
        await trio.sleep(600)
        report = await control.readiness()
        assert report.status is Status.UNHEALTHY
        assert report.reasons[0].startswith("plugin crashing failed: crashed: RuntimeError: boom")
    async with Kernel([Shop()], clock=Clock.starting_at(T0)) as healthy:
        assert (await KernelControl(healthy).readiness()).status is Status.HEALTHY


def test_triggers_are_described_for_operators() -> None:
    assert describe_trigger(Every(minutes=5)) == "every 5m"
    assert describe_trigger(Every(seconds=90)) == "every 90s"
    assert describe_trigger(Cron("0 2 * * *", tz="Europe/Berlin")) == (
        "cron '0 2 * * *' Europe/Berlin"
    )
    assert describe_trigger(AnyOf(Every(days=1), At(T0))) == (
        f"any of (every 1d, at {T0.isoformat()})"
    )
