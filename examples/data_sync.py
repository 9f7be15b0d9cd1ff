"""Data sync: pull changed records from a remote API on an interval.

The shape of every "sync from the CRM / the shop / the ERP" job: a change
feed read from a cursor in batches, the cursor kept in the plugin's own
storage so that a restart resumes where the last run stopped, and one
``data.changed`` message per changed record for whoever cares. A run that
is still going when the next slot comes (a slow remote) makes that slot be
skipped, not stacked (``SkipIfRunning``, Celery beat's and cron's
``flock`` idiom).

Run it: ``kernel run examples/data_sync.toml``.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

import attrs
import trio

from kernel import Every, Manifest, Plugin, PluginContext, Schedule, SkipIfRunning

__all__ = ["DataSync", "DataSyncConfig", "FakeRemoteAPI"]


@attrs.frozen
class DataSyncConfig:
    """``[plugins.NAME.config]`` of `DataSync`."""

    interval: timedelta = timedelta(minutes=1)
    batch_size: int = attrs.field(default=100, validator=attrs.validators.ge(1))


class FakeRemoteAPI:
    """Stands in for a remote system with a change feed: every change gets
    the next sequence number, and ``changes_since(cursor)`` answers the
    records changed after it, oldest first, after ``latency`` seconds."""

    def __init__(self, latency: float = 0.2) -> None:
        self.latency = latency
        self.records: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._sequence = 0

    @classmethod
    def with_sample_data(cls) -> FakeRemoteAPI:
        api = cls()
        for n in range(250):
            api.change(f"order-{n}", user=("alice", "bob", "carol")[n % 3], total=n * 10)
        return api

    def change(self, record_id: str, **fields: Any) -> None:
        self._sequence += 1
        self.records[record_id] = {"id": record_id, "seq": self._sequence, **fields}

    async def changes_since(self, cursor: int, limit: int) -> list[dict[str, Any]]:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.latency)
            changed = sorted(
                (r for r in self.records.values() if r["seq"] > cursor), key=lambda r: r["seq"]
            )
            return [dict(record) for record in changed[:limit]]
        finally:
            self.in_flight -= 1


class DataSync(Plugin):
    """Syncs changed records every ``interval``; see the module docstring."""

    manifest = Manifest(
        "data-sync",
        description="pulls changed records from a remote API and announces them",
        permissions=["storage-read", "storage-write", "bus-publish"],
        config=DataSyncConfig,
    )

    def __init__(self, remote: FakeRemoteAPI | None = None) -> None:
        self.remote = remote if remote is not None else FakeRemoteAPI.with_sample_data()
        self.schedule: Schedule | None = None

    async def on_enable(self, ctx: PluginContext) -> None:
        config: DataSyncConfig = ctx.config
        self.schedule = ctx.schedule(
            partial(self.sync_once, ctx),
            Every(config.interval),
            name="sync",
            overlap=SkipIfRunning(),
        )
        ctx.log.info(
            "syncing every %gs, %d records a batch; first run at %s",
            config.interval.total_seconds(),
            config.batch_size,
            self.schedule.next_fire_time.isoformat(timespec="seconds")
            if self.schedule.next_fire_time
            else "-",
        )

    async def sync_once(self, ctx: PluginContext) -> int:
        """One run: read batches from the stored cursor until the feed is
        drained; the cursor is saved after each batch, so a crash mid-run
        repeats at most one batch (at-least-once)."""
        config: DataSyncConfig = ctx.config
        cursor = await ctx.storage.get("cursor", 0)
        assert isinstance(cursor, int)
        synced = 0
        while True:
            batch = await self.remote.changes_since(cursor, config.batch_size)
            for record in batch:
                await ctx.publish(
                    "data.changed",
                    {"id": record["id"], "seq": record["seq"], "user": record.get("user")},
                )
            if batch:
                cursor = batch[-1]["seq"]
                await ctx.storage.put("cursor", cursor)
                synced += len(batch)
            if len(batch) < config.batch_size:
                break
        if synced:
            ctx.log.info("synced %d changed records, cursor now %d", synced, cursor)
        else:
            ctx.log.info("no changes since cursor %d", cursor)
        return synced
