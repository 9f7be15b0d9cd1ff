"""The ``redis://`` bus: publish/subscribe between nodes over Redis pub/sub.

`RedisBus.publish` is one ``PUBLISH`` on ``<prefix>bus:<topic>`` with the
payload as JSON text. Each subscription holds a pub/sub connection of its
own with one ``PSUBSCRIBE``: the kernel's pattern (``*`` one segment, a
final ``#`` any number) becomes a Redis glob that matches at least the
same channels (Redis's ``*`` also crosses dots), and the exact pattern is
then checked locally (`kernel.ports.topic_matches`). Subscriptions are
bounded like `kernel.bus.local`'s: a subscriber that does not keep up
loses its oldest waiting message, and each loss is counted in
`RedisSubscription.dropped`.

**At most once, by choice.** Redis pub/sub delivers each message once to
every connection subscribed when it is published, in each publisher's
order, and keeps nothing: a subscription whose connection is down (a
server restart, a killed connection) misses what is published meanwhile.
It reconnects by itself with backoff, logging a warning when the
connection is lost and a line when it is back, and the plugin reading it
notices nothing else. Streams with consumer groups would give at least
once, at the price of acknowledgements, redelivery of duplicates that
every subscriber must tolerate, and trimming policy for streams nobody
reads: that is what the job store is for. The bus carries notices (a
cache to drop, a config that changed) where a missed one is repaired by
the next; use jobs for work that must not be lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Final

import attrs
import trio

from kernel.errors import BusClosed, BusError
from kernel.ports import (
    JSON,
    Bus,
    JSONLike,
    Message,
    copy_json,
    topic_matches,
    validate_pattern,
    validate_topic,
)
from kernel_redis._client import Client, RedisConnection, redis_error_in
from kernel_redis._records import encode_json
from kernel_redis._url import BUS_OPTIONS, RedisOptions, parse_redis_url

__all__ = ["RedisBus", "RedisSubscription", "open_bus", "pattern_glob"]

log = logging.getLogger("kernel_redis")

_RECONNECT_DELAYS: Final = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def pattern_glob(prefix: str, pattern: str) -> str:
    """The Redis glob for the channels of ``pattern``: ``a.*.c`` -> ``a.*.c``
    and ``a.#`` -> ``a*`` (both also match more, which the local check
    sorts out). Topics hold no glob characters (``[A-Za-z0-9_:-]`` and
    dots), nor does the prefix, so nothing needs escaping."""
    if pattern == "#":
        return f"{prefix}bus:*"
    if pattern.endswith(".#"):
        return f"{prefix}bus:{pattern[:-2]}*"
    return f"{prefix}bus:{pattern}"


@attrs.define(eq=False)
class RedisSubscription:
    """A live subscription: an async iterator of `Message` (see `kernel.ports.Subscription`)."""

    _pattern: str = attrs.field(alias="pattern")
    _send: trio.MemorySendChannel[Message] = attrs.field(alias="send")
    _receive: trio.MemoryReceiveChannel[Message] = attrs.field(alias="receive")
    _dropped: int = attrs.field(default=0, init=False)

    @property
    def pattern(self) -> str:
        return self._pattern

    @property
    def dropped(self) -> int:
        """Messages dropped because this subscriber did not keep up."""
        return self._dropped

    def deliver(self, message: Message) -> None:
        """Queue ``message``, dropping the oldest waiting one if full."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self._receive.receive_nowait()  # drop the oldest, as kernel.bus.local does
            self._dropped += 1
            self._send.send_nowait(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def end(self) -> None:
        """No more messages: iteration ends once the buffer is drained."""
        self._send.close()

    async def receive(self) -> Message:
        return await self._receive.receive()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


@attrs.define(eq=False)
class RedisBus:
    """`kernel.ports.Bus` over Redis pub/sub, under a key prefix. Open with
    `open_bus` (or ``await RedisBus.open(options)``); usable as ``async with``."""

    options: RedisOptions
    _redis: RedisConnection = attrs.field(alias="redis")
    _subscriptions: set[RedisSubscription] = attrs.field(factory=set, init=False)
    _readers: set[_Reader] = attrs.field(factory=set, init=False)

    @classmethod
    async def open(cls, options: RedisOptions) -> RedisBus:
        """Connect and check the server answers; `BusError` if not."""
        redis = await RedisConnection.open(
            options, what="bus", error=BusError, closed_error=BusClosed
        )
        return cls(options, redis=redis)

    async def __aenter__(self) -> RedisBus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._redis.closed else "open"
        return f"<RedisBus {self.options.where} ({state})>"

    async def publish(self, topic: str, payload: JSONLike = None) -> None:
        """``PUBLISH`` ``payload`` as JSON; never retried (a lost reply may
        mean it was delivered, and twice would break once-each)."""
        validate_topic(topic)
        text = encode_json(copy_json(payload, path="payload"))
        channel = f"{self.options.prefix}bus:{topic}"

        async def send(client: Client) -> int:
            return await client.publish(channel, text)

        await self._redis.run(send)

    def subscribe(
        self, pattern: str, *, buffer: int | None = None
    ) -> AbstractAsyncContextManager[RedisSubscription]:
        validate_pattern(pattern)
        size = self.options.buffer if buffer is None else buffer
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"buffer must be an int >= 1, got {buffer!r}")
        return self._subscribe(pattern, size)

    @asynccontextmanager
    async def _subscribe(self, pattern: str, size: int) -> AsyncIterator[RedisSubscription]:
        self._redis.check_open()
        send, receive = trio.open_memory_channel[Message](size)
        subscription = RedisSubscription(pattern=pattern, send=send, receive=receive)
        # The reader runs in a system task, not a nursery here: a nursery
        # around ``yield`` would wrap the caller's own exceptions in groups.
        reader = _Reader(self, subscription)
        trio.lowlevel.spawn_system_task(reader.run, name=f"kernel_redis bus {pattern!r}")
        await reader.started.wait()
        if reader.failure is not None:
            raise reader.failure
        self._subscriptions.add(subscription)
        self._readers.add(reader)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            self._readers.discard(reader)
            reader.scope.cancel()
            subscription.end()
            receive.close()
            with trio.CancelScope(shield=True):
                await reader.done.wait()

    @property
    def where(self) -> str:
        return self.options.where

    @property
    def closed(self) -> bool:
        return self._redis.closed

    @property
    def client(self) -> Client:
        return self._redis.client

    async def aclose(self) -> None:
        """End every subscription's iteration (after what is buffered) and
        close the client; later calls raise `BusClosed`. Idempotent."""
        for reader in self._readers:
            reader.scope.cancel()
        for subscription in self._subscriptions:
            subscription.end()
        await self._redis.close()


