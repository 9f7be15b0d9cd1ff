"""Scheduled maintenance: a nightly backup, an hourly cleanup, a weekly report.

The crontab every server has, as one plugin: each job on its own schedule
(cron read in the configured time zone, so "02:00" is 02:00 where the
operator lives, DST included), and each run ends in a notification that
says whether it worked, so nobody has to read logs to know the backup ran.

Run it: ``kernel run examples/maintenance.toml``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import trio

from kernel import Cron, CronExpression, Every, Level, Manifest, Plugin, PluginContext, Trigger

__all__ = ["FakeInfrastructure", "Maintenance", "MaintenanceConfig"]


def _zone(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None


def _cron(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    CronExpression.parse(value)  # a CronSyntaxError (a ValueError) names the bad field


@attrs.frozen
class MaintenanceConfig:
    """``[plugins.NAME.config]`` of `Maintenance`; checked when the config is
    read, so a typo fails `kernel run` at once rather than at 02:00."""

    tz: str = attrs.field(default="UTC", validator=_zone)
    backup_cron: str = attrs.field(default="0 2 * * *", validator=_cron)
    cleanup_interval: timedelta = timedelta(hours=1)
    report_cron: str = attrs.field(default="0 9 * * SUN", validator=_cron)


class InfrastructureError(Exception):
    """What the fake infrastructure raises for an operation told to fail."""


class FakeInfrastructure:
    """Stands in for the database, disk and mailer the jobs would touch.
    Records the trio time of each call in ``calls``; an operation named in
    ``failing`` raises instead."""

    def __init__(self, latency: float = 30.0) -> None:
        self.latency = latency
        self.calls: list[tuple[str, float]] = []
        self.failing: set[str] = set()
        self._backups = 0

    async def _call(self, operation: str) -> None:
        self.calls.append((operation, trio.current_time()))
        await trio.sleep(self.latency)
        if operation in self.failing:
            raise InfrastructureError(f"{operation}: disk quota exceeded")

    async def backup(self) -> str:
        await self._call("backup")
        self._backups += 1
        return f"snapshot-{self._backups:04d} written (1.2 GB)"

    async def cleanup(self) -> str:
        await self._call("cleanup")
        return "removed 17 temporary files"

    async def weekly_report(self) -> str:
        await self._call("report")
        return "weekly report mailed to ops@example.com"


class Maintenance(Plugin):
    """Three maintenance jobs; see the module docstring."""

    manifest = Manifest(
        "maintenance",
        description="nightly backup, hourly cleanup, weekly report",
        permissions=["notifications"],
        config=MaintenanceConfig,
    )

    def __init__(self, infrastructure: FakeInfrastructure | None = None) -> None:
        self.infrastructure = infrastructure if infrastructure is not None else FakeInfrastructure()

    async def on_enable(self, ctx: PluginContext) -> None:
        config: MaintenanceConfig = ctx.config
        infra = self.infrastructure
        jobs: dict[str, tuple[Callable[[], Awaitable[str]], Trigger]] = {
            "backup": (infra.backup, Cron(config.backup_cron, tz=config.tz)),
            "cleanup": (infra.cleanup, Every(config.cleanup_interval)),
            "report": (infra.weekly_report, Cron(config.report_cron, tz=config.tz)),
        }
        for job, (action, trigger) in jobs.items():
            schedule = ctx.schedule(partial(self.run_job, ctx, job, action), trigger, name=job)
            when = schedule.next_fire_time
            ctx.log.info("%s: next at %s", job, when.isoformat(timespec="seconds") if when else "-")

    async def run_job(
        self, ctx: PluginContext, job: str, action: Callable[[], Awaitable[str]]
    ) -> None:
        """Run one job and say how it went; a failure is re-raised so the
        schedule's statistics and metrics count it."""
        ctx.log.info("%s: starting", job)
        try:
            outcome = await action()
        except Exception as exc:
            await ctx.notify(f"{job} failed", f"{type(exc).__name__}: {exc}", Level.error)
            raise
        ctx.log.info("%s: %s", job, outcome)
        await ctx.notify(f"{job} succeeded", outcome, Level.info)
