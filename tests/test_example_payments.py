"""The payments example: durable charges with retries, a breaker and dedup,
and a daily settlement, under trio's MockClock."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import trio
from trio.testing import MockClock

from examples.payments import FakePaymentProvider, Payments, PaymentsConfig
from kernel import Kernel, PluginSpec
from kernel.jobs.record import JobState
from kernel.storage.memory import MemoryJobStore
from kernel.time.clock import Clock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def spec(provider: FakePaymentProvider, **config: object) -> PluginSpec:
    settings = PaymentsConfig(demo_orders_every=timedelta(0), **config)  # type: ignore[arg-type]
    return PluginSpec(Payments(provider), config=settings)


async def place(kernel: Kernel, *orders: str) -> None:
    for order in orders:
        await kernel.bus.publish("order.placed", {"id": order, "cents": 500})


async def test_every_order_is_charged_once_despite_failures(autojump_clock: MockClock) -> None:
    provider = FakePaymentProvider(failure_rate=0.3, seed=3)
    jobs = MemoryJobStore()
    async with Kernel([spec(provider)], jobs=jobs, clock=Clock.starting_at(T0)) as kernel:
        provider.down = True  # the charges stay pending for a moment
        await place(kernel, *(f"o-{n}" for n in range(50)))
        await place(kernel, "o-7", "o-8")  # delivered twice while pending: deduplicated
        await trio.sleep(1)
        provider.down = False
        await trio.sleep(600)
    assert sorted(provider.charged) == sorted(f"o-{n}" for n in range(50))
    done = await jobs.list_jobs(state=JobState.succeeded, limit=100)
    assert sorted(job.args[0] for job in done) == sorted(f"o-{n}" for n in range(50))
    assert max(job.attempts for job in done) > 1  # some needed their retries
    assert await jobs.list_jobs(state=JobState.dead) == []


async def test_an_outage_opens_the_breaker_and_jobs_wait(autojump_clock: MockClock) -> None:
    provider = FakePaymentProvider(failure_rate=0.0)
    jobs = MemoryJobStore()
    async with Kernel([spec(provider)], jobs=jobs, clock=Clock.starting_at(T0)) as kernel:
        provider.down = True
        await place(kernel, *(f"o-{n}" for n in range(20)))
        await trio.sleep(120)  # two minutes down
        calls_while_down = provider.calls
        breaker = kernel.queue.tasks["payments.charge"].breaker
        assert breaker is not None
        assert breaker.transitions >= 1  # it opened
        provider.down = False
        await trio.sleep(5 * 60)
    # 5 attempts each, backoff 2+4+8+16 s: without the breaker all 20 jobs
    # would have made 100 calls and be dead within the first minute
    assert calls_while_down < 50
    assert len(provider.charged) == 20
    assert await jobs.list_jobs(state=JobState.dead) == []


async def test_a_charge_that_never_works_ends_in_the_dead_letters(
    autojump_clock: MockClock,
) -> None:
    provider = FakePaymentProvider(failure_rate=0.0)
    jobs = MemoryJobStore()

    async def refuse(key: str, cents: int) -> None:
        raise ValueError("card declined")  # not a ProviderDown: not retried

    provider.charge = refuse  # type: ignore[method-assign]
    async with Kernel([spec(provider)], jobs=jobs, clock=Clock.starting_at(T0)) as kernel:
        await place(kernel, "o-1")
        await trio.sleep(60)
    (dead,) = await jobs.list_jobs(state=JobState.dead)
    assert dead.attempts == 1
    assert dead.last_error is not None
    assert "ValueError: card declined" in dead.last_error


async def test_the_settlement_runs_daily_and_after_downtime(autojump_clock: MockClock) -> None:
    provider = FakePaymentProvider(failure_rate=0.0)
    jobs = MemoryJobStore()
    clock = Clock.starting_at(T0)
    plugin = spec(provider)
    async with Kernel([plugin], jobs=jobs, clock=clock) as kernel:
        await place(kernel, "o-1")
        await trio.sleep(2 * 24 * 3600)  # settles at 23:30 on Jan 1 and Jan 2
    payments = plugin.plugin
    assert isinstance(payments, Payments)
    assert payments.settlements == [500, 500]
    await trio.sleep(24 * 3600)  # down over the Jan 3 settlement (23:30)
    async with Kernel([plugin], jobs=jobs, clock=clock):
        await trio.sleep(60)  # RunOnce: the missed settlement runs at start
    assert payments.settlements == [500, 500, 500]


async def test_the_demo_logs_what_it_does_and_a_dead_letter_comes_within_seconds(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """What the README walks through: `kernel run examples/payments.toml`
    (the demo provider and feed), a declined card in the dead letters within
    a few seconds, put back (as `kernel jobs retry` does) and charged by the
    next run."""
    caplog.set_level(logging.INFO, logger="kernel.plugin.payments")
    jobs = MemoryJobStore()
    config = PaymentsConfig(demo_orders_every=timedelta(seconds=1))
    async with Kernel(
        [PluginSpec(Payments(), config=config)], jobs=jobs, clock=Clock.starting_at(T0)
    ):
        await trio.sleep(5)
    (dead,) = await jobs.list_jobs(state=JobState.dead)
    assert dead.last_error is not None
    assert "CardDeclined: card declined" in dead.last_error
    order = dead.args[0]
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("charging orders with up to 5 attempts") for line in lines)
    assert (
        f"order {order}: card declined: insufficient funds; the job goes to the dead letters"
        in lines
    )
    assert sum(" queued as job " in line for line in lines) >= 4
    assert sum(line.endswith(": charged 19.99") for line in lines) >= 2

    caplog.clear()
    fixed = FakePaymentProvider(failure_rate=0.0)  # the customer has fixed the card
    clock = Clock.starting_at(T0)
    async with Kernel([PluginSpec(Payments(fixed), config=config)], jobs=jobs, clock=clock):
        # what `kernel jobs retry` does, here while the next run goes
        assert await jobs.retry_dead(dead.id, now=clock.now()) is not None
        await trio.sleep(2)  # the queue wakes at the next order and claims it
    after = await jobs.get_job(dead.id)
    assert after is not None
    assert after.state is JobState.succeeded, after.last_error
    assert f"order {order}: charged 19.99" in [record.getMessage() for record in caplog.records]
