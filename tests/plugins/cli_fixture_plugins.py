"""Plugins the CLI tests run in a real `kernel run` process."""

from __future__ import annotations

from datetime import timedelta

import attrs

from kernel import Every, Manifest, Plugin, PluginContext, RestartIntensity


@attrs.frozen
class TickerConfig:
    every: timedelta = timedelta(milliseconds=50)


class Ticker(Plugin):
    manifest = Manifest(
        "ticker",
        version="1.2.3",
        description="Ticks on a schedule (a CLI test fixture).",
        permissions=["storage-write"],
        config=TickerConfig,
    )

    async def on_enable(self, ctx: PluginContext) -> None:
        ctx.schedule(self.tick, Every(ctx.config.every), name="tick")

    async def tick(self) -> None:
        pass


class NotAPlugin:
    pass


class Crasher(Plugin):
    """Crashes at every start: one restart, then it is given up on."""

    manifest = Manifest(
        "crasher",
        intensity=RestartIntensity(max_restarts=1, period=60, backoff_initial=0.05),
    )

    async def on_enable(self, ctx: PluginContext) -> None:
        raise RuntimeError("cannot start: the disk is full")
