"""Activity events: react to bus messages, keep per-user counters, summarise.

The event-driven half of a typical backend: no schedule decides when work
happens, messages do. ``user.activity`` (a login, a page view) and
``data.changed`` (from `examples.data_sync`, say) each bump the user's
counters, kept in the plugin's storage so they survive restarts; every
``summary_interval`` an ``activity.summary`` message says what happened
since the previous one. A malformed message is logged and dropped: a
handler that raised would crash (and restart) the whole plugin.

Run it: ``kernel run examples/activity_events.toml``.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from functools import partial

import attrs

from kernel import Every, Manifest, Message, Plugin, PluginContext
from kernel.ports import JSONLike

__all__ = ["ActivityEvents", "ActivityEventsConfig"]

#: The counter each subscribed topic bumps.
COUNTED = {"user.activity": "activity", "data.changed": "changes"}


@attrs.frozen
class ActivityEventsConfig:
    """``[plugins.NAME.config]`` of `ActivityEvents`."""

    summary_interval: timedelta = timedelta(hours=1)
    #: How many of the most active users a summary names.
    top: int = attrs.field(default=3, validator=attrs.validators.ge(0))


class ActivityEvents(Plugin):
    """Counts activity per user; see the module docstring."""

    manifest = Manifest(
        "activity-events",
        description="per-user activity counters and a periodic summary",
        permissions=["storage-read", "storage-write", "bus-subscribe", "bus-publish"],
        config=ActivityEventsConfig,
    )

    def __init__(self) -> None:
        self.since_summary: Counter[str] = Counter()

    async def on_enable(self, ctx: PluginContext) -> None:
        config: ActivityEventsConfig = ctx.config
        self.since_summary = Counter()
        for topic in COUNTED:
            await ctx.subscribe(topic, partial(self.count, ctx))
        ctx.schedule(
            partial(self.publish_summary, ctx), Every(config.summary_interval), name="summary"
        )
        ctx.log.info(
            "counting %s per user; a summary every %gs",
            " and ".join(COUNTED),
            config.summary_interval.total_seconds(),
        )

    async def count(self, ctx: PluginContext, message: Message) -> None:
        payload = message.payload
        user = payload.get("user") if isinstance(payload, dict) else None
        if not isinstance(user, str) or not user:
            ctx.log.warning("%s without a user, dropped: %r", message.topic, payload)
            return
        field = COUNTED[message.topic]
        key = f"user/{user}"
        stored = await ctx.storage.get(key, {})
        counters = dict(stored) if isinstance(stored, dict) else {}
        previous = counters.get(field)
        counters[field] = (previous if isinstance(previous, int) else 0) + 1
        await ctx.storage.put(key, counters)
        self.since_summary[user] += 1

    async def publish_summary(self, ctx: PluginContext) -> None:
        config: ActivityEventsConfig = ctx.config
        recent, self.since_summary = self.since_summary, Counter()
        users = await ctx.storage.items("user/")
        totals: Counter[str] = Counter()
        for _, counters in users:
            if isinstance(counters, dict):
                totals.update({k: v for k, v in counters.items() if isinstance(v, int)})
        events = sum(recent.values())
        summary: dict[str, JSONLike] = {
            "events": events,
            "active_users": len(recent),
            "top": [[user, n] for user, n in recent.most_common(config.top)],
            "known_users": len(users),
            "totals": dict(totals),
        }
        await ctx.publish("activity.summary", summary)
        ctx.log.info("summary: %d events from %d users", events, len(recent))
