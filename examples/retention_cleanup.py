"""Retention cleanup: delete expired files in batches, only during off-peak hours.

Every system that keeps logs, uploads or messages needs one (S3 lifecycle
rules, logrotate's ``maxage``, a Hangfire recurring job). Rules map a path
prefix to how many days to keep; the longest matching prefix wins and a file
no rule matches is kept. Deletes go in batches with a pause between them, so
the store is never hammered, and only inside an off-peak window (say 01:00 to
05:00 local): the cron schedule fires only in those hours, and every batch
checks the clock again, so a long run stops when the window closes and the
next night carries on.

Run it: ``kernel run examples/retention_cleanup.toml``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import trio

from kernel import Cron, Level, Manifest, Plugin, PluginContext

__all__ = ["FakeFileStore", "RetentionCleanup", "RetentionCleanupConfig", "RetentionRule"]

_hour = attrs.validators.and_(attrs.validators.ge(0), attrs.validators.le(23))


@attrs.frozen
class RetentionRule:
    """Files under ``prefix`` are kept ``keep_days`` days after their last change."""

    prefix: str
    keep_days: float = attrs.field(validator=attrs.validators.ge(0))


def _zone(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None


@attrs.frozen
class RetentionCleanupConfig:
    """``[plugins.NAME.config]`` of `RetentionCleanup`. The window is
    ``[window_start, window_end)`` in local hours and may wrap midnight."""

    rules: tuple[RetentionRule, ...] = (
        RetentionRule("logs/", 7),
        RetentionRule("tmp/", 1),
        RetentionRule("messages/", 30),
    )
    batch_size: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    batch_pause: timedelta = timedelta(seconds=1)
    window_start: int = attrs.field(default=1, validator=_hour)
    window_end: int = attrs.field(default=5, validator=_hour)
    tz: str = attrs.field(default="UTC", validator=_zone)
    check_every_minutes: int = attrs.field(default=15, validator=attrs.validators.in_(range(1, 60)))

    def __attrs_post_init__(self) -> None:
        if self.window_start == self.window_end:
            raise ValueError("the off-peak window is empty: window_start == window_end")

    def in_window(self, when: datetime) -> bool:
        hour = when.astimezone(ZoneInfo(self.tz)).hour
        if self.window_start < self.window_end:
            return self.window_start <= hour < self.window_end
        return hour >= self.window_start or hour < self.window_end

    def cron(self) -> Cron:
        """Fires every ``check_every_minutes`` inside the window only."""
        start, last = self.window_start, (self.window_end - 1) % 24
        hours = f"{start}-{last}" if start <= last else f"{start}-23,0-{last}"
        return Cron(f"*/{self.check_every_minutes} {hours} * * *", tz=self.tz)

    def expires_at(self, path: str, modified: datetime) -> datetime | None:
        matching = [rule for rule in self.rules if path.startswith(rule.prefix)]
        if not matching:
            return None
        rule = max(matching, key=lambda r: len(r.prefix))
        return modified + timedelta(days=rule.keep_days)


class FakeFileStore:
    """Stands in for an object store: paths with their modification times.
    ``batches`` records each ``delete_many`` as (trio time it was called, paths)."""

    def __init__(self, files: dict[str, datetime] | None = None, latency: float = 0.5) -> None:
        self.files = dict(files or {})
        self.latency = latency
        self.batches: list[tuple[float, list[str]]] = []

    def add_sample_files(self, now: datetime, per_prefix: int = 150) -> None:
        ages = {"logs/app": 3, "logs/old": 12, "tmp/up": 2, "messages/in": 40, "keep/me": 400}
        for prefix, days in ages.items():
            for n in range(per_prefix):
                self.files[f"{prefix}-{n}.txt"] = now - timedelta(days=days, hours=n)

    async def list_files(self) -> list[tuple[str, datetime]]:
        await trio.sleep(self.latency)
        return sorted(self.files.items())

    async def delete_many(self, paths: Iterable[str]) -> int:
        paths = list(paths)
        self.batches.append((trio.current_time(), paths))
        await trio.sleep(self.latency)
        return sum(self.files.pop(path, None) is not None for path in paths)


class RetentionCleanup(Plugin):
    """Applies the retention rules; see the module docstring."""

    manifest = Manifest(
        "retention-cleanup",
        description="deletes expired files in batches during an off-peak window",
        permissions=["storage-write", "notifications"],
        config=RetentionCleanupConfig,
    )

    def __init__(self, store: FakeFileStore | None = None) -> None:
        self.store = store if store is not None else FakeFileStore()
        self._demo = store is None  # `kernel run`: fill the store with sample files

    async def on_enable(self, ctx: PluginContext) -> None:
        config: RetentionCleanupConfig = ctx.config
        if self._demo and not self.store.files:
            self.store.add_sample_files(ctx.clock.now())
        schedule = ctx.schedule(partial(self.clean_up, ctx), config.cron(), name="cleanup")
        when = schedule.next_fire_time
        ctx.log.info(
            "%d rules over %d files; next run at %s (window %02d:00-%02d:00 %s)",
            len(config.rules),
            len(self.store.files),
            when.isoformat(timespec="seconds") if when else "-",
            config.window_start,
            config.window_end,
            config.tz,
        )

    async def clean_up(self, ctx: PluginContext) -> int:
        config: RetentionCleanupConfig = ctx.config
        if not config.in_window(ctx.clock.now()):
            ctx.log.info("outside the off-peak window; not cleaning")
            return 0
        now = ctx.clock.now()
        expired = [
            path
            for path, modified in await self.store.list_files()
            if (expiry := config.expires_at(path, modified)) is not None and expiry <= now
        ]
        deleted = 0
        for start in range(0, len(expired), config.batch_size):
            if start:
                await ctx.sleep(config.batch_pause.total_seconds())
            if not config.in_window(ctx.clock.now()):
                ctx.log.info("window closed with %d expired files left", len(expired) - start)
                break
            deleted += await self.store.delete_many(expired[start : start + config.batch_size])
        await ctx.storage.put(
            "last_run", {"at": now.isoformat(), "deleted": deleted, "expired": len(expired)}
        )
        ctx.log.info("deleted %d of %d expired files", deleted, len(expired))
        if deleted:
            await ctx.notify(
                "retention cleanup",
                f"deleted {deleted} of {len(expired)} expired files",
                Level.info,
            )
        return deleted
