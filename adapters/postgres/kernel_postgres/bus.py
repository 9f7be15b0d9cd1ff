"""The ``postgresql://`` bus: publish/subscribe between nodes over LISTEN/NOTIFY.

Every node's `PostgresBus` LISTENs on one channel per schema
(``kernel_bus:<schema>``) on a connection of its own; `PostgresBus.publish`
is one ``pg_notify`` on a pooled connection; patterns are matched locally
(`kernel.ports.topic_matches`), so PostgreSQL never needs to know them.
Subscriptions are bounded like `kernel.bus.local`'s: a subscriber that does
not keep up loses its oldest waiting message, and each loss is counted in
`PostgresSubscription.dropped`.

**What is guaranteed.** Every node listening when a message is committed
receives it once, and messages of one publisher arrive in the order it
published them (PostgreSQL delivers notifications in commit order). A
subscription receives every message published after its ``async with`` was
entered: entering sends a marker through the channel and waits for it to
come back, so everything committed earlier has been passed over by then.
Delivery is at most once: a message published while a node's listening
connection is down (it is reopened with backoff) is lost for that node.
Use the job store, not the bus, for work that must not be lost.

**Size.** A notification's payload must be shorter than 8000 bytes. A
larger message is split into chunks sent in one transaction (so they reach
every listener together, in order) and joined on arrival, up to
``max_message`` bytes of JSON (1 MiB by default; `MessageTooLarge` beyond).

Wire format of a payload: ``m<topic> <json>`` (a message), ``c<id>:<i>:<n>:<part>``
(chunk ``i`` of ``n`` of a message), ``b<token>`` (a subscriber's marker).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Final, Literal, cast

import attrs
import trio

from kernel.errors import BusClosed, BusError
from kernel.ports import (
    JSON,
    Bus,
    JSONLike,
    Message,
    copy_json,
    segments_match,
    validate_pattern,
    validate_topic,
)
from kernel_postgres._listen import listen
from kernel_postgres._pool import Connection, Database
from kernel_postgres._url import BUS_OPTIONS, PostgresOptions, channel_name, parse_postgres_url

__all__ = ["BUS_CHANNEL", "MessageTooLarge", "PostgresBus", "PostgresSubscription", "open_bus"]

log = logging.getLogger("kernel_postgres")

BUS_CHANNEL: Final = "kernel_bus"

NOTIFY_MAX_BYTES: Final = 7999
"""PostgreSQL refuses a payload of 8000 bytes or more."""
_CHUNK_HEADER_MAX: Final = 48
_MAX_PARTIALS: Final = 256
"""Messages being joined at once; more means chunks were lost (a reconnect)."""

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class MessageTooLarge(BusError, ValueError):
    """A message whose JSON is larger than the bus's ``max_message``; nothing was sent.

    Carries the ``topic``, the ``size`` and the ``limit`` (UTF-8 bytes).
    """

    def __init__(self, topic: str, size: int, limit: int) -> None:
        self.topic = topic
        self.size = size
        self.limit = limit
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"message on {self.topic!r} is {self.size} bytes of JSON, more than the bus "
            f"allows ({self.limit}; raise ?max_message= on the URL, or publish a reference "
            "to data kept in storage)"
        )


def _split(body: str, budget: int) -> list[str]:
    """``body`` in pieces of at most ``budget`` UTF-8 bytes, cut between characters."""
    data = body.encode()
    pieces: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + budget, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1  # not inside a character
        pieces.append(data[start:end].decode())
        start = end
    return pieces


def _notify_one(channel: str, payload: str) -> Callable[[Connection], None]:
    def work(connection: Connection) -> None:
        connection.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    return work


def _notify_many(channel: str, payloads: list[str]) -> Callable[[Connection], None]:
    def work(connection: Connection) -> None:
        connection.execute(
            "SELECT pg_notify(%s, part) FROM unnest(%s::text[]) WITH ORDINALITY AS p (part, i) "
            "ORDER BY i",
            (channel, payloads),
        )

    return work


@attrs.define(eq=False)
class PostgresSubscription:
    """One subscription to a `PostgresBus`, live inside ``async with``
    (`kernel.ports.Subscription`)."""

    _bus: PostgresBus = attrs.field(on_setattr=attrs.setters.frozen)
    pattern: str = attrs.field(on_setattr=attrs.setters.frozen)
    buffer: int = attrs.field(on_setattr=attrs.setters.frozen)
    _segments: tuple[str, ...] = attrs.field(init=False)
    _send: trio.MemorySendChannel[Message] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[Message] = attrs.field(init=False)
    _joined: trio.Event = attrs.field(factory=trio.Event, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _state: Literal["new", "active", "left"] = attrs.field(default="new", init=False)

    def __attrs_post_init__(self) -> None:
        self._segments = tuple(self.pattern.split("."))
        self._send, self._receive = trio.open_memory_channel[Message](self.buffer)

    @property
    def dropped(self) -> int:
        """Messages this subscription lost because its buffer was full."""
        return self._dropped

    async def __aenter__(self) -> PostgresSubscription:
        if self._state != "new":
            raise RuntimeError("a subscription can be entered only once; subscribe again")
        await self._bus._join(self)
        self._state = "active"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._bus._leave(self)
        self._send.close()
        self._receive.close()
        self._state = "left"

    def _matches(self, topic: list[str]) -> bool:
        return segments_match(self._segments, topic)

    def _deliver(self, message: Message) -> None:
        try:
            self._send.send_nowait(message)
            return
        except trio.WouldBlock:
            pass
        except trio.ClosedResourceError:  # pragma: no cover - left meanwhile
            return
        self._receive.receive_nowait()  # drop the oldest, as kernel.bus.local does
        self._send.send_nowait(message)
        self._dropped += 1
        self._bus._dropped += 1

    def _end(self) -> None:
        """The bus closed: iteration ends once the buffer is drained."""
        self._send.close()
        self._joined.set()

    async def receive(self) -> Message:
        """The next message; `trio.EndOfChannel` once the bus is closed and
        the buffer drained; `trio.ClosedResourceError` after leaving."""
        return await self._receive.receive()

    def __aiter__(self) -> PostgresSubscription:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class _Started:
    """The ``task_status`` of the bus's listener, which runs as a system task."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.failure: BaseException | None = None

    def started(self, value: None = None) -> None:
        self.event.set()

    def fail(self, failure: BaseException) -> None:
        self.failure = failure
        self.event.set()