@attrs.define(eq=False)
class _Reader:
    """One subscription's pub/sub connection, in a system task: receives
    until cancelled, reconnecting with backoff (logged)."""

    bus: RedisBus
    subscription: RedisSubscription
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    started: trio.Event = attrs.field(factory=trio.Event)
    done: trio.Event = attrs.field(factory=trio.Event)
    failure: BaseException | None = None

    async def run(self) -> None:
        try:
            with self.scope:
                await self._receive()
        except BaseException as failure:  # a system task must not raise
            self.failure = failure
            if self.started.is_set() and not isinstance(failure, trio.Cancelled):
                log.error("bus %s: the subscriber stopped: %r", self.bus.where, failure)
        finally:
            self.subscription.end()
            self.started.set()
            self.done.set()

    async def _receive(self) -> None:
        bus, subscription = self.bus, self.subscription
        pattern = subscription.pattern
        glob = pattern_glob(bus.options.prefix, pattern)
        skip = len(bus.options.prefix) + len("bus:")
        failures = 0
        while not bus.closed:
            try:
                async with bus.client.pubsub(
                    patterns=[glob], retry_policy=None, ignore_subscribe_messages=True
                ) as pubsub:
                    if not self.started.is_set():
                        self.started.set()
                    else:
                        log.info("bus %s: subscribed to %r again", bus.where, pattern)
                    failures = 0
                    async for message in pubsub:
                        if message["type"] != "pmessage":
                            continue
                        topic = str(message["channel"])[skip:]
                        if topic_matches(pattern, topic):
                            payload: JSON = json.loads(str(message["data"]))
                            subscription.deliver(Message(topic, payload))
            except BaseException as failure:
                cause = redis_error_in(failure)
                if cause is None:
                    raise
                if not self.started.is_set():
                    raise BusError(
                        f"Redis bus {bus.where}: cannot subscribe to {pattern!r}: {cause}"
                    ) from cause
                delay = _RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning(
                    "bus %s: lost the subscription to %r (%s); again in %.2f s "
                    "(messages published meanwhile are not received)",
                    bus.where,
                    pattern,
                    cause,
                    delay,
                )
                await trio.sleep(delay)


async def open_bus(url: str) -> RedisBus:
    """The ``kernel.bus`` factory for ``redis://`` and ``rediss://`` URLs
    (see `kernel_redis.parse_redis_url`; ``buffer`` is the default bound of a
    subscription). Raises `InvalidAdapterURL` or `BusError`."""
    options = parse_redis_url(url, allowed=BUS_OPTIONS)
    return await RedisBus.open(options)


if TYPE_CHECKING:

    def _keeps_the_bus_port(bus: RedisBus) -> Bus:
        return bus  # mypy proves RedisBus satisfies the Bus protocol
