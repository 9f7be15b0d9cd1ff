"""What the HTTP contrib's tests share: a small shop plugin, the token, a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import trio

from kernel import Clock, Every, Kernel, Manifest, Plugin, PluginContext, RetryPolicy
from kernel_http import create_app

T0 = datetime(2026, 3, 1, tzinfo=UTC)
TOKEN = "test-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Shop(Plugin):
    """Charges (which fail while ``broken``: a dead letter at once), slow
    shipments and an hourly report."""

    manifest = Manifest("shop")

    def __init__(self) -> None:
        self.broken = True
        self.charged: list[int] = []
        self.reports = 0

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
        self.reports += 1


def shop_kernel(shop: Shop | None = None) -> Kernel:
    return Kernel([shop or Shop()], clock=Clock.starting_at(T0))


@asynccontextmanager
async def asgi_client(
    kernel: Kernel, *, token: str | None = TOKEN, open_reads: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app in this trio run (no socket: mock clocks work)."""
    app = create_app(kernel, token=token, open_reads=open_reads)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kernel.test") as client:
        yield client
