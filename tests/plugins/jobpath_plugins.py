"""Plugins the job-path tests run in real `kernel run` processes. Each writes
what it does, one line at a time, to the file its config names, so the test
can read the runs of several processes after they end."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import attrs
import trio

from kernel import Every, Manifest, Plugin, PluginContext


@attrs.frozen
class LogConfig:
    log: Path
    every: timedelta = timedelta(seconds=2)
    seconds: float = 0.0  # how long one run takes


def write(path: Path, *words: object) -> None:
    """One line, appended atomically enough for a few processes (O_APPEND)."""
    line = " ".join(str(word) for word in (os.getpid(), time.time(), *words)) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class SlowStart(Plugin):
    """Reads its storage and waits a moment before it registers its task,
    as a plugin that connects to something first does."""

    manifest = Manifest(
        "slowstart", permissions=["storage-read", "storage-write"], config=LogConfig
    )

    async def on_enable(self, ctx: PluginContext) -> None:
        await ctx.storage.get("cursor")
        await trio.sleep(0.5)
        log = ctx.config.log

        async def work(label: str) -> None:
            write(log, "work", label)

        ctx.register_task("work", work)


class Sync(Plugin):
    """A schedule every ``every``; each run logs its start and end."""

    manifest = Manifest("sync", config=LogConfig)

    async def on_enable(self, ctx: PluginContext) -> None:
        config = ctx.config

        async def sync() -> None:
            write(config.log, "start")
            await trio.sleep(config.seconds)
            write(config.log, "end")

        ctx.schedule(sync, Every(config.every), name="sync")


class Blocker(Plugin):
    """A task whose runs block the event loop with ``time.sleep`` (the
    defect a watchdog names), logging when each run starts and ends."""

    manifest = Manifest("blocker", config=LogConfig)

    async def on_enable(self, ctx: PluginContext) -> None:
        config = ctx.config

        def block(label: str) -> None:
            write(config.log, "start", label)
            time.sleep(config.seconds)
            write(config.log, "end", label)

        ctx.register_task("block", block)


class Idle(Plugin):
    manifest = Manifest("idle")