@attrs.define(eq=False)
class PostgresBus:
    """A `kernel.ports.Bus` shared by every node on a PostgreSQL schema.

    Open with `open_bus`; usable as ``async with``. See the module
    docstring for what is guaranteed.
    """

    options: PostgresOptions
    _db: Database = attrs.field(init=False)
    _channel: str = attrs.field(init=False)
    _subscriptions: dict[PostgresSubscription, None] = attrs.field(factory=dict, init=False)
    _pending: dict[str, PostgresSubscription] = attrs.field(factory=dict, init=False)
    _partials: dict[str, dict[int, str]] = attrs.field(factory=dict, init=False)
    _listener: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _listener_done: trio.Event = attrs.field(factory=trio.Event, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self._channel = channel_name(BUS_CHANNEL, self.options.schema)

    @classmethod
    async def open(cls, options: PostgresOptions) -> PostgresBus:
        """Start listening, then open the publishing pool (raises `BusError`
        if the server cannot be reached)."""
        bus = cls(options)
        started = _Started()
        trio.lowlevel.spawn_system_task(bus._listen, started, name="kernel_postgres bus listener")
        await started.event.wait()
        if started.failure is not None:
            raise started.failure
        try:
            bus._db = await Database.open(
                options,
                where=f"bus {options.where}",
                error=BusError,
                closed_error=BusClosed,
                name=f"trio-kernel bus {options.schema}",
            )
        except BaseException:
            bus._listener.cancel()
            with trio.CancelScope(shield=True):
                await bus._listener_done.wait()
            raise
        return bus

    async def __aenter__(self) -> PostgresBus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<PostgresBus {self.options.where} ({state})>"

    @property
    def dropped(self) -> int:
        """Messages lost by all subscriptions of this node, ever."""
        return self._dropped

    @property
    def subscription_count(self) -> int:
        return len(self._subscriptions)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- publishing -----------------------------------------------------------

    async def publish(self, topic: str, payload: JSONLike = None) -> None:
        """Send ``payload`` to every subscription on every node whose
        pattern matches ``topic``; returns once the message is committed.

        Raises `InvalidTopic`, `NotJSONSerializable`, `MessageTooLarge`
        (nothing is sent), `BusClosed` or `BusError`.
        """
        validate_topic(topic)
        text = _encode(copy_json(payload, path="payload"))
        body = f"{topic} {text}"
        size = len(body.encode()) if not body.isascii() else len(body)
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise BusClosed(f"the bus {self.options.where} is closed")
        if size - len(topic) - 1 > self.options.max_message:
            raise MessageTooLarge(topic, size - len(topic) - 1, self.options.max_message)
        if size + 1 <= NOTIFY_MAX_BYTES:
            await self._db.run(_notify_one(self._channel, "m" + body))
            return
        message_id = uuid.uuid4().hex[:16]
        pieces = _split(body, NOTIFY_MAX_BYTES - _CHUNK_HEADER_MAX)
        chunks = [f"c{message_id}:{i}:{len(pieces)}:{piece}" for i, piece in enumerate(pieces)]
        await self._db.run(_notify_many(self._channel, chunks))

    # -- subscribing ------------------------------------------------------------

    def subscribe(
        self, pattern: str, *, buffer: int | None = None
    ) -> AbstractAsyncContextManager[PostgresSubscription]:
        """A subscription to ``pattern``, live inside ``async with``.

        Raises `InvalidTopic` for a bad pattern here, `BusClosed` on entering
        if the bus is closed by then.
        """
        validate_pattern(pattern)
        if buffer is None:
            buffer = self.options.buffer
        elif isinstance(buffer, bool) or not isinstance(buffer, int):
            raise TypeError(f"buffer must be an int, not {type(buffer).__name__}")
        elif buffer < 1:
            raise ValueError(f"buffer must be at least 1, not {buffer}")
        return PostgresSubscription(self, pattern, buffer)

    async def _join(self, subscription: PostgresSubscription) -> None:
        """Register ``subscription`` at the point of the stream where its
        marker comes back: it then receives exactly what was committed after."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise BusClosed(f"the bus {self.options.where} is closed")
        token = uuid.uuid4().hex
        self._pending[token] = subscription
        try:
            await self._db.run(_notify_one(self._channel, "b" + token))
            await subscription._joined.wait()
        finally:
            self._pending.pop(token, None)
        if self._closed:
            raise BusClosed(f"the bus {self.options.where} is closed")

    def _leave(self, subscription: PostgresSubscription) -> None:
        self._subscriptions.pop(subscription, None)

    # -- receiving (the listener task) ------------------------------------------

    async def _listen(self, started: _Started) -> None:
        """The system task that owns the listening connection."""
        try:
            with self._listener:
                await listen(
                    self.options,
                    [self._channel],
                    self._dispatch,
                    on_reconnect=self._caught_up,
                    error=BusError,
                    task_status=started,
                )
        except Exception as failure:
            if not started.event.is_set():
                started.fail(failure)
            else:  # pragma: no cover - listen raises only before it starts
                log.exception("the bus listener of %s failed", self.options.where)
        finally:
            self._listener_done.set()

    async def _caught_up(self) -> None:
        """Listening again after a lost connection: what was in flight is lost."""
        self._partials.clear()
        for subscription in list(self._pending.values()):
            self._activate(subscription)
        await trio.lowlevel.checkpoint()

    def _activate(self, subscription: PostgresSubscription) -> None:
        if not subscription._joined.is_set():
            self._subscriptions[subscription] = None
            subscription._joined.set()

    def _dispatch(self, batch: list[tuple[str, str]]) -> None:
        for channel, payload in batch:
            if channel != self._channel or not payload:
                continue
            kind, rest = payload[0], payload[1:]
            try:
                if kind == "m":
                    self._deliver(rest)
                elif kind == "c":
                    self._join_chunk(rest)
                elif kind == "b":
                    subscription = self._pending.get(rest)
                    if subscription is not None:
                        self._activate(subscription)
            except (ValueError, LookupError) as error:
                log.warning("bus %s: dropped a malformed notification: %s", self._channel, error)

    def _join_chunk(self, text: str) -> None:
        message_id, index, count, piece = text.split(":", 3)
        parts = self._partials.get(message_id)
        if parts is None:
            if len(self._partials) >= _MAX_PARTIALS:
                del self._partials[next(iter(self._partials))]
            parts = self._partials[message_id] = {}
        parts[int(index)] = piece
        if len(parts) == int(count):
            del self._partials[message_id]
            self._deliver("".join(parts[i] for i in range(len(parts))))

    def _deliver(self, body: str) -> None:
        topic, _, text = body.partition(" ")
        segments = topic.split(".")
        matched = [sub for sub in self._subscriptions if sub._matches(segments)]
        for sub in matched:
            # Each subscriber decodes its own copy: nothing it changes reaches another.
            sub._deliver(Message(topic, cast("JSON", json.loads(text))))

    # -- closing ----------------------------------------------------------------

    async def aclose(self) -> None:
        """End every subscription's iteration (after what it has buffered),
        stop listening and close the pool; later `publish` and `subscribe`
        raise `BusClosed`. Idempotent."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._listener.cancel()
        for subscription in self._subscriptions:
            subscription._end()
        self._subscriptions.clear()
        for subscription in self._pending.values():
            subscription._end()
        with trio.CancelScope(shield=True):
            await self._listener_done.wait()
            await self._db.close()


async def open_bus(url: str) -> PostgresBus:
    """The ``kernel.bus`` factory for ``postgresql://`` URLs. Options:
    ``schema`` (whose channel to use; default ``public``), ``pool_size``
    (publishing connections, default 10), ``buffer`` (per subscription,
    default 1024) and ``max_message`` (bytes of JSON, default 1 MiB).
    Raises `InvalidAdapterURL` or `BusError`."""
    options = parse_postgres_url(url, allowed=BUS_OPTIONS)
    return await PostgresBus.open(options)


if TYPE_CHECKING:

    def _keeps_the_port(bus: PostgresBus) -> Bus:
        return bus  # mypy proves PostgresBus satisfies the Bus protocol
