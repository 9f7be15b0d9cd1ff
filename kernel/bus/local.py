"""The ``local://`` bus: publish/subscribe inside one process on trio memory channels.

Each subscription owns a bounded memory channel. `LocalBus.publish` never
waits: it hands the message to every matching subscription with
``send_nowait`` and returns, so one slow subscriber can neither block the
publisher nor hold up the others. When a subscription's buffer is full the
overflow policy decides what is lost:

- `Overflow.drop_oldest` (the default) discards the oldest waiting message
  to make room. The subscriber then sees the most recent messages, which is
  what the kernel's own topics need (a health change, "data changed": the
  latest one is what matters), and what it reads stays a contiguous run of
  the stream. MQTT's and ZeroMQ's "conflate" options make the same choice.
- `Overflow.drop_newest` keeps what is waiting and discards the new message,
  as a NATS "slow consumer" or a ZeroMQ PUB socket past its high-water mark
  does: the subscriber sees an early, contiguous run instead.

Blocking the publisher is not offered: with several subscribers it would
let the slowest one stall the whole kernel. Every drop is counted on the
subscription (`LocalSubscription.dropped`), on the bus (`LocalBus.dropped`)
and reported to an optional ``on_drop`` callback, the hook for metrics.

Delivery is synchronous inside `publish`, so every subscriber sees all
messages in one total order (stronger than the per-publisher order the
`kernel.ports.Bus` contract asks for). Each subscriber gets its own copy of
the payload: a plugin that mutates what it received cannot change what
another plugin sees. Matching is a linear scan over the subscriptions with
their patterns split once; a kernel has tens of subscriptions, not
thousands (a topic trie, as in RabbitMQ, would be the next step).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, cast

import attrs
import trio

from kernel._exports import fixup_module_metadata
from kernel.errors import BusClosed, InvalidAdapterURL
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
from kernel.urls import redact_url, url_options

__all__ = [
    "DEFAULT_BUFFER",
    "DropHook",
    "LocalBus",
    "LocalSubscription",
    "Overflow",
    "open_local_bus",
]

DEFAULT_BUFFER = 1024
"""Messages that may wait for one subscriber before the overflow policy applies."""


class Overflow(enum.Enum):
    """What a full subscription buffer loses (see the module docstring)."""

    drop_oldest = "drop-oldest"
    drop_newest = "drop-newest"


DropHook = Callable[["LocalSubscription", Message], None]
"""Called with the subscription and the message it lost; must not raise
(it runs inside `LocalBus.publish`)."""

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _check_buffer(buffer: object) -> int:
    if isinstance(buffer, bool) or not isinstance(buffer, int):
        raise TypeError(f"buffer must be an int, not {type(buffer).__name__}")
    if buffer < 1:
        raise ValueError(f"buffer must be at least 1, not {buffer}")
    return buffer


def _validate_buffer(_instance: object, _attribute: object, value: object) -> None:
    _check_buffer(value)


@attrs.define(eq=False)
class LocalSubscription:
    """One subscription to a `LocalBus`; create it with `LocalBus.subscribe`
    and use it as ``async with bus.subscribe("user.*") as sub: async for msg in sub``.

    It is registered on entering the ``async with`` (messages published
    from then on are delivered) and unregistered on leaving it.
    """

    _bus: LocalBus = attrs.field(on_setattr=attrs.setters.frozen)
    pattern: str = attrs.field(on_setattr=attrs.setters.frozen)
    buffer: int = attrs.field(on_setattr=attrs.setters.frozen)
    overflow: Overflow = attrs.field(on_setattr=attrs.setters.frozen)
    _segments: tuple[str, ...] = attrs.field(init=False)
    _send: trio.MemorySendChannel[Message] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[Message] = attrs.field(init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _state: Literal["new", "active", "left"] = attrs.field(default="new", init=False)

    def __attrs_post_init__(self) -> None:
        self._segments = tuple(self.pattern.split("."))
        self._send, self._receive = trio.open_memory_channel[Message](self.buffer)

    @property
    def dropped(self) -> int:
        """Messages this subscription lost because its buffer was full."""
        return self._dropped

    @property
    def pending(self) -> int:
        """Messages waiting to be received."""
        return self._receive.statistics().current_buffer_used

    async def __aenter__(self) -> LocalSubscription:
        await trio.lowlevel.checkpoint()
        if self._state != "new":
            raise RuntimeError("a subscription can be entered only once; subscribe again")
        self._bus._register(self)
        self._state = "active"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._bus._unregister(self)
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
        if self.overflow is Overflow.drop_oldest:
            lost = self._receive.receive_nowait()
            self._send.send_nowait(message)
        else:
            lost = message
        self._dropped += 1
        self._bus._count_drop(self, lost)

    def _end(self) -> None:
        """The bus closed: iteration ends once the buffer is drained."""
        self._send.close()

    async def receive(self) -> Message:
        """The next message; `trio.EndOfChannel` once the bus is closed and
        the buffer drained; `trio.ClosedResourceError` after leaving."""
        return await self._receive.receive()

    def __aiter__(self) -> LocalSubscription:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


@attrs.define(eq=False)
class LocalBus:
    """An in-process `kernel.ports.Bus`.

    ``buffer`` and ``overflow`` are the defaults for its subscriptions (each
    `subscribe` may override them); ``on_drop`` is told of every lost message.
    """

    buffer: int = attrs.field(default=DEFAULT_BUFFER, validator=_validate_buffer)
    overflow: Overflow = attrs.field(
        default=Overflow.drop_oldest, validator=attrs.validators.instance_of(Overflow)
    )
    on_drop: DropHook | None = None
    _subscriptions: dict[LocalSubscription, None] = attrs.field(factory=dict, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _wanted: dict[str, bool] = attrs.field(factory=dict, init=False)  # topic -> subscribed?

    @property
    def dropped(self) -> int:
        """Messages lost by all subscriptions, ever (a counter for metrics)."""
        return self._dropped

    @property
    def subscription_count(self) -> int:
        """Subscriptions currently registered."""
        return len(self._subscriptions)

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> LocalBus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def publish(self, topic: str, payload: JSONLike = None) -> None:
        """Deliver ``payload`` to every matching subscription, without waiting.

        Raises `InvalidTopic`, `NotJSONSerializable` (nothing is delivered)
        or `BusClosed`.
        """
        validate_topic(topic)
        copied = copy_json(payload, path="payload")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise BusClosed("the local bus is closed")
        segments = topic.split(".")
        matched = [sub for sub in self._subscriptions if sub._matches(segments)]
        shareable = not isinstance(copied, dict | list)
        text: str | None = None
        for index, sub in enumerate(matched):
            if index == 0 or shareable:
                own: JSON = copied
            else:
                # One encoding, one cheap C-level decode per further subscriber.
                text = _encode(copied) if text is None else text
                own = cast("JSON", json.loads(text))
            sub._deliver(Message(topic, own))

    def subscribe(
        self, pattern: str, *, buffer: int | None = None, overflow: Overflow | None = None
    ) -> LocalSubscription:
        """A subscription to ``pattern``, live inside ``async with``.

        Raises `InvalidTopic` for a bad pattern here, `BusClosed` on entering
        if the bus is closed by then.
        """
        validate_pattern(pattern)
        if overflow is not None and not isinstance(overflow, Overflow):
            raise TypeError(f"overflow must be an Overflow, not {type(overflow).__name__}")
        return LocalSubscription(
            self,
            pattern,
            self.buffer if buffer is None else _check_buffer(buffer),
            self.overflow if overflow is None else overflow,
        )

    async def aclose(self) -> None:
        """End every subscription's iteration (after what it has buffered);
        later `publish` and `subscribe` raise `BusClosed`. Idempotent."""
        self._closed = True
        for sub in self._subscriptions:
            sub._end()
        self._subscriptions.clear()
        self._wanted.clear()
        await trio.lowlevel.checkpoint()

    def has_subscribers(self, topic: str) -> bool:
        """Whether a message on ``topic`` would reach a subscription now
        (`kernel.ports.SubscriberAware`): one dict lookup, the answer kept
        until a subscription comes or goes."""
        wanted = self._wanted.get(topic)
        if wanted is None:
            if len(self._wanted) > 4096:
                self._wanted.clear()
            segments = topic.split(".")
            wanted = self._wanted[topic] = any(
                sub._matches(segments) for sub in self._subscriptions
            )
        return wanted

    def _register(self, sub: LocalSubscription) -> None:
        if self._closed:
            raise BusClosed("the local bus is closed")
        self._subscriptions[sub] = None
        self._wanted.clear()

    def _unregister(self, sub: LocalSubscription) -> None:
        self._subscriptions.pop(sub, None)
        self._wanted.clear()

    def _count_drop(self, sub: LocalSubscription, lost: Message) -> None:
        self._dropped += 1
        if self.on_drop is not None:
            self.on_drop(sub, lost)


def open_local_bus(url: str) -> LocalBus:
    """The factory for ``local://``: a new bus on every call. Options:
    ``?buffer=N`` (default `DEFAULT_BUFFER`) and
    ``?overflow=drop-oldest|drop-newest``."""
    options = url_options(url, allowed=("buffer", "overflow"))
    buffer = DEFAULT_BUFFER
    if "buffer" in options:
        text = options["buffer"]
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise InvalidAdapterURL(
                redact_url(url), f"buffer must be a whole number >= 1, not {text!r}"
            )
        buffer = int(text)
    overflow = Overflow.drop_oldest
    if "overflow" in options:
        try:
            overflow = Overflow(options["overflow"])
        except ValueError:
            choices = ", ".join(member.value for member in Overflow)
            raise InvalidAdapterURL(
                redact_url(url), f"overflow must be one of {choices}, not {options['overflow']!r}"
            ) from None
    return LocalBus(buffer=buffer, overflow=overflow)


if TYPE_CHECKING:

    def _keeps_the_port(bus: LocalBus) -> Bus:
        return bus  # mypy proves LocalBus satisfies the Bus protocol


fixup_module_metadata(__name__, globals())
