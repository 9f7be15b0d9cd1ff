"""What the HTTP contrib's tests share: a small shop plugin, the token, a client."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import trio

from kernel import Clock, Every, Kernel, Manifest, Plugin, PluginContext, PluginSpec, RetryPolicy
from kernel_http import HttpConfig, create_app, serve_http

T = TypeVar("T")

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


class BackgroundKernel:
    """A kernel and its HTTP server in a trio run on a thread of its own, for
    clients that block (Selenium, schemathesis): `call` runs a coroutine
    function in that run and returns its result."""

    def __init__(self, plugins: list[PluginSpec]) -> None:
        self.plugins = plugins
        self.url = ""
        self.kernel: Kernel | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), name="kernel")

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        config = HttpConfig(listen="127.0.0.1:0", token=TOKEN)
        async with Kernel(self.plugins) as kernel, serve_http(kernel, config) as server:
            self.kernel, self.url = kernel, server.url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> BackgroundKernel:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the kernel did not start within 30 s")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._stop is not None and self._token is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)

    def call(self, func: Callable[[], Awaitable[T]]) -> T:
        assert self._token is not None
        return trio.from_thread.run(func, trio_token=self._token)
