"""Payments: durable jobs with retries, a circuit breaker and a nightly settlement.

The shape of most background work that must not be lost: an event says an
order was placed; the service enqueues a ``charge`` job (stored, so a
restart or a crash does not lose it), which calls a payment provider that
fails now and then. Failures are retried with exponential backoff; when the
provider is down altogether a circuit breaker opens, and jobs wait for it
instead of burning their attempts; a charge that keeps failing ends in the
dead letters (``kernel jobs dead``) with its traceback, and so does a card
the provider declines (not worth retrying by itself: an operator puts it
back with ``kernel jobs retry`` once the customer has fixed it). Each charge carries a
dedup key, so an event delivered twice while its charge is pending enqueues
one job; the provider's idempotency key (the order id) makes a later
duplicate harmless. At 23:30 a scheduled
``settle`` run totals the day; on durable storage a settlement missed while
the service was down runs at the next start (``misfire=RunOnce()``).

Run it: ``kernel run examples/payments.toml --stop-after 10s``, then
``kernel jobs dead --config examples/payments.toml`` (the README walks
through a dead letter and its retry). Every order, charge, failure and
settlement is one info line.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

import attrs

from kernel import (
    CircuitBreaker,
    Cron,
    Manifest,
    Message,
    Permission,
    Plugin,
    PluginContext,
    RetryPolicy,
    RunOnce,
)

__all__ = [
    "CardDeclined",
    "FakePaymentProvider",
    "Payments",
    "PaymentsConfig",
    "ProviderDown",
]


DEMO_SEED = 11
"""The demo provider's seed: its first call succeeds, its third declines."""


class ProviderDown(ConnectionError):
    """The payment provider did not answer."""


class CardDeclined(Exception):
    """The provider answered: no. Retrying at once would not help."""


class FakePaymentProvider:
    """Stands in for Stripe or Adyen: charges are idempotent by key, a
    fraction of calls fail (``failure_rate``), or all of them while ``down``,
    and a fraction of cards are declined (``decline_rate``)."""

    def __init__(self, failure_rate: float = 0.2, seed: int = 1, decline_rate: float = 0.0) -> None:
        self.failure_rate = failure_rate
        self.decline_rate = decline_rate
        self.down = False
        self.charged: dict[str, int] = {}  # idempotency key -> cents
        self.calls = 0
        self._rng = random.Random(seed)

    async def charge(self, key: str, cents: int) -> None:
        self.calls += 1
        if self.down:
            raise ProviderDown("payment provider timed out")
        draw = self._rng.random()
        if draw < self.failure_rate:
            raise ProviderDown("payment provider timed out")
        if draw >= 1 - self.decline_rate:
            raise CardDeclined("card declined: insufficient funds")
        self.charged.setdefault(key, cents)


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


@attrs.frozen
class PaymentsConfig:
    """``[plugins.NAME.config]`` of `Payments`."""

    max_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    first_retry: timedelta = timedelta(seconds=2)
    #: The breaker opens when at least half of the calls in this window failed.
    breaker_window: timedelta = timedelta(seconds=30)
    breaker_open_for: timedelta = timedelta(seconds=20)
    settle_at: str = "30 23 * * *"
    tz: str = "UTC"
    #: Publish an ``order.placed`` event every this often (a demo feed; 0: off).
    demo_orders_every: timedelta = timedelta(seconds=1)


class Payments(Plugin):
    manifest = Manifest(
        "payments",
        version="1.0.0",
        permissions=frozenset({Permission.BUS_PUBLISH, Permission.BUS_SUBSCRIBE}),
        config=PaymentsConfig,
    )

    def __init__(self, provider: FakePaymentProvider | None = None) -> None:
        # the demo's provider (`kernel run`) declines one card in ten; the
        # seed makes the first one come within seconds
        self.provider = provider or FakePaymentProvider(seed=DEMO_SEED, decline_rate=0.1)
        self.settlements: list[int] = []
        self._orders = 0
        self._log = logging.getLogger("kernel.plugin.payments")

    async def on_enable(self, ctx: PluginContext) -> None:
        config: PaymentsConfig = ctx.config
        breaker = CircuitBreaker(
            "payment-provider",
            failure_rate=0.5,
            minimum_calls=5,
            half_open_probes=1,  # one charge at a time tests a recovering provider
            window=config.breaker_window,
            open_for=config.breaker_open_for,
            clock=ctx.clock.monotonic,
            on_transition=lambda name, old, new: ctx.log.info(
                "circuit breaker %s: %s -> %s", name, old.value, new.value
            ),
        )
        self._log = ctx.log
        ctx.register_task(
            "charge",
            self.charge,
            retry=RetryPolicy(
                max_attempts=config.max_attempts,
                initial=config.first_retry,
                retry_on=(ProviderDown,),
            ),
            timeout=30,
            breaker=breaker,
        )
        settle = ctx.schedule(self.settle, Cron(config.settle_at, tz=config.tz), misfire=RunOnce())
        await ctx.subscribe("order.placed", lambda message: self.on_order(ctx, message))
        if config.demo_orders_every > timedelta(0):
            ctx.start_task(self.demo_feed, ctx, config.demo_orders_every)
        when = settle.next_fire_time
        ctx.log.info(
            "charging orders with up to %d attempts; next settlement at %s",
            config.max_attempts,
            when.isoformat(timespec="seconds") if when else "-",
        )

    async def on_order(self, ctx: PluginContext, message: Message) -> None:
        order: Any = message.payload
        job = await ctx.enqueue(
            "charge", order["id"], order["cents"], dedup_key=f"charge:{order['id']}"
        )
        ctx.log.info(
            "order %s: charge of %s queued as job %s", order["id"], money(order["cents"]), job.id
        )

    async def charge(self, order_id: str, cents: int) -> None:
        try:
            await self.provider.charge(order_id, cents)
        except ProviderDown as error:
            self._log.info("order %s: %s (retried while attempts remain)", order_id, error)
            raise
        except CardDeclined as error:
            self._log.warning("order %s: %s; the job goes to the dead letters", order_id, error)
            raise
        self._log.info("order %s: charged %s", order_id, money(cents))

    def settle(self) -> None:
        total = sum(self.provider.charged.values())
        self.settlements.append(total)
        self._log.info("settled %d charges, %s in all", len(self.provider.charged), money(total))

    async def demo_feed(self, ctx: PluginContext, every: timedelta) -> None:
        while True:
            await ctx.sleep(every.total_seconds())
            self._orders += 1
            await ctx.publish("order.placed", {"id": f"o-{self._orders}", "cents": 1999})
